"""Neighbour searches over voxels in torch (CPU or GPU), built once per scene and exact.

A hashed grid finds every pair of points within a radius: points are bucketed by their cell,
cells are found by sorting packed integer keys, and only pairs in the same or adjacent cells are
measured. A pair is within ``radius`` exactly when scipy's ``cKDTree.query_pairs`` says so (the
squared distance in float64, summed axis by axis, ``<= radius ** 2``): float32 coordinates are
measured in float32 and only pairs within float32 rounding of the radius are measured again in
float64.

:func:`connected_components` labels the components of a graph.

Sorting, sorted lookups and index lists dominate. On the CPU they go through numpy, zero-copy
(:mod:`~mask3d_ros.model.sorting`'s packed sort is a stable argsort several times faster than
``torch.sort``; numpy's ``searchsorted`` and ``flatnonzero`` are several times faster than
torch's), and graph components through scipy; on a GPU the same functions use torch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.sparse import coo_matrix, csgraph
from torch import Tensor

from mask3d_ros.model.sorting import packed_argsort

_FLOAT32_BAND = 1e-6
"""Relative width of the band around ``radius ** 2`` where float32 distances are rechecked in float64
(the float32 squared distance of float32 points is within ``5 * 2 ** -24`` of the exact one)."""

FORWARD_OFFSETS = tuple((dx, dy, dz) for dx in (-1, 0, 1) for dy in (-1, 0, 1) for dz in (-1, 0, 1)
                        if (dx, dy, dz) > (0, 0, 0))
"""The 13 cell offsets that meet every unordered pair of adjacent (26-connected) cells once."""


DENSE_TABLE_MIN = 2 ** 23
DENSE_TABLE_PER_KEY = 64
"""Lookups among cell keys go through a table indexed by key when it has at most
``max(DENSE_TABLE_MIN, DENSE_TABLE_PER_KEY * keys)`` entries (up to 32 MB for small scenes), else
through a binary search over the sorted keys."""

HOST_LIBRARIES = True
"""Let numpy and scipy do the work on CPU tensors; False runs the torch code a GPU runs (tests)."""


def on_host(tensor: Tensor) -> bool:
    """Whether ``tensor`` is on the CPU and numpy and scipy may work on it."""
    return HOST_LIBRARIES and tensor.device.type == "cpu"


def sort_with_order(keys: Tensor) -> tuple[Tensor, Tensor]:
    """``torch.sort(keys, stable=True)`` of int64 ``[N]``: the sorted keys and the stable order."""
    result = packed_argsort(keys.numpy()) if on_host(keys) else None
    if result is None:
        return torch.sort(keys, stable=True)
    return torch.from_numpy(result[0]), torch.from_numpy(result[1])


def flat_nonzero(mask: Tensor) -> Tensor:
    """int64 indices of the True entries of a bool ``[N]`` (numpy's is several times faster on the CPU)."""
    if not on_host(mask):
        return torch.nonzero(mask)[:, 0]
    return torch.from_numpy(np.flatnonzero(mask.numpy()))


def unique_inverse(keys: Tensor) -> tuple[Tensor, Tensor]:
    """``torch.unique(keys, return_inverse=True)`` of int64 ``[N]``."""
    ordered, order = sort_with_order(keys)
    unique, counts = torch.unique_consecutive(ordered, return_counts=True)
    inverse = torch.empty_like(order)
    inverse[order] = torch.repeat_interleave(torch.arange(len(unique), device=keys.device), counts)
    return unique, inverse


def cell_coords(xyz: Tensor, size: float) -> Tensor:
    """int64 ``floor(xyz / size)`` ``[N, 3]``, divided in the coordinates' own dtype."""
    return torch.floor(xyz / torch.tensor(size, dtype=xyz.dtype, device=xyz.device)).long()


def pack_cells(cells: Tensor) -> tuple[Tensor, Tensor, int]:
    """Integer cells ``[N, 3]`` to int64 keys ``[N]`` that order cells lexicographically and keep a
    one-cell margin on every side, so that ``key + offset_key(offset, strides)`` is the key of the
    neighbouring cell; also returns the three strides and the key span (all keys and their
    neighbours' lie in ``[0, span)``). ValueError if the keys would overflow."""
    if len(cells) == 0:
        return cells.new_zeros(0), cells.new_ones(3), 1
    low = cells.min(0).values - 1
    extent = cells.max(0).values - low + 2
    span = math.prod(extent.tolist())
    if span >= 2 ** 40:
        raise ValueError("the points span too many cells for 64-bit cell keys")
    strides = torch.stack([extent[1] * extent[2], extent[2], torch.ones_like(extent[2])])
    return ((cells - low) * strides).sum(1), strides, span


def offset_key(offset, strides: Tensor) -> int:
    """The key difference between a cell and its neighbour at ``offset`` (three ints)."""
    return int(sum(int(o) * int(s) for o, s in zip(offset, strides.tolist())))


def cartesian_pairs(start_a: Tensor, count_a: Tensor, start_b: Tensor,
                    count_b: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """All ``(start_a[k] + u, start_b[k] + v)`` for ``u < count_a[k]``, ``v < count_b[k]``, every ``k``:
    the pairs between runs of a sorted array, and the ``k`` of each, ``[sum(count_a * count_b)]`` each,
    ordered by ``k``, then ``u``, then ``v``, in the dtype of the inputs (int32 halves the memory
    traffic). Expanded in two steps (the ``(k, u)``, then their ``v``) with no integer division."""
    owner_a = torch.repeat_interleave(count_a)
    step = torch.arange(len(owner_a), device=count_a.device, dtype=count_a.dtype)
    first_a = step + (start_a - (torch.cumsum(count_a, 0, dtype=count_a.dtype) - count_a)).index_select(0, owner_a)
    width = count_b.index_select(0, owner_a)
    item = torch.repeat_interleave(width)
    step = torch.arange(len(item), device=count_a.device, dtype=count_a.dtype)
    shift = start_b.index_select(0, owner_a) - (torch.cumsum(width, 0, dtype=width.dtype) - width)
    second = step + shift.index_select(0, item)
    return first_a.index_select(0, item), second, owner_a.index_select(0, item)


def within(xyz: Tensor, i: Tensor, j: Tensor, radius: float) -> Tensor:
    """bool ``[E]``: is ``|xyz[i] - xyz[j]| <= radius``, decided as scipy's KD-tree decides it."""
    columns = xyz.T.contiguous()        # [3, N]: contiguous gathers
    squared = squared_distances(columns, i, j)
    limit = float(radius) ** 2
    inside = squared <= limit
    if xyz.dtype != torch.float64:
        band = flat_nonzero((squared - limit).abs() <= _FLOAT32_BAND * limit)
        if len(band):
            inside[band] = squared_distances(columns.double(), i.index_select(0, band),
                                             j.index_select(0, band)) <= limit
    return inside


def squared_distances(columns: Tensor, i: Tensor, j: Tensor) -> Tensor:
    """``((dx^2 + dy^2) + dz^2)`` ``[E]`` between points ``i`` and ``j`` of ``columns [C, N]`` (one row
    per coordinate, so each gather is contiguous), summed in scipy's order."""
    total = None
    for column in columns:
        diff = column.index_select(0, i) - column.index_select(0, j)
        total = diff * diff if total is None else total + diff * diff
    return total


def _cell_size(xyz: Tensor, radius: float) -> float:
    """A cell side a little above ``radius``: points within ``radius`` stay in adjacent cells despite
    the rounding of ``xyz / size`` (relative ``2 ** -24`` in float32)."""
    return float(radius) * (1 + 1e-6) + float(xyz.abs().max()) * 2 ** -20


@dataclass(frozen=True)
class VoxelPairs:
    """Every unordered pair of voxels whose integer coordinates differ by at most ``reach`` on each
    axis, ``(first[e], second[e])``: a stride-1 kernel map the backbone already built (its 5x5x5
    input convolution: reach 2). ``coords [N, 3]`` are the voxels' coordinates and ``voxel_size``
    the grid they were quantised on."""

    first: Tensor
    second: Tensor
    coords: Tensor
    voxel_size: float
    reach: int


def radius_pairs(xyz: Tensor, radius: float, voxels: VoxelPairs | None = None) -> tuple[Tensor, Tensor]:
    """Every unordered pair of points at most ``radius`` apart, ``(i, j)`` with ``i < j`` ``[E]`` each
    (the pairs of ``cKDTree(xyz).query_pairs(radius)``, in another order). ``xyz [N, 3]``.

    With ``voxels`` whose coordinates are these points' (each point the representative of its
    voxel) and a radius within their reach, the voxel pairs are the candidates and no grid is built
    (:func:`_voxel_radius_pairs`)."""
    if voxels is not None:
        pairs = _voxel_radius_pairs(xyz, radius, voxels)
        if pairs is not None:
            return pairs
    device = xyz.device
    if len(xyz) < 2:
        empty = torch.zeros(0, dtype=torch.int64, device=device)
        return empty, empty
    keys, strides, _ = pack_cells(cell_coords(xyz, _cell_size(xyz, radius)))
    keys, order = sort_with_order(keys)
    sorted_xyz = xyz.index_select(0, order)
    cells, counts = torch.unique_consecutive(keys, return_counts=True)
    counts = counts.to(torch.int32 if len(xyz) < 2 ** 31 else torch.int64)   # indices for the pair expansion
    starts = torch.cumsum(counts, 0, dtype=counts.dtype) - counts
    every = torch.arange(len(cells), device=device)
    near_a, near_b = adjacent(cells, strides)
    cell_a, cell_b = torch.cat([every, near_a]), torch.cat([every, near_b])    # each cell with itself first
    a, b, owner = cartesian_pairs(starts.index_select(0, cell_a), counts.index_select(0, cell_a),
                                  starts.index_select(0, cell_b), counts.index_select(0, cell_b))
    keep = flat_nonzero(((a < b) | (owner >= len(cells))) & within(sorted_xyz, a, b, radius))
    first = order.index_select(0, a.index_select(0, keep))
    second = order.index_select(0, b.index_select(0, keep))
    return torch.minimum(first, second), torch.maximum(first, second)


def _voxel_radius_pairs(xyz: Tensor, radius: float, voxels: VoxelPairs) -> tuple[Tensor, Tensor] | None:
    """:func:`radius_pairs` among ``voxels``' pairs, or None where they cannot hold every pair.

    A point's voxel is ``floor(s)`` with ``s = xyz / voxel_size`` divided in float32, checked here.
    Two points within ``radius`` have ``|s_p - s_q| <= limit`` on every axis, ``limit`` being
    ``radius / voxel_size`` plus the rounding of both quotients; with ``limit < reach + 1`` their
    voxels are more than ``reach`` apart on an axis only if ``s_p - s_q`` there exceeds ``reach``,
    which puts both points within ``limit - reach`` of a voxel face. Such pairs (a handful of
    points in a scene) are found by the grid search among the points that close to a face.
    """
    if xyz.dtype != torch.float32 or voxels.coords.shape != xyz.shape or len(xyz) < 2:
        return None
    scaled = xyz / torch.tensor(voxels.voxel_size, dtype=torch.float32, device=xyz.device)
    cells = torch.floor(scaled)
    if not torch.equal(cells.long(), voxels.coords.long()):
        return None     # not these points' voxels
    # float64 bounds with slack: each quotient is within 2^-24 of exact, the radius test within 1e-15
    limit = (float(radius) * (1 + 1e-9) + 2 ** -23 * float(xyz.abs().max())) / float(np.float32(voxels.voxel_size))
    gap = limit - voxels.reach + 1e-9
    if gap >= 0.5:
        return None     # the radius reaches past the voxel pairs
    inside = flat_nonzero(within(xyz, voxels.first, voxels.second, radius))
    first, second = voxels.first.index_select(0, inside), voxels.second.index_select(0, inside)
    fraction = scaled - cells
    near_face = flat_nonzero(((fraction < gap) | (fraction > 1 - gap)).any(1))
    if len(near_face) > 1:
        a, b = radius_pairs(xyz.index_select(0, near_face), radius)
        a, b = near_face.index_select(0, a), near_face.index_select(0, b)
        apart = (voxels.coords.index_select(0, a) - voxels.coords.index_select(0, b)).abs().amax(1) > voxels.reach
        first, second = torch.cat([first, a[apart]]), torch.cat([second, b[apart]])
    return torch.minimum(first, second), torch.maximum(first, second)


def connected_components(num_nodes: int, src: Tensor, dst: Tensor) -> Tensor:
    """int64 ``[num_nodes]``: a label in ``[0, num_nodes)`` per node, equal for two nodes exactly when
    they are connected in the undirected graph with edges ``src[e] - dst[e]``. On the CPU scipy's
    graph traversal numbers the components; on a GPU, hooking and pointer jumping label each by its
    smallest node index."""
    if on_host(src):
        graph = coo_matrix((np.ones(len(src), dtype=np.int8), (src.numpy(), dst.numpy())), shape=(num_nodes,) * 2)
        return torch.from_numpy(csgraph.connected_components(graph, directed=False)[1].astype(np.int64))
    parent = torch.arange(num_nodes, device=src.device)
    while True:
        root_src, root_dst = parent[src], parent[dst]
        hooked = parent.clone()
        hooked.scatter_reduce_(0, root_src, root_dst, "amin")
        hooked.scatter_reduce_(0, root_dst, root_src, "amin")
        while True:         # every node to its root; parents never exceed their node, so this ends
            jumped = hooked[hooked]
            if torch.equal(jumped, hooked):
                break
            hooked = jumped
        if torch.equal(hooked, parent):
            return parent
        parent = hooked


def lookup(sorted_keys: Tensor, targets: Tensor) -> Tensor:
    """Per target its index in the sorted unique ``sorted_keys``, or -1 where it is absent."""
    if len(sorted_keys) == 0:
        return torch.full_like(targets, -1)
    if on_host(sorted_keys):
        keys, wanted = sorted_keys.numpy(), targets.numpy()
        found = np.searchsorted(keys, wanted)
        np.minimum(found, len(keys) - 1, out=found)
        return torch.from_numpy(np.where(keys[found] == wanted, found, -1))
    found = torch.searchsorted(sorted_keys, targets).clamp_max(len(sorted_keys) - 1)
    return torch.where(sorted_keys.index_select(0, found) == targets, found, -1)


_INDEX_TYPES = ((torch.int16, np.int16), (torch.int32, np.int32), (torch.int64, np.int64))


def dense_lookup(keys: Tensor, targets: Tensor, bound: int) -> Tensor:
    """:func:`lookup` through a table of ``bound`` entries, in the narrowest integer type that holds
    ``len(keys)`` (filling the table costs most): keys and targets lie in ``[0, bound)``."""
    dtype, np_dtype = next(types for types in _INDEX_TYPES if len(keys) < torch.iinfo(types[0]).max)
    if on_host(keys):
        table = np.full(bound, -1, dtype=np_dtype)
        table[keys.numpy()] = np.arange(len(keys), dtype=table.dtype)
        return torch.from_numpy(np.take(table, targets.numpy()))
    table = torch.full((bound,), -1, dtype=dtype, device=keys.device)
    table[keys] = torch.arange(len(keys), dtype=dtype, device=keys.device)
    return table.index_select(0, targets)


def adjacent(groups: Tensor, strides: Tensor, offsets=FORWARD_OFFSETS) -> tuple[Tensor, Tensor]:
    """Pairs ``(a, b)`` of indices into the sorted unique cell keys ``groups`` (possibly
    ``query * span + cell key``) with cell ``b`` at one of ``offsets`` from cell ``a``; with the
    default offsets each unordered pair of adjacent cells once. Offset-major order.

    Keys and their neighbours' lie in ``[0, largest key + largest shift]`` (:func:`pack_cells`' margin):
    where a table that long is small (small scenes), one gather a target replaces the search."""
    shifts = torch.tensor([offset_key(offset, strides) for offset in offsets], device=groups.device)
    targets = (shifts[:, None] + groups[None, :]).reshape(-1)   # rows sorted: fast searches
    bound = int(groups[-1]) + max(int(shifts.max()), 0) + 1 if len(groups) else 0
    if bound <= max(DENSE_TABLE_MIN, DENSE_TABLE_PER_KEY * len(groups)):
        other = dense_lookup(groups, targets, bound)
    else:
        other = lookup(groups, targets)
    hit = flat_nonzero(other >= 0)
    return hit % len(groups), other.index_select(0, hit).long()


# --- components of every mask at once ------------------------------------------------------------

_FINE_CELL = 0.99 / (2 * math.sqrt(3))
"""Fine cell side over eps: any two points in the same or 26-adjacent cells are closer than eps,
with a margin of 1 % of eps for rounding."""
_COARSE = 4
"""Fine cells per coarse cell side: four fine cells are wider than eps, so points within eps lie in
the same or adjacent coarse cells."""


def _runs(groups: Tensor, num_groups: int) -> tuple[Tensor, Tensor, Tensor]:
    """Stable order of the items by group, and the start and length of each group's run."""
    order = sort_with_order(groups)[1]
    counts = torch.bincount(groups, minlength=num_groups)
    return order, torch.cumsum(counts, 0) - counts, counts


def masked_components(xyz: Tensor, query: Tensor, row: Tensor, eps: float) -> Tensor:
    """Per query, the connected components of its points joined within ``eps`` (DBSCAN with
    ``min_samples=1``), for every query at once.

    ``xyz [N, 3]``; ``(query, row) [P]`` the members, query-major. Returns ``[P]`` a component id per
    member (components of different queries never share one). Points in the same or adjacent fine
    cells (side about ``eps / 2 sqrt 3``) are joined without measuring; only groups of members in
    nearby cells that are still apart are measured point by point, so a mask's cost grows with its
    gaps, not with its area times the neighbours within ``eps``.
    """
    if len(row) == 0:
        return row.clone()
    cells = cell_coords(xyz, eps * _FINE_CELL)
    cell_keys, strides, span = pack_cells(cells)
    nodes, node_of = unique_inverse(query * span + cell_keys.index_select(0, row))
    node_query = torch.div(nodes, span, rounding_mode="floor")
    first, second = adjacent(nodes, strides)
    joined = connected_components(len(nodes), first, second)
    first, second = _apart_nodes(xyz, cells, row, node_of, node_query, joined, eps)
    if len(first):
        merged = connected_components(len(nodes), joined.index_select(0, first), joined.index_select(0, second))
        joined = merged.index_select(0, joined)
    return joined.index_select(0, node_of)


def _apart_nodes(xyz: Tensor, cells: Tensor, row: Tensor, node_of: Tensor, node_query: Tensor,
                 joined: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """Pairs of nodes (a query's members in one fine cell) in different components so far that hold
    two members within ``eps``: candidates from the same or adjacent coarse cells, pruned by the
    members' bounding boxes, then measured point by point."""
    num_nodes = len(node_query)
    node_cells = torch.zeros((num_nodes, 3), dtype=cells.dtype, device=cells.device)
    node_cells.index_copy_(0, node_of, cells.index_select(0, row))
    coarse_keys, coarse_strides, span = pack_cells(torch.div(node_cells, _COARSE, rounding_mode="floor"))
    supers, super_of = unique_inverse(node_query * span + coarse_keys)
    low = torch.full((len(supers),), num_nodes, dtype=joined.dtype, device=joined.device)
    low.scatter_reduce_(0, super_of, joined, "amin")
    high = torch.full_like(low, -1).scatter_reduce_(0, super_of, joined, "amax")
    first, second = adjacent(supers, coarse_strides)
    mixed = (low.index_select(0, first) != high.index_select(0, second)) | (low.index_select(0, second) !=
                                                                           high.index_select(0, first))
    mixed |= (high.index_select(0, first) != low.index_select(0, first))
    alone = flat_nonzero(high != low)
    first = torch.cat([alone, first[mixed]])
    second = torch.cat([alone, second[mixed]])
    order, starts, counts = _runs(super_of, len(supers))
    a, b, owner = cartesian_pairs(starts.index_select(0, first), counts.index_select(0, first),
                                  starts.index_select(0, second), counts.index_select(0, second))
    a, b = order.index_select(0, a), order.index_select(0, b)
    component_a, component_b = joined.index_select(0, a), joined.index_select(0, b)
    within_one = owner < len(alone)     # a coarse cell with itself: each unordered pair once
    keep = flat_nonzero(torch.where(within_one, component_a < component_b, component_a != component_b))
    a, b = a.index_select(0, keep), b.index_select(0, keep)
    a, b = _boxes_near(xyz, row, node_of, num_nodes, a, b, eps)
    return _measured(xyz, row, node_of, num_nodes, a, b, eps)


def _boxes_near(xyz: Tensor, row: Tensor, node_of: Tensor, num_nodes: int, a: Tensor, b: Tensor,
                eps: float) -> tuple[Tensor, Tensor]:
    """The node pairs whose members' bounding boxes come within ``eps`` (with a rounding margin)."""
    gap = torch.zeros(len(a), dtype=xyz.dtype, device=xyz.device)
    for axis in range(3):
        values = xyz[:, axis].index_select(0, row)
        low = torch.full((num_nodes,), math.inf, dtype=xyz.dtype, device=xyz.device)
        low.scatter_reduce_(0, node_of, values, "amin")
        high = torch.full_like(low, -math.inf).scatter_reduce_(0, node_of, values, "amax")
        apart = torch.maximum(low.index_select(0, b) - high.index_select(0, a),
                              low.index_select(0, a) - high.index_select(0, b)).clamp_min(0)
        gap += apart * apart
    keep = flat_nonzero(gap <= float(eps) ** 2 * (1 + 1e-4))
    return a.index_select(0, keep), b.index_select(0, keep)


def _measured(xyz: Tensor, row: Tensor, node_of: Tensor, num_nodes: int, a: Tensor, b: Tensor,
              eps: float) -> tuple[Tensor, Tensor]:
    """The node pairs ``(a, b)`` with a member of ``a`` within ``eps`` of a member of ``b``."""
    order, starts, counts = _runs(node_of, num_nodes)
    first, second, owner = cartesian_pairs(starts.index_select(0, a), counts.index_select(0, a),
                                           starts.index_select(0, b), counts.index_select(0, b))
    rows = row.index_select(0, order)
    close = within(xyz, rows.index_select(0, first), rows.index_select(0, second), eps)
    linked = torch.unique(owner[close])
    return a.index_select(0, linked), b.index_select(0, linked)
