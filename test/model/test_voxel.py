"""Voxeliser: bitwise parity with Mask3D's fixture, a plain-Python oracle, invariants, edge cases."""
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mask3d_ros.model import voxel
from mask3d_ros.model.voxel import voxelize


def first_occurrence_oracle(xyz, voxel_size):
    """sparse_quantize's semantics spelled out point by point."""
    coords = np.floor(np.asarray(xyz, np.float32) / np.float32(voxel_size)).astype(np.int32)
    voxel_of, unique_map, inverse_map = {}, [], []
    for index, key in enumerate(map(tuple, coords)):
        if key not in voxel_of:
            voxel_of[key] = len(unique_map)
            unique_map.append(index)
        inverse_map.append(voxel_of[key])
    return coords[unique_map].reshape(-1, 3), np.array(unique_map, np.int64), np.array(inverse_map, np.int64)


def assert_same(result, expected):
    for got, want, dtype in zip(result, expected, (np.int32, np.int64, np.int64)):
        assert got.dtype == dtype
        assert np.array_equal(got, want)


def test_parity_with_official_mask3d(parity_dir):
    fixture = np.load(parity_dir / "input.npz")
    coords, unique_map, inverse_map = voxelize(fixture["xyz"], 0.02)
    assert coords.tobytes() == fixture["voxel_coords"].astype(np.int32).tobytes()
    assert unique_map.tobytes() == fixture["unique_map"].astype(np.int64).tobytes()
    assert inverse_map.tobytes() == fixture["inverse_map"].astype(np.int64).tobytes()
    assert len(coords) == 2580
    assert np.array_equal(fixture["xyz"][unique_map], fixture["raw_coordinates"])


clouds = st.builds(
    lambda n, seed, scale, offset: (np.random.default_rng(seed).normal(size=(n, 3)) * scale
                                    + offset).astype(np.float32),
    st.integers(0, 300), st.integers(0, 2 ** 32 - 1), st.sampled_from([0.01, 0.1, 1.0, 50.0]),
    st.sampled_from([0.0, -3.7, 1234.5]))
voxel_sizes = st.sampled_from([0.02, 0.05, 0.333, 0.2, 1.0])


@settings(max_examples=60, deadline=None)
@given(clouds, voxel_sizes)
def test_matches_point_by_point_oracle(xyz, voxel_size):
    assert_same(voxelize(xyz, voxel_size), first_occurrence_oracle(xyz, voxel_size))


@settings(max_examples=40, deadline=None)
@given(clouds, voxel_sizes)
def test_invariants(xyz, voxel_size):
    coords, unique_map, inverse_map = voxelize(xyz, voxel_size)
    floored = np.floor(xyz / np.float32(voxel_size)).astype(np.int32)
    assert len(np.unique(coords, axis=0)) == len(coords)  # one row per voxel
    assert np.all(np.diff(unique_map) > 0)  # voxels in order of first occurrence
    assert np.array_equal(coords[inverse_map], floored)  # every point lands in its own voxel
    assert np.array_equal(inverse_map[unique_map], np.arange(len(coords)))  # representative is in its voxel
    earliest = np.full(len(coords), len(xyz))
    np.minimum.at(earliest, inverse_map, np.arange(len(xyz)))
    assert np.array_equal(earliest, unique_map)  # ... and is the voxel's first point
    if len(xyz):  # a new voxel id appears only as the next integer
        assert inverse_map[0] == 0 and np.all(np.diff(np.maximum.accumulate(inverse_map)) <= 1)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 200), st.integers(0, 2 ** 32 - 1), st.integers(-5, 5), st.sampled_from([0.25, 0.5, 2.0]))
def test_shift_by_whole_voxels(n, seed, shift, voxel_size):
    """Dyadic coordinates and sizes keep float32 exact, so a shift of k voxels moves coords by k."""
    rng = np.random.default_rng(seed)
    xyz = (rng.integers(-400, 400, (n, 3)) / 16).astype(np.float32)
    offset = rng.integers(-3, 4, 3) * shift
    base = voxelize(xyz, voxel_size)
    moved = voxelize(xyz + (offset * voxel_size).astype(np.float32), voxel_size)
    assert np.array_equal(moved[0], base[0] + offset)
    assert np.array_equal(moved[1], base[1]) and np.array_equal(moved[2], base[2])


@settings(max_examples=30, deadline=None)
@given(clouds, st.integers(0, 2 ** 32 - 1))
def test_permutation_changes_only_representatives(xyz, seed):
    permutation = np.random.default_rng(seed).permutation(len(xyz))
    coords, _, inverse_map = voxelize(xyz, 0.05)
    coords_p, unique_p, inverse_p = voxelize(xyz[permutation], 0.05)
    assert {tuple(c) for c in coords} == {tuple(c) for c in coords_p}
    assert np.array_equal(coords_p[inverse_p], coords[inverse_map][permutation])
    assert_same((coords_p, unique_p, inverse_p), first_occurrence_oracle(xyz[permutation], 0.05))


def test_negative_coordinates_floor_toward_minus_infinity():
    coords, unique_map, inverse_map = voxelize([[-0.001, 0.0, 0.019], [0.001, -0.02, 0.021], [-0.0, 0.0, 0.0]], 0.02)
    assert coords.tolist() == [[-1, 0, 0], [0, -1, 1], [0, 0, 0]]
    assert unique_map.tolist() == [0, 1, 2] and inverse_map.tolist() == [0, 1, 2]


def test_float32_division_like_mask3d():
    """float32(0.02) / 0.02 is exactly 1 in float32 but 0.99999998 in float64: Mask3D floors the former."""
    coords, _, _ = voxelize(np.full((1, 3), 0.02, np.float32), 0.02)
    assert coords.tolist() == [[1, 1, 1]]
    assert np.floor(np.float64(np.float32(0.02)) / 0.02) == 0


def test_far_points_use_exact_fallback(monkeypatch):
    rng = np.random.default_rng(0)
    xyz = rng.uniform(-1e6, 1e6, (2000, 3)).astype(np.float32)
    xyz[1000:] = xyz[:1000] + np.float32(1e-3)  # many shared voxels
    coords = np.floor(xyz / np.float32(0.02)).astype(np.int32)
    assert voxel._box_keys([coords[:, axis] for axis in range(3)]) is None  # the box overflows int64
    assert_same(voxelize(xyz, 0.02), first_occurrence_oracle(xyz, 0.02))
    near_far_origin = (1e6 + rng.normal(size=(500, 3))).astype(np.float32)  # far but compact: keys fit
    assert_same(voxelize(near_far_origin, 0.02), first_occurrence_oracle(near_far_origin, 0.02))


def test_coordinates_beyond_int32_raise():
    with pytest.raises(ValueError, match="beyond int32"):
        voxelize([[0.0, 0.0, 0.0], [1e8, 0.0, 0.0]], 0.02)


@pytest.mark.parametrize(("xyz", "voxel_size", "message"), [
    ([[0.0, np.nan, 0.0]], 0.02, "NaN or infinite"),
    ([[0.0, np.inf, 0.0]], 0.02, "NaN or infinite"),
    ([[0.0, 0.0]], 0.02, r"must be \(N, 3\)"),
    ([[0.0, 0.0, 0.0]], 0.0, "positive and finite"),
    ([[0.0, 0.0, 0.0]], float("nan"), "positive and finite"),
])
def test_bad_input_raises(xyz, voxel_size, message):
    with pytest.raises(ValueError, match=message):
        voxelize(xyz, voxel_size)


def test_empty_input():
    coords, unique_map, inverse_map, features = voxelize(np.empty((0, 3)), 0.02, np.empty((0, 4), np.float32), "mean")
    assert coords.shape == (0, 3) and coords.dtype == np.int32
    assert unique_map.shape == inverse_map.shape == (0,) and unique_map.dtype == inverse_map.dtype == np.int64
    assert features.shape == (0, 4)


def test_features_first_and_mean():
    xyz = np.array([[0.01, 0, 0], [0.5, 0, 0], [0.015, 0, 0], [0.011, 0.001, 0]], np.float32)
    colours = np.array([[10, 20, 30], [0, 0, 0], [20, 40, 60], [30, 0, 0]], np.uint8)
    _, unique_map, inverse_map, first = voxelize(xyz, 0.02, colours)
    assert np.array_equal(first, colours[[0, 1]]) and first.dtype == np.uint8
    *_, mean = voxelize(xyz, 0.02, colours, reduce="mean")
    assert mean.dtype == np.float32 and np.allclose(mean, [[20, 20, 30], [0, 0, 0]])
    *_, mean64 = voxelize(xyz, 0.02, colours[:, 0].astype(np.float64), reduce="mean")
    assert mean64.dtype == np.float64 and mean64.tolist() == [20.0, 0.0]
    with pytest.raises(ValueError, match="reduce must be"):
        voxelize(xyz, 0.02, colours, reduce="max")
    with pytest.raises(ValueError, match="features have 3 rows for 4 points"):
        voxelize(xyz, 0.02, colours[:3])


def test_two_million_points_stay_in_bounded_memory():
    xyz = np.random.default_rng(0).normal(0, 3, (2_000_000, 3)).astype(np.float32)
    tracemalloc.start()
    try:
        coords, unique_map, inverse_map = voxelize(xyz, 0.02)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(inverse_map) == 2_000_000 and len(coords) == len(unique_map)
    assert peak < 100 * len(xyz)  # ~77 B per point measured; results alone take up to 40 B per point
