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

from mask3d_ros.model.sorting import packed_argsort

_INT32_MIN, _INT32_MAX = -(2 ** 31), 2 ** 31 - 1
KEY_BITS = 21
KEY_LIMIT = 1 << (KEY_BITS - 1)
"""Absolute keys hold voxel coordinates in [-KEY_LIMIT, KEY_LIMIT) on each axis."""
_KEY_OFFSET = KEY_LIMIT * ((1 << 2 * KEY_BITS) + (1 << KEY_BITS) + 1)  # KEY_LIMIT added to every axis


def _scaled_floor(points: np.ndarray, voxel_size: float) -> np.ndarray:
    """float32 ``floor(points / voxel_size)`` [N, 3], divided in float32 exactly as Mask3D does."""
    scaled = np.asarray(points, dtype=np.float32) / np.float32(voxel_size)
    return np.floor(scaled, out=scaled)  # in place: the quotient is a fresh array


def _voxel_coords(points: np.ndarray, voxel_size: float) -> tuple[np.ndarray, int, int]:
    """int32 voxel coordinates [N, 3] and their overall (min, max); ValueError on NaN or beyond int32.

    The bounds are over all three axes at once: one contiguous reduction (per-axis ones over the
    strided columns cost ten times more).
    """
    scaled = _scaled_floor(points, voxel_size)
    low, high = scaled.min(), scaled.max()  # NaN and inf propagate here
    if not (np.isfinite(low) and np.isfinite(high)):
        raise ValueError("xyz holds NaN or infinite values; drop them before voxelising")
    if low < _INT32_MIN or high > _INT32_MAX:
        raise ValueError(
            f"voxel coordinates span [{low:.0f}, {high:.0f}], beyond int32:"
            f" xyz too far from the origin for voxel_size {voxel_size}")
    return scaled.astype(np.int32), int(low), int(high)


def _box_keys(columns) -> np.ndarray | None:
    """int64 keys of integer triples (three integer arrays, x y z) in lexicographic order,
    renumbered within their bounding box: as few bits as the box needs, so that a sort can carry
    the index beside them (:func:`~mask3d_ros.model.sorting.packed_argsort`); None when the box
    holds 2^62 cells or more."""
    lows = [int(column.min()) for column in columns]     # per-column reductions: axis=0 is ~15x slower
    spans = [int(column.max()) - low + 1 for column, low in zip(columns, lows)]
    if spans[0] * spans[1] * spans[2] >= 2 ** 62:
        return None
    keys = columns[0] - np.int64(lows[0])
    for column, low, span in zip(columns[1:], lows[1:], spans[1:]):
        keys *= span
        keys += column - np.int64(low)
    return keys


def _sorted_groups(coords: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Points ordered by voxel, earliest first within a voxel, and where each voxel's run starts."""
    keys = _box_keys([coords[:, axis] for axis in range(3)])
    result = None if keys is None else packed_argsort(keys)
    if result is not None:
        ordered, order = result
        changes = ordered[1:] != ordered[:-1]
    else:
        order = np.lexsort((coords[:, 2], coords[:, 1], coords[:, 0]))  # lexsort is stable
        sorted_coords = coords[order]
        changes = (sorted_coords[1:] != sorted_coords[:-1]).any(axis=1)
    return order, np.concatenate(([True], changes))


def _cube_keys(coords: np.ndarray, low: int, high: int) -> np.ndarray | None:
    """Per point uint32 ``(x - low) * E^2 + (y - low) * E + (z - low)`` with ``E = high - low + 1``,
    or None when ``E^3`` exceeds 2^32 (keys would collide).

    Computed without subtracting ``low``: uint32 arithmetic wraps modulo 2^32, a ring, so
    ``x * E^2 + y * E + z`` differs from the key above by one constant modulo 2^32, and is as
    injective on the cube. Callers subtract the constant where they need the key's value.
    """
    extent = high - low + 1
    if extent ** 3 > 2 ** 32:
        return None
    unsigned = coords.view(np.uint32)
    keys = unsigned[:, 0] * np.uint32(extent * extent % 2 ** 32)
    keys += unsigned[:, 1] * np.uint32(extent)
    keys += unsigned[:, 2]
    keys -= np.uint32((low * (extent * extent + extent + 1)) % 2 ** 32)
    return keys


def _first_occurrence_groups(coords: np.ndarray, low: int, high: int) -> tuple[np.ndarray, np.ndarray]:
    """``(unique_map, inverse_map)`` of Mask3D's voxelisation for int32 ``coords`` [N, 3] in [low, high].

    Scans are locally coherent: consecutive points often share a voxel (a Kinect frame's 188k
    points form 20k such runs at 2 cm). Only the runs' heads are sorted (by voxel, then run), so
    the earliest run of each voxel holds its first point; voxels are then numbered by first
    occurrence with a mask over the runs instead of a second sort, and the runs expanded back.
    Without such coherence (runs over half the points) every point is its own run.
    """
    count = len(coords)
    keys = _cube_keys(coords, low, high)
    changes = keys[1:] != keys[:-1] if keys is not None else (coords[1:] != coords[:-1]).any(axis=1)
    heads = np.flatnonzero(np.concatenate(([True], changes)))
    if 2 * len(heads) > count:
        heads = None
    runs = count if heads is None else len(heads)
    result = None if keys is None else packed_argsort((keys if heads is None else keys[heads]).astype(np.int64))
    if result is not None:  # uint32 cube keys, exact
        ordered, order = result
        starts = np.concatenate(([True], ordered[1:] != ordered[:-1]))
    else:
        order, starts = _sorted_groups(coords if heads is None else coords[heads])
    group = np.empty(runs, np.int64)
    group[order] = np.cumsum(starts) - 1  # each run's voxel, voxels numbered in key order
    first_run = np.zeros(runs, bool)
    first_run[order[starts]] = True  # stable order: the earliest run of each voxel
    first_runs = np.flatnonzero(first_run)  # increasing: voxels in order of first occurrence
    rank = np.empty(len(first_runs), np.int64)
    rank[group[first_runs]] = np.arange(len(first_runs))
    if heads is None:
        return first_runs, rank[group]
    return heads[first_runs], np.repeat(rank[group], np.diff(heads, append=count))


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

    coords, low, high = _voxel_coords(points, voxel_size)
    unique_map, inverse_map = _first_occurrence_groups(coords, low, high)
    triples = coords.view(np.dtype((np.void, 12))).reshape(-1)  # one 12-byte item per point: a faster gather
    result = (triples[unique_map].view(np.int32).reshape(-1, 3), unique_map.astype(np.int64, copy=False), inverse_map)
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
        low, high = (scaled.min(), scaled.max()) if len(scaled) else (0.0, 0.0)  # NaN propagates: not inside
        if -KEY_LIMIT <= low and high < KEY_LIMIT:    # the usual case: two contiguous reductions, no row test
            inside = np.ones(len(scaled), bool)
        else:
            inside = ((scaled >= -KEY_LIMIT) & (scaled < KEY_LIMIT)).all(axis=1)
            scaled = scaled[inside]
    axes = scaled.T.astype(np.int64)  # [3, K]: contiguous per axis
    keys = axes[0] * (1 << 2 * KEY_BITS)  # signed coordinates: the offsets are added once, below
    keys += axes[1] * (1 << KEY_BITS)
    keys += axes[2]
    keys += _KEY_OFFSET
    return keys, inside


def sorted_unique(keys: np.ndarray) -> np.ndarray:
    """``np.unique(keys)`` of a 1-D array by one sort (NumPy's ``unique`` hashes first, several
    times slower on many distinct int64 keys)."""
    ordered = np.sort(keys)
    if len(ordered) < 2:
        return ordered
    return ordered[np.concatenate(([True], ordered[1:] != ordered[:-1]))]


def first_per_key(keys: np.ndarray) -> np.ndarray:
    """Sorted indices of the first occurrence of every distinct :func:`grid_keys` key."""
    if len(keys) < 2:
        return np.arange(len(keys), dtype=np.int64)
    mask = (1 << KEY_BITS) - 1
    box = _box_keys([keys >> (2 * KEY_BITS), (keys >> KEY_BITS) & mask, keys & mask])
    result = None if box is None else packed_argsort(box)
    if result is None:
        order = np.argsort(keys, kind="stable")
        ordered = keys[order]
    else:
        ordered, order = result
    heads = np.empty(len(keys), bool)  # the first of each key in the stable order: its first occurrence
    heads[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=heads[1:])
    first = np.zeros(len(keys), bool)  # marked, not sorted: increasing indices in one pass
    first[order[heads]] = True
    return np.flatnonzero(first)
