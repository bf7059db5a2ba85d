"""The pure-PyTorch sparse engine against dense torch convolutions on small random grids (float64)."""
import pytest
import torch
import torch.nn.functional as F

from mask3d_ros.model import neighbours, sparse
from mask3d_ros.model.sparse import (
    CoordinateManager,
    SparseBatchNorm,
    SparseConv,
    SparseConvTranspose,
    SparseTensor,
    avg_pool,
    cat,
    kernel_offsets,
    sparse_conv,
)

GRID_ORIGIN = -16  # a multiple of every stride tested, so dense stride-2 windows are ME's parents
GRID_SIZE = 32


@pytest.fixture(params=["dense-table", "binary-search", "dense-table-torch"])
def lookup(request, monkeypatch):
    """Run a test with both neighbour indexes (small test clouds get the dense table by default),
    and the dense table through torch's ops as on a GPU (numpy's on the CPU otherwise)."""
    if request.param == "binary-search":
        monkeypatch.setattr(sparse, "_DENSE_CELLS_PER_VOXEL", 0)
    if request.param == "dense-table-torch":
        monkeypatch.setattr(neighbours, "HOST_LIBRARIES", False)
    return request.param


@pytest.fixture(params=["gemm", "groups"])
def conv_path(request, monkeypatch):
    """Run a test with each way of computing a convolution: one GEMM over gathered
    neighbourhoods, and a gather, product and scatter per kernel offset."""
    monkeypatch.setattr(sparse, "CONV_PATH", request.param)
    return request.param


def random_cloud(seed: int, num_points: int = 300, extent: int = 8) -> torch.Tensor:
    """Unique int coordinates in [-extent, extent) with a clustered, scan-like density."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randint(-extent, extent, (6, 3), generator=generator)
    points = centres[torch.randint(0, 6, (num_points,), generator=generator)]
    points = points + torch.randint(-3, 4, (num_points, 3), generator=generator)
    coords = torch.unique(points.clamp(-extent, extent - 1), dim=0)
    return coords[torch.randperm(coords.shape[0], generator=generator)]


def to_dense(feats: torch.Tensor, coords: torch.Tensor, stride: int) -> torch.Tensor:
    """`[1, C, D, D, D]` grid indexed (x, y, z) by `(coords - GRID_ORIGIN) // stride`."""
    size = GRID_SIZE // stride
    dense = feats.new_zeros(1, feats.shape[1], size, size, size)
    x, y, z = ((coords - GRID_ORIGIN) // stride).T
    dense[0, :, x, y, z] = feats.T
    return dense


def at_rows(dense: torch.Tensor, coords: torch.Tensor, stride: int) -> torch.Tensor:
    x, y, z = ((coords - GRID_ORIGIN) // stride).T
    return dense[0, :, x, y, z].T


def dense_conv_weight(kernel: torch.Tensor, size: int) -> torch.Tensor:
    """ME `[K^3, in, out]` (x fastest) -> conv3d `[out, in, x, y, z]`."""
    return kernel.view(size, size, size, kernel.shape[1], kernel.shape[2]).permute(4, 3, 2, 1, 0)


def make_input(seed: int, stride: int, channels: int, num_points: int = 300):
    manager = CoordinateManager(random_cloud(seed, num_points))
    feats = torch.randn(manager.num_rows(stride), channels, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(seed))
    return SparseTensor(feats.requires_grad_(), stride=stride, manager=manager)


def assert_grads_match(sparse_out, dense_out, leaves):
    """Backpropagate the same random projection through both and compare the leaves' grads."""
    weights = torch.randn(sparse_out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    sparse_grads = torch.autograd.grad((sparse_out * weights).sum(), leaves)
    dense_grads = torch.autograd.grad((dense_out * weights).sum(), leaves)
    for sparse_grad, dense_grad in zip(sparse_grads, dense_grads):
        torch.testing.assert_close(sparse_grad, dense_grad, rtol=1e-10, atol=1e-10)


def test_kernel_offsets_follow_minkowski_order():
    offsets = kernel_offsets(3)
    assert offsets[0].tolist() == [-1, -1, -1]
    assert offsets[1].tolist() == [0, -1, -1]
    assert offsets[3].tolist() == [-1, 0, -1]
    assert offsets[9].tolist() == [-1, -1, 0]
    assert offsets[13].tolist() == [0, 0, 0]
    assert offsets[26].tolist() == [1, 1, 1]
    assert kernel_offsets(5)[0].tolist() == [-2, -2, -2] and kernel_offsets(5)[62].tolist() == [0, 0, 0]
    assert kernel_offsets(2).tolist() == [[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0],
                                          [0, 0, 1], [1, 0, 1], [0, 1, 1], [1, 1, 1]]


@pytest.mark.parametrize("kernel_size, direction, expected_index", [
    (3, (1, 0, 0), 14), (3, (0, 1, 0), 16), (3, (0, 0, 1), 22), (3, (-1, 0, 0), 12), (5, (1, 0, 0), 63),
])
def test_kernel_index_picks_the_neighbour_at_that_offset(kernel_size, direction, expected_index, lookup):
    """out[p] += in[p + offset_k] @ W[k] with k = i_x + K i_y + K^2 i_z, offsets scaled by the stride."""
    for stride in (1, 4):
        neighbour_coords = torch.tensor([direction]) * stride
        manager = CoordinateManager(torch.cat([torch.zeros(1, 3, dtype=torch.long), neighbour_coords]))
        conv = SparseConv(1, 1, kernel_size).double()
        with torch.no_grad():
            conv.kernel.copy_(torch.arange(kernel_size**3, dtype=torch.float64).view(-1, 1, 1))
        feats = torch.zeros(2, 1, dtype=torch.float64)
        feats[manager.rows(neighbour_coords, stride)] = 1.0
        out = conv(SparseTensor(feats, stride=stride, manager=manager)).feats
        assert out[manager.rows(torch.zeros(1, 3), stride)].item() == expected_index


def test_strided_kernel_index_is_the_child_offset_bit():
    """Kernel-2 stride-2: child at parent + s * (bx, by, bz) uses W[bx + 2 by + 4 bz], also below zero."""
    children = torch.tensor([[-4, -4, -4], [-2, -4, -4], [-4, -2, -2]])  # stride 2, parent (-4, -4, -4) at 4
    manager = CoordinateManager(children)
    conv = SparseConv(1, 1, kernel_size=2, stride=2).double()
    with torch.no_grad():
        conv.kernel.copy_(10.0 ** torch.arange(8, dtype=torch.float64).view(8, 1, 1))
    x = SparseTensor(torch.ones(manager.num_rows(2), 1, dtype=torch.float64), stride=2, manager=manager)
    assert conv(x).feats.item() == 1 + 10 + 10**6


def test_coordinate_levels_use_true_floor_parents():
    coords = torch.tensor([[-1, -1, -1], [0, 0, 0], [1, 0, -3], [-3, 2, 5]])
    manager = CoordinateManager(coords)
    parent_rows, bits = manager.parents(1)
    parents = manager.coords(2)[parent_rows]
    assert parents.tolist() == [[-2, -2, -2], [0, 0, 0], [0, 0, -4], [-4, 2, 4]]
    assert bits.tolist() == [7, 0, 1 + 4, 1 + 4]
    assert manager.coords(8).tolist() == [[-8, -8, -8], [-8, 0, 0], [0, 0, -8], [0, 0, 0]]
    assert torch.equal(manager.coords(1), coords), "stride 1 keeps the given row order"


def test_coarse_levels_are_sorted_and_independent_of_input_order():
    coords = random_cloud(0)
    manager = CoordinateManager(coords)
    shuffled = CoordinateManager(coords.flip(0))
    for stride in (2, 4, 8, 16):
        level = manager.coords(stride)
        assert torch.equal(level, shuffled.coords(stride))
        keys = (level[:, 0] * 4096 + level[:, 1]) * 4096 + level[:, 2]
        assert bool((keys[1:] > keys[:-1]).all())


def test_rejects_duplicates_and_unknown_coordinates(lookup):
    with pytest.raises(ValueError, match="duplicate"):
        CoordinateManager(torch.tensor([[0, 0, 0], [0, 0, 0]]))
    manager = CoordinateManager(torch.tensor([[0, 0, 0], [3, 1, 2]]))
    with pytest.raises(KeyError):
        manager.rows(torch.tensor([[1, 1, 1]]))
    with pytest.raises(KeyError):
        manager.rows(torch.tensor([[40, 0, 0]]))


def test_maps_are_cached_per_stride():
    manager = CoordinateManager(random_cloud(1))
    assert manager.kernel_map(3, 2) is manager.kernel_map(3, 2)
    assert manager.down_map(4) is manager.down_map(4)
    assert manager.kernel_map(3, 2) is not manager.kernel_map(5, 2)


@pytest.mark.parametrize("stride", [1, 2, 4, 8])
@pytest.mark.parametrize("kernel_size", [3, 5])
def test_submanifold_conv_matches_dense_conv3d(stride, kernel_size, lookup, conv_path):
    x = make_input(seed=stride + kernel_size, stride=stride, channels=4)
    conv = SparseConv(4, 5, kernel_size).double()
    out = conv(x)
    assert out.stride == stride and out.coords is x.coords
    weight = dense_conv_weight(conv.kernel, kernel_size)
    dense = F.conv3d(to_dense(x.feats, x.coords, stride), weight, padding=kernel_size // 2)
    expected = at_rows(dense, x.coords, stride)
    torch.testing.assert_close(out.feats, expected, rtol=1e-12, atol=1e-12)
    assert_grads_match(out.feats, expected, (x.feats, conv.kernel))


@pytest.mark.parametrize("stride", [1, 2, 4, 8])
def test_strided_conv_matches_dense_conv3d(stride, conv_path):
    x = make_input(seed=10 + stride, stride=stride, channels=3)
    conv = SparseConv(3, 4, kernel_size=2, stride=2).double()
    out = conv(x)
    assert out.stride == 2 * stride
    dense = F.conv3d(to_dense(x.feats, x.coords, stride), dense_conv_weight(conv.kernel, 2), stride=2)
    expected = at_rows(dense, out.coords, 2 * stride)
    torch.testing.assert_close(out.feats, expected, rtol=1e-12, atol=1e-12)
    assert_grads_match(out.feats, expected, (x.feats, conv.kernel))


@pytest.mark.parametrize("stride", [2, 4, 8, 16])
def test_transposed_conv_matches_dense_and_lands_on_existing_rows(stride, conv_path):
    x = make_input(seed=20 + stride, stride=stride, channels=3)
    conv = SparseConvTranspose(3, 4, kernel_size=2, stride=2).double()
    out = conv(x)
    assert out.stride == stride // 2 and out.coords is x.manager.coords(stride // 2)
    weight = conv.kernel.view(2, 2, 2, 3, 4).permute(3, 4, 2, 1, 0)  # [in, out, x, y, z]
    dense = F.conv_transpose3d(to_dense(x.feats, x.coords, stride), weight, stride=2)
    expected = at_rows(dense, out.coords, stride // 2)
    torch.testing.assert_close(out.feats, expected, rtol=1e-12, atol=1e-12)
    assert_grads_match(out.feats, expected, (x.feats, conv.kernel))


def test_pointwise_conv_uses_a_matrix_kernel_and_bias():
    x = make_input(seed=30, stride=2, channels=3)
    conv = SparseConv(3, 4, kernel_size=1, bias=True).double()
    assert conv.kernel.shape == (3, 4) and conv.bias.shape == (1, 4)
    torch.testing.assert_close(conv(x).feats, x.feats @ conv.kernel + conv.bias)
    assert SparseConv(3, 4, kernel_size=3, bias=True).bias.shape == (1, 4)
    assert SparseConv(3, 4, kernel_size=2, stride=2).kernel.shape == (8, 3, 4)


@pytest.mark.parametrize("stride", [1, 2, 4, 8])
def test_avg_pool_is_the_mean_of_existing_children(stride):
    x = make_input(seed=40 + stride, stride=stride, channels=3)
    pooled = avg_pool(x)
    ones = torch.ones_like(x.feats[:, :1])
    sums = F.avg_pool3d(to_dense(x.feats, x.coords, stride), 2) * 8
    counts = F.avg_pool3d(to_dense(ones, x.coords, stride), 2) * 8
    expected = at_rows(sums, pooled.coords, 2 * stride) / at_rows(counts, pooled.coords, 2 * stride)
    torch.testing.assert_close(pooled.feats, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x.manager.avg_pool(x.feats, stride), pooled.feats)


def test_repeated_pooling_is_an_average_of_averages():
    coords = torch.tensor([[0, 0, 0], [1, 0, 0], [2, 0, 0]])
    values = torch.tensor([[0.0], [2.0], [10.0]])
    manager = CoordinateManager(coords)
    assert manager.avg_pool(values, 1).tolist() == [[1.0], [10.0]]
    assert manager.avg_pool(manager.avg_pool(values, 1), 2).tolist() == [[5.5]]


def test_cat_keeps_order_and_batch_norm_is_stored_as_bn():
    x = make_input(seed=50, stride=1, channels=2)
    y = x.replace(x.feats * 2)
    assert torch.equal(cat([x, y]).feats, torch.cat([x.feats, y.feats], 1))
    norm = SparseBatchNorm(2).double().eval()
    assert set(norm.state_dict()) == {"bn.weight", "bn.bias", "bn.running_mean", "bn.running_var",
                                      "bn.num_batches_tracked"}
    torch.testing.assert_close(norm(x).feats, norm.bn(x.feats))
    with pytest.raises(ValueError):
        cat([x, avg_pool(x)])


def test_gradcheck_of_the_sparse_function(conv_path):
    x = make_input(seed=60, stride=1, channels=2, num_points=30)
    conv = SparseConv(2, 3, 3).double()
    pairs = x.manager.kernel_map(3, 1)

    assert torch.autograd.gradcheck(lambda f, w: sparse_conv(f, w, pairs), (x.feats, conv.kernel))


def test_results_do_not_depend_on_input_row_order(lookup):
    coords = random_cloud(70)
    feats = torch.randn(coords.shape[0], 4, dtype=torch.float64)
    permutation = torch.randperm(coords.shape[0], generator=torch.Generator().manual_seed(0))
    layers = [SparseConv(4, 6, 5).double(), SparseConv(6, 6, 2, stride=2).double(), SparseConv(6, 6, 3).double(),
              SparseConvTranspose(6, 6).double()]

    def run(x):
        for layer in layers:
            x = layer(x)
        return x

    out = run(SparseTensor(feats, coords))
    out_permuted = run(SparseTensor(feats[permutation], coords[permutation]))
    torch.testing.assert_close(out_permuted.feats, out.feats[permutation], rtol=1e-12, atol=1e-12)


def test_the_cheaper_convolution_is_chosen_per_map():
    """One GEMM where the products with missing neighbours cost less than a gather, product and
    scatter per offset (a thin input layer, small coarse maps); per offset for wide channels over
    sparse neighbourhoods, and where the gathered neighbourhoods would exceed the memory limit."""
    x, y = torch.meshgrid(torch.arange(48), torch.arange(48), indexing="ij")
    manager = CoordinateManager(torch.stack([x.flatten(), y.flatten(), torch.zeros(48 * 48, dtype=torch.int64)], 1))
    wide = manager.kernel_map(5, 1)
    assert wide.num_pairs < 0.25 * wide.num_out * 125, "a surface: a fifth of the neighbourhood at most"
    assert sparse._one_gemm(wide, 3, 16), "the input layer: 125 offsets of 3 channels"
    assert not sparse._one_gemm(wide, 64, 64)
    assert not sparse._one_gemm(wide, sparse._NEIGHBOURHOOD_GEMM_LIMIT // (wide.num_out * 125) + 1, 1)
    coarse = manager.kernel_map(3, 8)
    assert sparse._one_gemm(coarse, 16, 16)


def test_inference_mode_float32():
    x = make_input(seed=80, stride=1, channels=3)
    conv = SparseConv(3, 4, 3)
    with torch.inference_mode():
        out = conv(x.replace(x.feats.detach().float()))
    assert out.feats.dtype == torch.float32 and not out.feats.requires_grad


def test_unordered_pairs_and_the_widest_built_kernel_map():
    coords = torch.randint(0, 6, (120, 3), generator=torch.Generator().manual_seed(2))
    manager = CoordinateManager(torch.unique(coords, dim=0))
    assert manager.widest_kernel_map(1) is None, "nothing built yet"
    small, wide = manager.kernel_map(3, 1), manager.kernel_map(5, 1)
    manager.kernel_map(3, 2)
    assert manager.widest_kernel_map(1) == (5, wide)
    first, second = wide.unordered_pairs()
    both = set(zip(wide.in_rows.tolist(), wide.out_rows.tolist()))
    once = set(zip(first.tolist(), second.tolist()))
    assert len(once) == len(first) and both == once | {(b, a) for a, b in once}, "each pair once, the rest swapped"
    coords = manager.coords(1)
    apart = (coords[first] - coords[second]).abs().amax(1)
    assert ((apart >= 1) & (apart <= 2)).all()
    with pytest.raises(ValueError, match="stride-1"):
        manager.down_map(1).unordered_pairs()
    assert small.unordered_pairs()[0].numel() < first.numel()


def test_a_kernel_map_cut_from_a_wider_one_is_the_searched_one(lookup):
    coords = random_cloud(3)
    cut = CoordinateManager(coords)
    cut.kernel_map(5, 1)
    searched = CoordinateManager(coords).kernel_map(3, 1)
    derived = cut.kernel_map(3, 1)
    assert derived.bounds == searched.bounds and derived.identity == searched.identity
    assert torch.equal(derived.in_rows, searched.in_rows) and torch.equal(derived.out_rows, searched.out_rows)
