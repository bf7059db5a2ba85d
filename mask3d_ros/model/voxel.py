"""The voxel grid: Mask3D's voxelisation, bit for bit, without MinkowskiEngine, and the same grid's
absolute keys for maps that outlive one call (the node's rolling map and instance tracker).

Mask3D quantises with ``coords = floor(xyz / voxel_size)`` in float32 and
``ME.utils.sparse_quantize(..., return_index=True, return_inverse=True)`` on CPU, which keeps
the first point (input order) of each voxel and orders voxels by first occurrence. Here the three
integer coordinates and the point index are packed into one int64 and sorted, which is 15-25
times faster than ``np.unique(axis=0)``; coordinates whose packed range would overflow int64 fall
back to a (slower, equally exact) lexicographic sort.

Every user quantises through :func:`_scaled_floor`, so a point falls in the same voxel everywhere.
"""
from __future__ import annotations

import numpy as np

_INT32_MIN, _INT32_MAX = -(2 ** 31), 2 ** 31 - 1
_INT64_MAX = 2 ** 63 - 1
KEY_BITS = 21
KEY_LIMIT = 1 << (KEY_BITS - 1)
"""Absolute keys hold voxel coordinates in [-KEY_LIMIT, KEY_LIMIT) on each axis."""


def _scaled_floor(points: np.ndarray, voxel_size: float) -> np.ndarray:
    """float32 ``floor(points / voxel_size)`` [N, 3], divided in float32 exactly as Mask3D does."""
    return np.floor(np.asarray(points, dtype=np.float32) / np.float32(voxel_size))


def _voxel_coords(points: np.ndarray, voxel_size: float) -> np.ndarray:
    """int32 voxel coordinates [N, 3]; ValueError on NaN or coordinates beyond int32."""
    scaled = _scaled_floor(points, voxel_size)
    low, high = scaled.min(), scaled.max()  # NaN and inf propagate here
    if not (np.isfinite(low) and np.isfinite(high)):
        raise ValueError("xyz holds NaN or infinite values; drop them before voxelising")
    if low < _INT32_MIN or high > _INT32_MAX:
        raise ValueError(
            f"voxel coordinates span [{low:.0f}, {high:.0f}], beyond int32:"
            f" xyz too far from the origin for voxel_size {voxel_size}")
    return scaled.astype(np.int32)


def _packed_keys(coords: np.ndarray, index_bits: int) -> np.ndarray | None:
    """Per point ``voxel key << index_bits | point index`` as int64, or None if it would overflow.

    Keys are equal iff the voxels are, and the point index in the low bits makes plain sorting
    stable: within a voxel the earliest point comes first.
    """
    columns = [coords[:, axis] for axis in range(3)]  # per-column reductions: axis=0 is ~15x slower
    low = [int(column.min()) for column in columns]
    extent = [int(column.max()) - start + 1 for column, start in zip(columns, low)]
    if (extent[0] * extent[1] * extent[2]) << index_bits > _INT64_MAX:
        return None
    keys = columns[0] - np.int64(low[0])
    for column, start, size in zip(columns[1:], low[1:], extent[1:]):
        keys *= size
        keys += column - np.int64(start)
    keys <<= index_bits
    keys |= np.arange(len(keys))
    return keys


def _sorted_groups(coords: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Points ordered by voxel, earliest first within a voxel, and where each voxel's run starts."""
    index_bits = max(1, (len(coords) - 1).bit_length())
    keys = _packed_keys(coords, index_bits)
    if keys is not None:
        keys.sort()  # unique values: any sort is stable; np.sort is ~3x faster than argsort
        order = keys & ((1 << index_bits) - 1)
        keys >>= index_bits
        changes = keys[1:] != keys[:-1]
    else:
        order = np.lexsort((coords[:, 2], coords[:, 1], coords[:, 0]))  # lexsort is stable
        sorted_coords = coords[order]
        changes = (sorted_coords[1:] != sorted_coords[:-1]).any(axis=1)
    return order, np.concatenate(([True], changes))


def voxelize(xyz, voxel_size: float, features=None, reduce: str = "first"):
    """Quantise points to voxels as Mask3D does.

    Returns ``(coords, unique_map, inverse_map)``: int32 [M, 3] voxel coordinates, int64 [M]
    index of each voxel's representative (its first point; increasing, so voxels are in order of
    first occurrence) and int64 [N] voxel of each point. With ``features`` ([N, ...]) a fourth
    item holds the voxel features: the representative's (``reduce="first"``, what Mask3D uses)
    or the mean over the voxel's points (``reduce="mean"``).
    """
    points = np.asarray(xyz, dtype=np.float32)
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"xyz must be (N, 3), got shape {points.shape}")
    if not (np.isfinite(voxel_size) and voxel_size > 0):
        raise ValueError(f"voxel_size must be positive and finite, got {voxel_size}")
    if reduce not in ("first", "mean"):
        raise ValueError(f"reduce must be 'first' or 'mean', got {reduce!r}")
    if features is not None:
        features = np.asarray(features)
        if len(features) != len(points):
            raise ValueError(f"features have {len(features)} rows for {len(points)} points")
    if len(points) == 0:
        empty = (np.empty((0, 3), np.int32), np.empty(0, np.int64), np.empty(0, np.int64))
        return empty if features is None else empty + (_reduced(features, empty[2], 0, reduce, empty[1]),)

    coords = _voxel_coords(points, voxel_size)
    order, starts = _sorted_groups(coords)
    first_points = order[starts]  # stable sort: the earliest point of each voxel, voxels in key order
    by_first_occurrence = np.argsort(first_points)
    rank = np.empty_like(by_first_occurrence)
    rank[by_first_occurrence] = np.arange(len(by_first_occurrence))
    unique_map = first_points[by_first_occurrence]
    inverse_map = np.empty(len(points), np.int64)
    inverse_map[order] = rank[np.cumsum(starts) - 1]
    result = (coords[unique_map], unique_map, inverse_map)
    if features is None:
        return result
    return result + (_reduced(features, inverse_map, len(unique_map), reduce, unique_map),)


def _reduced(features: np.ndarray, inverse_map: np.ndarray, voxels: int, reduce: str,
             unique_map: np.ndarray) -> np.ndarray:
    """Per-voxel features: the representative's, or the mean (float32 at least) of the voxel."""
    if reduce == "first":
        return features[unique_map]
    return voxel_mean(features, inverse_map, voxels)


def voxel_mean(features: np.ndarray, inverse_map: np.ndarray, voxels: int) -> np.ndarray:
    """The mean (float32 at least) of ``features`` [N, ...] over each voxel's points."""
    columns = features.reshape(len(features), int(np.prod(features.shape[1:], dtype=np.int64)))
    counts = np.bincount(inverse_map, minlength=voxels)
    sums = np.stack([np.bincount(inverse_map, weights=columns[:, c], minlength=voxels)
                     for c in range(columns.shape[1])], axis=-1)
    means = sums / np.maximum(counts, 1)[:, None]
    return means.astype(np.result_type(features.dtype, np.float32)).reshape((voxels,) + features.shape[1:])


def grid_keys(xyz, voxel_size: float) -> tuple[np.ndarray, np.ndarray]:
    """Absolute int64 voxel keys of the points the key range can hold, and which points those are.

    Returns ``(keys [K], inside [N] bool)``: a key is the voxel's three coordinates, offset by
    ``KEY_LIMIT`` and packed in ``KEY_BITS`` bits each, so keys from different calls compare
    (unlike :func:`voxelize`'s). Points with a non-finite coordinate or a voxel coordinate outside
    ``[-KEY_LIMIT, KEY_LIMIT)`` are left out.
    """
    with np.errstate(over="ignore", invalid="ignore"):  # huge or non-finite points are left out below
        scaled = _scaled_floor(np.reshape(xyz, (-1, 3)), voxel_size)
        inside = ((scaled >= -KEY_LIMIT) & (scaled < KEY_LIMIT)).all(axis=1)  # False for NaN
    coords = (scaled if inside.all() else scaled[inside]).astype(np.int64) + KEY_LIMIT
    keys = coords[:, 0] << (2 * KEY_BITS)
    keys |= coords[:, 1] << KEY_BITS
    keys |= coords[:, 2]
    return keys, inside


def first_per_key(keys: np.ndarray) -> np.ndarray:
    """Sorted indices of the first occurrence of every distinct key."""
    _, first = np.unique(keys, return_index=True)
    first.sort()
    return first
