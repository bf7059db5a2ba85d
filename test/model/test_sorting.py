"""The packed integer sort against numpy's stable argsort."""
import numpy as np
import pytest
import torch

from mask3d_ros.model.neighbours import sort_with_order, unique_inverse
from mask3d_ros.model.sorting import packed_argsort, stable_argsort
from mask3d_ros.model.voxel import first_per_key, grid_keys


@pytest.mark.parametrize("span", [1, 7, 2 ** 20, 2 ** 40])
def test_packed_argsort_is_a_stable_argsort(span):
    keys = np.random.default_rng(span).integers(-span, span, 5000)
    result = packed_argsort(keys)
    assert result is not None
    np.testing.assert_array_equal(result[1], np.argsort(keys, kind="stable"))
    np.testing.assert_array_equal(result[0], np.sort(keys))


def test_keys_too_wide_to_pack_fall_back_to_numpy():
    keys = np.array([2 ** 62, -(2 ** 62), 0, 5, 5], np.int64)
    assert packed_argsort(keys) is None
    np.testing.assert_array_equal(stable_argsort(keys), np.argsort(keys, kind="stable"))
    assert [len(packed_argsort(keys[:n])[1]) for n in (0, 1)] == [0, 1]


def test_the_torch_wrappers_match_torch():
    keys = torch.from_numpy(np.random.default_rng(1).integers(0, 50, 3000))
    ordered, order = sort_with_order(keys)
    expected = torch.sort(keys, stable=True)
    assert torch.equal(ordered, expected.values) and torch.equal(order, expected.indices)
    unique, inverse = unique_inverse(keys)
    expected_unique, expected_inverse = torch.unique(keys, return_inverse=True)
    assert torch.equal(unique, expected_unique) and torch.equal(inverse, expected_inverse)


@pytest.mark.parametrize("extent", [0.3, 5.0, 4000.0])
def test_first_per_key_keeps_the_first_point_of_every_voxel(extent):
    xyz = np.random.default_rng(2).uniform(-extent, extent, (20000, 3)).astype(np.float32)
    xyz[1000:2000] = xyz[:1000]                     # repeated points: the first occurrence wins
    keys, _ = grid_keys(xyz, 0.002 if extent < 1000 else 1.0)
    _, expected = np.unique(keys, return_index=True)
    np.testing.assert_array_equal(first_per_key(keys), np.sort(expected))
