"""The packed integer sort against numpy's stable argsort."""
import numpy as np
import pytest
import torch

from mask3d_ros.model.neighbours import sort_with_order, unique_inverse
from mask3d_ros.model.sorting import packed_argsort
from mask3d_ros.model.voxel import KEY_BITS, KEY_LIMIT, first_per_key, grid_keys, sorted_unique


@pytest.mark.parametrize("span", [1, 7, 2 ** 20, 2 ** 40])
def test_packed_argsort_is_a_stable_argsort(span):
    keys = np.random.default_rng(span).integers(-span, span, 5000)
    result = packed_argsort(keys)
    assert result is not None
    np.testing.assert_array_equal(result[1], np.argsort(keys, kind="stable"))
    np.testing.assert_array_equal(result[0], np.sort(keys))


def test_keys_too_wide_to_pack_are_refused():
    keys = np.array([2 ** 62, -(2 ** 62), 0, 5, 5], np.int64)
    assert packed_argsort(keys) is None
    assert [len(packed_argsort(keys[:n])[1]) for n in (0, 1)] == [0, 1]


def test_the_torch_wrappers_match_torch():
    keys = torch.from_numpy(np.random.default_rng(1).integers(0, 50, 3000))
    ordered, order = sort_with_order(keys)
    expected = torch.sort(keys, stable=True)
    assert torch.equal(ordered, expected.values) and torch.equal(order, expected.indices)
    unique, inverse = unique_inverse(keys)
    expected_unique, expected_inverse = torch.unique(keys, return_inverse=True)
    assert torch.equal(unique, expected_unique) and torch.equal(inverse, expected_inverse)


@pytest.mark.parametrize("extent", [0.3, 5.0, 4000.0, 1.0e6])   # 1e6 voxels: too wide to pack, plain argsort
def test_first_per_key_keeps_the_first_point_of_every_voxel(extent):
    xyz = np.random.default_rng(2).uniform(-extent, extent, (20000, 3)).astype(np.float32)
    xyz[1000:2000] = xyz[:1000]                     # repeated points: the first occurrence wins
    keys, _ = grid_keys(xyz, 0.002 if extent < 1000 else 1.0)
    _, expected = np.unique(keys, return_index=True)
    np.testing.assert_array_equal(first_per_key(keys), np.sort(expected))


def _reference_keys(xyz: np.ndarray, voxel_size: float) -> tuple[np.ndarray, np.ndarray]:
    """grid_keys written out per point: floor in float32, offset, 21 bits per axis."""
    keys, inside = [], []
    for point in xyz:
        cell = np.floor(point.astype(np.float32) / np.float32(voxel_size))
        ok = bool(np.all(np.isfinite(cell)) and np.all(cell >= -KEY_LIMIT) and np.all(cell < KEY_LIMIT))
        inside.append(ok)
        if ok:
            x, y, z = (int(c) + KEY_LIMIT for c in cell)
            keys.append((x << 2 * KEY_BITS) | (y << KEY_BITS) | z)
    return np.array(keys, np.int64), np.array(inside, bool)


@pytest.mark.parametrize("outliers", [False, True])
def test_grid_keys_match_the_per_point_definition(outliers):
    rng = np.random.default_rng(3)
    xyz = rng.uniform(-3, 3, (3000, 3)).astype(np.float32)
    if outliers:    # NaN, inf, and voxel coordinates just inside and just outside the key range
        xyz[:4] = [[np.nan, 0, 0], [0, np.inf, 0], [0, 0, -np.inf], [0.0, 0.0, 0.0]]
        edge = KEY_LIMIT * 0.1
        xyz[4:8] = [[edge, 0, 0], [0, -edge, 0], [0, 0, edge - 0.1], [0, 0.1 - edge, 0]]
    keys, inside = grid_keys(xyz, 0.1)
    expected_keys, expected_inside = _reference_keys(xyz, 0.1)
    np.testing.assert_array_equal(inside, expected_inside)
    np.testing.assert_array_equal(keys, expected_keys)
    assert inside.all() != outliers
    assert [len(part) for part in grid_keys(np.empty((0, 3), np.float32), 0.1)] == [0, 0]


@pytest.mark.parametrize("distinct", [1, 50, 10 ** 9])
def test_sorted_unique_is_numpys_unique(distinct):
    keys = np.random.default_rng(distinct).integers(-distinct, distinct, 4000)
    np.testing.assert_array_equal(sorted_unique(keys), np.unique(keys))
    assert [len(sorted_unique(keys[:n])) for n in (0, 1)] == [0, 1]
