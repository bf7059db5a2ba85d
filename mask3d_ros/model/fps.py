"""Furthest point sampling that picks the same points as Mask3D's pointnet2 CUDA kernel.

Mask3D seeds its queries with ``furthest_point_sample`` on the integer voxel coordinates. Integer
coordinates tie constantly, and the CUDA kernel breaks ties through a block reduction rather than
by lowest index, so a plain argmax picks different queries. The kernel's choice has a closed form:
with ``T = min(512, 2**floor(log2 N))`` threads, thread ``k mod T`` scans its points in order
(the first maximum wins) and the shared-memory tree reduction lets a slot take its partner only on
a strictly larger value. Among the tied maxima the winner is therefore the index with the
smallest key ``(bitreverse_log2T(k mod T), k div T)``.

The kernel also skips points with ``x² + y² + z² <= 1e-3`` (the voxel at the origin): they are
never updated and never picked, except as the seed (row 0).
"""
from __future__ import annotations

import numpy as np
import torch

from mask3d_ros.model.neighbours import on_host

MAX_THREADS = 512           # pointnet2's TOTAL_THREADS
ORIGIN_EPS = 1e-3           # the kernel's ``mag <= 1e-3`` skip
INITIAL_DIST = 1e10         # the kernel's initial running minimum


def cuda_block_size(num_points: int) -> int:
    """Threads per block the pointnet2 launcher uses for ``num_points`` points."""
    return min(MAX_THREADS, 1 << max(num_points.bit_length() - 1, 0))


def tie_rank(num_points: int, rule: str = "cuda", device=None) -> torch.Tensor:
    """Rank of each index among tied maxima (lower wins), int64 ``[N]``.

    ``rule="cuda"`` reproduces the kernel's reduction; ``rule="lowest"`` is plain lowest index.
    """
    k = torch.arange(num_points, dtype=torch.int64, device=device)
    if rule == "lowest":
        return k
    if rule != "cuda":
        raise ValueError(f"unknown tie rule {rule!r} (expected 'cuda' or 'lowest')")
    threads = cuda_block_size(num_points)
    bits = threads.bit_length() - 1
    lane = k % threads
    reversed_lane = torch.zeros_like(lane)
    for b in range(bits):
        reversed_lane |= ((lane >> b) & 1) << (bits - 1 - b)
    per_lane = (num_points + threads - 1) // threads
    return reversed_lane * per_lane + k // threads


def furthest_point_sample(coords: torch.Tensor, num_samples: int, rule: str = "cuda") -> torch.Tensor:
    """Indices (int64 ``[num_samples]``) of ``num_samples`` furthest points of ``coords [N, 3]``.

    Seeded at row 0, distances in float32 like the kernel (integer voxel coordinates are exact).
    If ``num_samples > N`` the kernel keeps going on zero distances; so does this.
    """
    if coords.ndim != 2 or coords.shape[1] != 3:
        raise ValueError(f"coords must be [N, 3], got {tuple(coords.shape)}")
    num_points = coords.shape[0]
    if num_points == 0:
        raise ValueError("furthest_point_sample needs at least one point")
    xyz = coords.to(torch.float32)
    device = xyz.device
    rank = tie_rank(num_points, rule, device)
    candidate = (xyz * xyz).sum(1) > ORIGIN_EPS
    if on_host(xyz):    # numpy's per-call cost is a tenth of torch's, and this loop is all calls
        return torch.from_numpy(_sample(xyz.numpy(), rank.numpy(), candidate.numpy(), num_samples))
    never_picked = torch.iinfo(torch.int64).max
    min_dist = torch.full((num_points,), INITIAL_DIST, dtype=torch.float32, device=device)
    min_dist = torch.where(candidate, min_dist, torch.full_like(min_dist, -1.0))
    picked = torch.zeros(num_samples, dtype=torch.int64, device=device)
    last = torch.zeros((), dtype=torch.int64, device=device)
    for step in range(1, num_samples):
        delta = xyz - xyz[last]
        dist = (delta * delta).sum(1)
        min_dist = torch.where(candidate, torch.minimum(min_dist, dist), min_dist)
        best = min_dist.max()
        tied = (min_dist == best) & candidate
        # no candidate at all: every thread reports index 0, as in the kernel
        last = torch.where(tied, rank, never_picked).argmin() * tied.any()
        picked[step] = last
    return picked


def _sample(xyz: np.ndarray, rank: np.ndarray, candidate: np.ndarray, num_samples: int) -> np.ndarray:
    """The loop of :func:`furthest_point_sample` in numpy, step for step the same arithmetic."""
    never_picked = np.iinfo(np.int64).max
    min_dist = np.where(candidate, np.float32(INITIAL_DIST), np.float32(-1.0)).astype(np.float32)
    picked = np.zeros(num_samples, dtype=np.int64)
    last = 0
    x, y, z = xyz.T.copy()      # contiguous columns: a sum over a length-3 axis is slow in numpy
    for step in range(1, num_samples):
        delta = x - x[last]
        dist = delta * delta
        delta = y - y[last]
        dist += delta * delta
        delta = z - z[last]
        dist += delta * delta
        np.minimum(min_dist, dist, out=min_dist, where=candidate)
        tied = (min_dist == min_dist.max()) & candidate
        # no candidate at all: every thread reports index 0, as in the kernel
        last = int(np.where(tied, rank, never_picked).argmin()) if tied.any() else 0
        picked[step] = last
    return picked
