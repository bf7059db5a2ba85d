"""Pure-PyTorch sparse 3D convolution with MinkowskiEngine's semantics and parameter layout.

Everything is keyed by a `CoordinateManager` built once per input cloud from the stride-1 voxel
coordinates. It owns the coordinate sets of every tensor stride (1, 2, 4, ...), the child->parent
maps between consecutive strides and the neighbour tables ("kernel maps") of the convolutions, and
caches them, so every layer at a given stride reuses the same tables.

Conventions (MinkowskiEngine's; Mask3D reference notes §2.4):
- coordinates are int64 `[N, 3]` (x, y, z) in stride-1 voxel units; rows of stride s are multiples
  of s, and the parent of `c` at stride 2s is `floor(c / 2s) * 2s` (true floor, negative-safe);
- row order: stride 1 keeps the given order (the voxelizer's first-occurrence order); every
  coarser stride is sorted lexicographically by (x, y, z), so it does not depend on the input
  order and matches the parity fixture's "sort rows by coordinates" alignment;
- kernel offsets are enumerated with x fastest: `k = i_x + K*i_y + K^2*i_z`, offset
  `(i - K//2) * s` for odd K and `i * s` (i.e. {0, s}) for K = 2;
- one cloud per manager (batch size 1). A batch would add the batch index as the slowest axis of
  the linear key.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from mask3d_ros.model.neighbours import flat_nonzero, on_host, sort_with_order, unique_inverse

# Largest dense key -> row table, in grid cells per voxel (int32 cells: 256 bytes per voxel).
_DENSE_CELLS_PER_VOXEL = 64
# Largest neighbourhood matrix `[N_out, K * C_in]` (floats) built for a one-GEMM convolution.
_NEIGHBOURHOOD_GEMM_LIMIT = 2 ** 22
# The fixed cost of one kernel offset's gather, product and scatter, as the multiply-adds of a
# gathered GEMM that take as long (calibrated on the development VM; figures in this line's commit).
_OFFSET_COST_MACS = 2 ** 19
# None: choose per map; "gemm" or "groups" forces one way (tests run both).
CONV_PATH: str | None = None
# Grid padding (in voxels of the stride) around the bounding box, so that `key + offset_key` of
# every neighbour query up to this radius stays inside the key range and never aliases.
_MAX_RADIUS = 3


def kernel_offsets(kernel_size: int) -> Tensor:
    """Offsets `[K^3, 3]` in units of the tensor stride, in MinkowskiEngine's order (x fastest)."""
    start = -(kernel_size // 2) if kernel_size % 2 else 0
    axis = torch.arange(start, start + kernel_size)
    z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")
    return torch.stack([x.flatten(), y.flatten(), z.flatten()], dim=1)


@dataclass(frozen=True)
class PairMap:
    """Row pairs of a sparse convolution, grouped by kernel index: `out[o] += in[i] @ W[k]`.

    Group k is `in_rows[a:b]`, `out_rows[a:b]` with `(a, b) = bounds[k]`; within a group both the
    input rows and the output rows are unique (a voxel has at most one neighbour per offset), so
    the transposed map (used by the backward pass and by transposed convolutions) is the same
    structure with in/out swapped. `identity`, when set, is a kernel index that maps every row to
    itself (the centre of a stride-1 convolution); it is applied as one plain matmul instead of
    a gather and scatter.
    """

    in_rows: Tensor
    out_rows: Tensor
    bounds: tuple[tuple[int, int], ...]
    num_in: int
    num_out: int
    identity: int | None = None
    _table: list = field(default_factory=list, compare=False, repr=False)   # the cached neighbour table

    def transposed(self) -> PairMap:
        return PairMap(self.out_rows, self.in_rows, self.bounds, self.num_out, self.num_in, self.identity)

    def unordered_pairs(self) -> tuple[Tensor, Tensor]:
        """Each unordered pair of distinct rows once, ``(in_rows, out_rows)`` ``[E]``: the groups before
        the centre of a stride-1 :meth:`CoordinateManager.kernel_map` (the rest are the same swapped)."""
        if self.identity is None:
            raise ValueError("only a stride-1 kernel map pairs rows symmetrically")
        half = self.bounds[self.identity][0]
        return self.in_rows[:half], self.out_rows[:half]

    @property
    def num_pairs(self) -> int:
        return self.in_rows.shape[0] + (self.num_out if self.identity is not None else 0)

    def neighbour_table(self) -> Tensor:
        """int64 `[num_out, K]`: the input row feeding output `o` through kernel `k`, or `num_in` (a
        zero row appended to the input) where there is none. Built once per map."""
        if not self._table:
            kernels = len(self.bounds)
            device = self.in_rows.device
            sizes = torch.tensor([end - start for start, end in self.bounds], device=device)
            kernel = torch.repeat_interleave(torch.arange(kernels, device=device), sizes)
            if on_host(self.in_rows):    # numpy's scatter: several times faster than index_copy_
                table = np.full(self.num_out * kernels, self.num_in, dtype=np.int64)
                table[(self.out_rows * kernels + kernel).numpy()] = self.in_rows.numpy()
                table = torch.from_numpy(table)
            else:
                table = torch.full((self.num_out * kernels,), self.num_in, dtype=torch.int64, device=device)
                table.index_copy_(0, self.out_rows * kernels + kernel, self.in_rows)
            table = table.view(self.num_out, kernels)
            if self.identity is not None:
                table[:, self.identity] = torch.arange(self.num_out, device=device)
            self._table.append(table)
        return self._table[0]


def _log2(stride: int) -> int:
    """log2 of a power-of-two stride: integer coordinates divide by it as an arithmetic shift (floor)."""
    return stride.bit_length() - 1


def _group_bounds(counts: list[int]) -> tuple[tuple[int, int], ...]:
    ends = torch.tensor(counts).cumsum(0).tolist()
    return tuple((end - count, end) for end, count in zip(ends, counts))


class _Grid:
    """Linear int64 keys of the voxels of one tensor stride inside the cloud's padded bounding box.

    Keys linearize `coords // stride` with x slowest, so key order is lexicographic (x, y, z)
    order; the box is padded by `_MAX_RADIUS` so `key + offset_key` is exact for every neighbour.
    """

    def __init__(self, stride: int, lo: Tensor, hi: Tensor):
        self.stride = stride
        self.shift = _log2(stride)
        self.lo = (lo >> self.shift) - _MAX_RADIUS
        self.dims = (hi >> self.shift) + _MAX_RADIUS - self.lo + 1

    def keys(self, coords: Tensor) -> Tensor:
        """Keys of stride-1-unit coordinates `[..., 3]` (multiples of the stride)."""
        g = (coords >> self.shift) - self.lo
        return (g[..., 0] * self.dims[1] + g[..., 1]) * self.dims[2] + g[..., 2]

    def offset_keys(self, offsets: Tensor) -> Tensor:
        """Key differences of grid offsets `[K, 3]` (in units of the stride)."""
        return (offsets[:, 0] * self.dims[1] + offsets[:, 1]) * self.dims[2] + offsets[:, 2]


class _Level:
    """The rows of one tensor stride with a key -> row index for neighbour lookups.

    The index is a dense table over the padded grid when that costs at most
    `_DENSE_CELLS_PER_VOXEL` cells per voxel (indoor scenes, coarse strides): one gather per
    query. Sparse clouds (outdoor scans) use sorted keys and binary search instead.
    """

    def __init__(self, coords: Tensor, grid: _Grid):
        self.coords = coords
        self.grid = grid
        self.keys = grid.keys(coords)
        num_rows = coords.shape[0]
        volume = int(torch.prod(grid.dims))
        if volume <= _DENSE_CELLS_PER_VOXEL * num_rows:
            index_dtype = torch.int32 if num_rows < 2**31 else torch.int64
            self.table = torch.full((volume,), -1, dtype=index_dtype, device=coords.device)
            self.table[self.keys] = torch.arange(num_rows, dtype=index_dtype, device=coords.device)
            self.sorted_keys = self.order = None
        else:
            self.table = None
            self.sorted_keys, self.order = sort_with_order(self.keys)

    def has_duplicates(self) -> bool:
        if self.table is not None:
            rows, _ = self.lookup(self.keys)
            return not bool((rows == torch.arange(self.keys.numel(), device=self.keys.device)).all())
        return self.sorted_keys.unique_consecutive().numel() != self.sorted_keys.numel()

    def queries(self) -> tuple[Tensor, Tensor]:
        """(rows, keys) of all voxels in the order that makes lookups fastest: key order for binary search."""
        if self.table is not None:
            return torch.arange(self.keys.numel(), device=self.keys.device), self.keys
        return self.order, self.sorted_keys

    def lookup(self, keys: Tensor) -> tuple[Tensor, Tensor]:
        """Rows holding `keys` (any shape, inside the padded grid; int32 or int64) and a mask of which exist."""
        if self.table is not None:
            if on_host(keys):       # numpy's gather: several times faster than torch's indexing here
                rows = torch.from_numpy(np.take(self.table.numpy(), keys.numpy()))
            else:
                rows = self.table[keys]
            return rows, rows >= 0
        pos = torch.searchsorted(self.sorted_keys, keys).clamp_(max=self.sorted_keys.numel() - 1)
        found = self.sorted_keys[pos] == keys
        return self.order[pos], found


class CoordinateManager:
    """Coordinate sets, child->parent maps, kernel maps and pooling of one voxelized cloud.

    Built from the stride-1 integer coordinates `[N, 3]`; all tables are computed lazily once and
    cached, with no Python loop over points.
    """

    def __init__(self, coords_s1: Tensor):
        coords = coords_s1.to(torch.int64)
        if coords.ndim != 2 or coords.shape[1] != 3 or coords.shape[0] == 0:
            raise ValueError(f"expected non-empty int coordinates [N, 3], got {tuple(coords_s1.shape)}")
        self.device = coords.device
        self._lo = coords.min(0).values
        self._hi = coords.max(0).values
        self._levels = {1: _Level(coords, self._grid(1))}
        if self._levels[1].has_duplicates():
            raise ValueError("stride-1 coordinates contain duplicate voxels")
        self._parents: dict[int, tuple[Tensor, Tensor]] = {}
        self._child_counts: dict[int, Tensor] = {}
        self._kernel_maps: dict[tuple[int, int], PairMap] = {}
        self._down_maps: dict[int, PairMap] = {}

    def _grid(self, stride: int) -> _Grid:
        return _Grid(stride, self._lo, self._hi)

    @staticmethod
    def _check_stride(stride: int) -> None:
        if stride < 1 or stride & (stride - 1):
            raise ValueError(f"tensor stride must be a power of two, got {stride}")

    def _level(self, stride: int) -> _Level:
        self._check_stride(stride)
        if stride not in self._levels:
            self._build_parent_level(stride // 2)
        return self._levels[stride]

    def _build_parent_level(self, stride: int) -> None:
        """Create stride 2s from stride s: parents sorted by key, and each child's parent row/bit."""
        child = self._level(stride).coords
        shift = _log2(stride)
        parent_of_child = (child >> (shift + 1)) << (shift + 1)
        bits = (child >> shift) & 1
        child_bits = bits[:, 0] + 2 * bits[:, 1] + 4 * bits[:, 2]
        grid = self._grid(2 * stride)
        parents, parent_rows = unique_inverse(grid.keys(parent_of_child))
        counts = torch.bincount(parent_rows, minlength=len(parents))
        parent_coords = parent_of_child.new_empty((counts.shape[0], 3)).index_copy_(0, parent_rows, parent_of_child)
        self._levels[2 * stride] = _Level(parent_coords, grid)
        self._parents[stride] = (parent_rows, child_bits)
        self._child_counts[stride] = counts

    def coords(self, stride: int = 1) -> Tensor:
        """Integer coordinates `[N_s, 3]` (stride-1 units, multiples of `stride`) of that stride's rows."""
        return self._level(stride).coords

    def rows(self, coords: Tensor, stride: int = 1) -> Tensor:
        """Row index at `stride` of each coordinate `[M, 3]`; raises if one is not a voxel of that stride."""
        level = self._level(stride)
        coords = coords.to(torch.int64)
        lo = (self._lo >> _log2(stride)) << _log2(stride)
        inside = ((coords >= lo) & (coords <= self._hi) & (coords % stride == 0)).all(1)
        rows, found = level.lookup(level.grid.keys(torch.minimum(torch.maximum(coords, lo), self._hi)))
        found &= inside  # clamped outside coordinates could alias a border voxel
        if not bool(found.all()):
            raise KeyError(f"{int((~found).sum())} coordinates are not voxels of stride {stride}")
        return rows.long()

    def num_rows(self, stride: int = 1) -> int:
        return self._level(stride).coords.shape[0]

    def parents(self, stride: int) -> tuple[Tensor, Tensor]:
        """For each row of `stride`: its parent row at `2*stride` and its offset bit `bx + 2by + 4bz`."""
        self._level(2 * stride)
        return self._parents[stride]

    def avg_pool(self, values: Tensor, stride: int) -> Tensor:
        """2x2x2 stride-2 average pooling of per-row values `[N_s, C]` -> `[N_2s, C]`.

        The plain mean of each parent's existing children, landing on the backbone's stride-2s
        rows, as `MinkowskiAvgPooling(2, 2)`; repeated calls give averages of averages.
        """
        parent_rows, _ = self.parents(stride)
        counts = self._child_counts[stride]
        sums = values.new_zeros((counts.shape[0],) + values.shape[1:]).index_add_(0, parent_rows, values)
        return sums / counts.to(values.dtype).view((-1,) + (1,) * (values.ndim - 1))

    def kernel_map(self, kernel_size: int, stride: int) -> PairMap:
        """Pairs of a stride-1 `kernel_size`^3 convolution at tensor stride `stride` (input rows = output rows)."""
        if kernel_size % 2 == 0 or kernel_size // 2 > _MAX_RADIUS:
            raise ValueError(f"kernel maps need an odd kernel size <= {2 * _MAX_RADIUS + 1}, got {kernel_size}")
        cache_key = (kernel_size, stride)
        if cache_key not in self._kernel_maps:
            widest = self.widest_kernel_map(stride)
            if widest is not None and widest[0] > kernel_size:
                self._kernel_maps[cache_key] = _inner_kernel_map(*widest, kernel_size)
            else:
                self._kernel_maps[cache_key] = self._build_kernel_map(kernel_size, stride)
        return self._kernel_maps[cache_key]

    def widest_kernel_map(self, stride: int) -> tuple[int, PairMap] | None:
        """The largest kernel size whose map at ``stride`` is already built, and that map (None: none is)."""
        built = [size for size, at in self._kernel_maps if at == stride]
        return (max(built), self._kernel_maps[max(built), stride]) if built else None

    def _build_kernel_map(self, kernel_size: int, stride: int) -> PairMap:
        """Search only the offsets before the centre: offset -d's pairs are offset d's, swapped."""
        level = self._level(stride)
        offsets = kernel_offsets(kernel_size).to(self.device)
        centre = offsets.shape[0] // 2
        query_rows, query_keys = level.queries()
        num_rows = query_keys.numel()
        neighbour_rows, found = level.lookup(query_keys[None, :] + level.grid.offset_keys(offsets[:centre])[:, None])
        flat = flat_nonzero(found.view(-1))  # (offset, query) order: grouped by offset
        counts = found.sum(1).tolist()
        half = flat.numel()
        in_rows = torch.empty(2 * half, dtype=torch.int64, device=self.device)
        out_rows = torch.empty_like(in_rows)
        in_rows[:half] = neighbour_rows.view(-1)[flat]
        torch.take(query_rows, flat % num_rows, out=out_rows[:half])
        torch.cat(list(reversed(out_rows[:half].split(counts))), out=in_rows[half:])
        torch.cat(list(reversed(in_rows[:half].split(counts))), out=out_rows[half:])
        return PairMap(in_rows, out_rows, _group_bounds(counts + [0] + counts[::-1]), num_rows, num_rows, centre)

    def down_map(self, stride: int) -> PairMap:
        """Pairs of the kernel-2 stride-2 convolution from `stride` to `2*stride`: child -> parent by bit.

        Its transpose is the kernel-2 stride-2 transposed convolution back onto the `stride` rows.
        """
        if stride not in self._down_maps:
            parent_rows, child_bits = self.parents(stride)
            children = sort_with_order(child_bits)[1]
            counts = torch.bincount(child_bits, minlength=8).tolist()
            self._down_maps[stride] = PairMap(
                in_rows=children,
                out_rows=parent_rows[children],
                bounds=_group_bounds(counts),
                num_in=child_bits.shape[0],
                num_out=self.num_rows(2 * stride),
            )
        return self._down_maps[stride]


def _inner_kernel_map(wide_size: int, wide: PairMap, kernel_size: int) -> PairMap:
    """The `kernel_size`^3 map cut out of a wider one at the same stride: its offsets' groups, in its
    own kernel order. Offsets before the centre are the same in both orders, so every group holds the
    same pairs in the same order as :meth:`CoordinateManager._build_kernel_map` would give."""
    wide_index = {offset: k for k, offset in enumerate(map(tuple, kernel_offsets(wide_size).tolist()))}
    groups = [wide.bounds[wide_index[offset]] for offset in map(tuple, kernel_offsets(kernel_size).tolist())]
    in_rows = torch.cat([wide.in_rows[start:end] for start, end in groups])
    out_rows = torch.cat([wide.out_rows[start:end] for start, end in groups])
    return PairMap(in_rows, out_rows, _group_bounds([end - start for start, end in groups]), wide.num_in,
                   wide.num_out, len(groups) // 2)


class SparseTensor:
    """Features `[N, C]` on the rows of one tensor stride of a `CoordinateManager`.

    `coords` is the manager's coordinate tensor of that stride (stride-1 units, multiples of
    `stride`); operations that keep the coordinates return a new tensor via `replace`.
    """

    def __init__(self, feats: Tensor, coords: Tensor | None = None, stride: int = 1,
                 manager: CoordinateManager | None = None):
        if manager is None:
            if coords is None or stride != 1:
                raise ValueError("without a manager, a SparseTensor needs its stride-1 coords")
            manager = CoordinateManager(coords)
        self.manager = manager
        self.stride = stride
        self.coords = manager.coords(stride)
        if feats.shape[0] != self.coords.shape[0]:
            raise ValueError(f"{feats.shape[0]} feature rows for {self.coords.shape[0]} voxels at stride {stride}")
        self.feats = feats

    def replace(self, feats: Tensor, stride: int | None = None) -> SparseTensor:
        """Same manager, new features (on this stride's rows unless `stride` is given)."""
        return SparseTensor(feats, stride=self.stride if stride is None else stride, manager=self.manager)

    def __add__(self, other: SparseTensor) -> SparseTensor:
        """Element-wise sum of two tensors on the same rows (residual connections)."""
        if other.manager is not self.manager or other.stride != self.stride:
            raise ValueError("adding sparse tensors of different managers or strides")
        return self.replace(self.feats + other.feats)

    def __repr__(self) -> str:
        return f"SparseTensor(rows={self.feats.shape[0]}, channels={self.feats.shape[1]}, stride={self.stride})"


def cat(tensors: list[SparseTensor]) -> SparseTensor:
    """Channel concatenation, in the given order, of tensors on the same rows."""
    first = tensors[0]
    if any(t.manager is not first.manager or t.stride != first.stride for t in tensors):
        raise ValueError("cat needs tensors of the same manager and stride")
    return first.replace(torch.cat([t.feats for t in tensors], dim=1))


def relu(x: SparseTensor) -> SparseTensor:
    return x.replace(torch.relu(x.feats))


def avg_pool(x: SparseTensor) -> SparseTensor:
    """`MinkowskiAvgPooling(kernel_size=2, stride=2)`: mean of existing children, on the backbone's rows."""
    return x.replace(x.manager.avg_pool(x.feats, x.stride), stride=2 * x.stride)


def _one_gemm(pairs: PairMap, in_channels: int, out_channels: int) -> bool:
    """Whether the one-GEMM convolution beats the offset-by-offset one: its products with missing
    neighbours (zero rows) cost less than the offsets' fixed costs, within the memory limit."""
    if CONV_PATH is not None:
        return CONV_PATH == "gemm"
    entries = pairs.num_out * len(pairs.bounds)
    if entries * in_channels > _NEIGHBOURHOOD_GEMM_LIMIT:
        return False
    offsets = sum(end > start for start, end in pairs.bounds)
    return (entries - pairs.num_pairs) * in_channels * out_channels <= offsets * _OFFSET_COST_MACS


def _gather_mm_scatter(feats: Tensor, weight: Tensor, pairs: PairMap) -> Tensor:
    """`out[o] = sum over pairs (i, o, k) of feats[i] @ weight[k]`.

    Where :func:`_one_gemm` says so (the coarse levels, the thin input layer), each output's whole
    neighbourhood is gathered into one row for one GEMM: three ops instead of three per kernel
    offset, whose fixed cost dominates there. Otherwise group by group, with one gather buffer and one
    product buffer, sized for the largest group, reused by every group: fresh large tensors cost
    more in page faults than the GEMMs themselves on CPU.
    """
    kernels = len(pairs.bounds)
    if _one_gemm(pairs, feats.shape[1], weight.shape[2]):
        padded = torch.cat([feats, feats.new_zeros(1, feats.shape[1])])
        gathered = padded.index_select(0, pairs.neighbour_table().view(-1)).view(pairs.num_out, -1)
        return gathered @ weight.reshape(kernels * weight.shape[1], weight.shape[2])
    if pairs.identity is not None:
        out = feats @ weight[pairs.identity]
    else:
        out = feats.new_zeros(pairs.num_out, weight.shape[2])
    largest = max(end - start for start, end in pairs.bounds)
    gathered = feats.new_empty(largest, feats.shape[1])
    products = feats.new_empty(largest, weight.shape[2])
    for k, (start, end) in enumerate(pairs.bounds):
        if end == start:
            continue
        rows = end - start
        torch.index_select(feats, 0, pairs.in_rows[start:end], out=gathered[:rows])
        torch.mm(gathered[:rows], weight[k], out=products[:rows])
        out.index_add_(0, pairs.out_rows[start:end], products[:rows])
    return out


def _kernel_grad(feats: Tensor, grad_out: Tensor, pairs: PairMap) -> Tensor:
    """`dW[k] = feats[in_k]^T @ grad_out[out_k]` for every group."""
    grad_weight = feats.new_zeros(len(pairs.bounds), feats.shape[1], grad_out.shape[1])
    if pairs.identity is not None:
        torch.mm(feats.t(), grad_out, out=grad_weight[pairs.identity])
    largest = max(end - start for start, end in pairs.bounds)
    gathered_feats = feats.new_empty(largest, feats.shape[1])
    gathered_grads = grad_out.new_empty(largest, grad_out.shape[1])
    for k, (start, end) in enumerate(pairs.bounds):
        if end == start:
            continue
        rows = end - start
        torch.index_select(feats, 0, pairs.in_rows[start:end], out=gathered_feats[:rows])
        torch.index_select(grad_out, 0, pairs.out_rows[start:end], out=gathered_grads[:rows])
        torch.mm(gathered_feats[:rows].t(), gathered_grads[:rows], out=grad_weight[k])
    return grad_weight


class _SparseConvFunction(torch.autograd.Function):
    """Gather-GEMM-scatter whose backward reuses the same kernel on the transposed pair map,
    saving only the input and weight (autograd through index ops would keep every gathered copy)."""

    @staticmethod
    def forward(ctx, feats: Tensor, weight: Tensor, pairs: PairMap) -> Tensor:
        ctx.save_for_backward(feats, weight)
        ctx.pairs = pairs
        return _gather_mm_scatter(feats, weight, pairs)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):
        feats, weight = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        grad_feats = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_feats = _gather_mm_scatter(grad_out, weight.transpose(1, 2), ctx.pairs.transposed())
        if ctx.needs_input_grad[1]:
            grad_weight = _kernel_grad(feats, grad_out, ctx.pairs)
        return grad_feats, grad_weight, None


def sparse_conv(feats: Tensor, weight: Tensor, pairs: PairMap) -> Tensor:
    """Differentiable `out[o] = sum feats[i] @ weight[k]` over the pairs of `pairs`."""
    return _SparseConvFunction.apply(feats.contiguous(), weight, pairs)


class SparseConv(nn.Module):
    """`MinkowskiConvolution` with the same parameter names and layouts.

    Supported: odd `kernel_size` at stride 1 (output rows = input rows), kernel 2 stride 2
    (downsampling onto the manager's stride-2s rows), and 1x1 at stride 1, whose kernel is
    `[in, out]` as ME's `use_mm`; otherwise the kernel is `[kernel_size^3, in, out]`.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, bias: bool = False):
        super().__init__()
        if not ((stride == 1 and kernel_size % 2 == 1) or (stride == 2 and kernel_size == 2)):
            raise NotImplementedError(f"kernel_size={kernel_size} with stride={stride}")
        self.kernel_size = kernel_size
        self.stride = stride
        volume = kernel_size**3
        shape = (in_channels, out_channels) if volume == 1 else (volume, in_channels, out_channels)
        self.kernel = nn.Parameter(torch.empty(shape))
        self.bias = nn.Parameter(torch.empty(1, out_channels)) if bias else None
        _reset_like_minkowski(self.kernel, self.bias, fan=in_channels * volume)

    def forward(self, x: SparseTensor) -> SparseTensor:
        if self.kernel.ndim == 2:
            feats = x.feats @ self.kernel
        elif self.stride == 1:
            feats = sparse_conv(x.feats, self.kernel, x.manager.kernel_map(self.kernel_size, x.stride))
        else:
            feats = sparse_conv(x.feats, self.kernel, x.manager.down_map(x.stride))
        if self.bias is not None:
            feats = feats + self.bias
        return x.replace(feats, stride=x.stride * self.stride)

    def extra_repr(self) -> str:
        return f"kernel={tuple(self.kernel.shape)}, stride={self.stride}, bias={self.bias is not None}"


class SparseConvTranspose(nn.Module):
    """`MinkowskiConvolutionTranspose(kernel_size=2, stride=2)`: `out[q] = in[parent(q)] @ W[bit(q)]`.

    The output lands exactly on the manager's existing rows at half the stride (no new voxels).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 2, stride: int = 2, bias: bool = False):
        super().__init__()
        if kernel_size != 2 or stride != 2:
            raise NotImplementedError(f"transposed convolution with kernel_size={kernel_size}, stride={stride}")
        self.kernel = nn.Parameter(torch.empty(8, in_channels, out_channels))
        self.bias = nn.Parameter(torch.empty(1, out_channels)) if bias else None
        _reset_like_minkowski(self.kernel, self.bias, fan=out_channels * 8)

    def forward(self, x: SparseTensor) -> SparseTensor:
        if x.stride < 2:
            raise ValueError("a transposed stride-2 convolution needs an input of tensor stride >= 2")
        feats = sparse_conv(x.feats, self.kernel, x.manager.down_map(x.stride // 2).transposed())
        if self.bias is not None:
            feats = feats + self.bias
        return x.replace(feats, stride=x.stride // 2)

    def extra_repr(self) -> str:
        return f"kernel={tuple(self.kernel.shape)}, bias={self.bias is not None}"


def _reset_like_minkowski(kernel: Tensor, bias: Tensor | None, fan: int) -> None:
    """ME's default init: U(-1/sqrt(fan), 1/sqrt(fan)) for kernel and bias."""
    bound = 1.0 / math.sqrt(fan)
    with torch.no_grad():
        kernel.uniform_(-bound, bound)
        if bias is not None:
            bias.uniform_(-bound, bound)


class SparseBatchNorm(nn.Module):
    """`MinkowskiBatchNorm`: a `BatchNorm1d` over the rows, stored as `.bn` like ME."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        self.bn = nn.BatchNorm1d(num_features, eps=eps, momentum=momentum)

    def forward(self, x: SparseTensor) -> SparseTensor:
        return x.replace(self.bn(x.feats))
