"""Mask3D decoder pieces: CUDA-exact FPS, positional encoding, masked attention, model layout."""
import dataclasses

import numpy as np
import pytest
import torch
from conftest import require_shared
from hypothesis import given, settings
from hypothesis import strategies as st

from mask3d_ros.model import neighbours
from mask3d_ros.model.decoder import CrossAttentionLayer, DegenerateSceneError, Mask3D, Mask3DConfig
from mask3d_ros.model.fps import furthest_point_sample
from mask3d_ros.model.position_encoding import FourierPositionEncoding

TINY = Mask3DConfig(num_classes=5, num_labels=4, backbone="Res16UNet14A", backbone_width=0.25, hidden_dim=32,
                    num_heads=4, dim_feedforward=64, num_queries=8)


def kernel_fps(coords: np.ndarray, num_samples: int) -> list[int]:
    """Literal simulation of pointnet2's CUDA ``furthest_point_sampling_kernel`` on integer coordinates:
    T threads each keep the first strict maximum of their strided points, then the shared-memory tree
    reduction takes a partner's candidate only if strictly larger."""
    points = [tuple(int(v) for v in row) for row in coords]
    n = len(points)
    threads = 1
    while threads * 2 <= min(n, 512):
        threads *= 2
    temp = [1e10] * n
    old, picked = 0, [0]
    for _ in range(1, num_samples):
        best, best_index = [-1.0] * threads, [0] * threads
        for t in range(threads):
            for k in range(t, n, threads):
                x, y, z = points[k]
                if x * x + y * y + z * z <= 1e-3:
                    continue
                ox, oy, oz = points[old]
                d = min((x - ox) ** 2 + (y - oy) ** 2 + (z - oz) ** 2, temp[k])
                temp[k] = d
                if d > best[t]:
                    best[t], best_index[t] = d, k
        half = threads // 2
        while half >= 1:
            for t in range(half):
                if best[t + half] > best[t]:
                    best[t], best_index[t] = best[t + half], best_index[t + half]
            half //= 2
        old = best_index[0]
        picked.append(old)
    return picked


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 700), span=st.integers(1, 4), num_samples=st.integers(1, 12), seed=st.integers(0, 2 ** 16))
def test_fps_matches_the_cuda_kernel_including_ties(n, span, num_samples, seed):
    # tiny coordinate ranges make ties (and origin points) common
    coords = np.random.default_rng(seed).integers(-span, span + 1, size=(n, 3))
    expected = kernel_fps(coords, num_samples)
    assert furthest_point_sample(torch.from_numpy(coords), num_samples).tolist() == expected
    with pytest.MonkeyPatch.context() as patch:      # the torch loop a GPU runs
        patch.setattr(neighbours, "HOST_LIBRARIES", False)
        assert furthest_point_sample(torch.from_numpy(coords), num_samples).tolist() == expected


def test_fps_block_reduction_is_not_lowest_index():
    # 1024 identical points tie at step 1; with T = 512 threads the reduction favours thread 0,
    # whose first point is row 512 (rows 1..511 sit on threads 1..511)
    coords = np.zeros((1025, 3), np.int64)
    coords[0] = (1, 1, 1)
    coords[1:] = (10, 0, 0)
    got = furthest_point_sample(torch.from_numpy(coords), 2).tolist()
    assert got == kernel_fps(coords, 2) == [0, 512]
    assert furthest_point_sample(torch.from_numpy(coords), 2, rule="lowest").tolist() == [0, 1]


def test_fps_fixture_indices_and_lowest_index_variant(parity_dir):
    inputs, decoder = np.load(parity_dir / "input.npz"), np.load(parity_dir / "decoder.npz")
    coords = torch.from_numpy(inputs["voxel_coords"])
    np.testing.assert_array_equal(furthest_point_sample(coords, 100).numpy(), decoder["fps_idx"])
    np.testing.assert_array_equal(furthest_point_sample(coords, 100, rule="lowest").numpy(),
                                  decoder["fps_idx_lowest_index_rule"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fps_on_cuda_matches_cpu():
    coords = torch.from_numpy(np.random.default_rng(0).integers(-3, 4, size=(5000, 3)))
    np.testing.assert_array_equal(furthest_point_sample(coords.cuda(), 64).cpu().numpy(),
                                  furthest_point_sample(coords, 64).numpy())


def test_fps_origin_is_only_ever_the_seed():
    coords = torch.tensor([[0, 0, 0], [1, 0, 0], [5, 0, 0], [0, 0, 0], [0, 3, 0]])
    assert furthest_point_sample(coords, 3).tolist() == [0, 2, 4]
    # once only origin rows are left, every further pick falls back to row 0, as in the kernel
    assert furthest_point_sample(torch.tensor([[0, 0, 0], [0, 0, 0]]), 3).tolist() == [0, 0, 0]


def test_fps_rejects_bad_input():
    with pytest.raises(ValueError):
        furthest_point_sample(torch.zeros(0, 3), 2)
    with pytest.raises(ValueError):
        furthest_point_sample(torch.zeros(4, 2), 2)
    with pytest.raises(ValueError):
        furthest_point_sample(torch.zeros(4, 3), 2, rule="random")


def test_position_encoding_layout_and_zero_extent_guard():
    pe = FourierPositionEncoding(8)
    xyz = torch.tensor([[0.0, 1.0, 2.0], [1.0, 1.0, 4.0]])
    lo, hi = xyz.min(0).values, xyz.max(0).values          # y has zero extent
    out = pe(xyz, lo, hi)
    assert out.shape == (2, 8) and torch.isfinite(out).all()
    unit = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 1.0]])
    projected = (unit * 2 * torch.pi) @ pe.gauss_B
    torch.testing.assert_close(out, torch.cat([projected.sin(), projected.cos()], 1))
    assert "gauss_B" in dict(pe.named_buffers())


def tiny_cloud(num_voxels: int = 300, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Unique voxel coordinates spanning several stride-16 cells, colour features and xyz."""
    generator = torch.Generator().manual_seed(seed)
    coords = torch.unique(torch.randint(-40, 40, (num_voxels, 3), generator=generator), dim=0)
    coords = coords[torch.randperm(len(coords), generator=generator)].to(torch.int32)
    features = torch.randn(len(coords), 3, generator=generator)
    xyz = coords.float() * 0.02 + 0.01 * torch.rand(len(coords), 3, generator=generator)
    return coords, features, xyz


@pytest.fixture(scope="module")
def tiny_model() -> Mask3D:
    torch.manual_seed(0)
    return Mask3D(TINY).eval()


def test_output_structure(tiny_model):
    coords, features, xyz = tiny_cloud()
    with torch.inference_mode():
        out = tiny_model(coords, features, xyz, debug=True)
    q, n = TINY.num_queries, len(coords)
    assert out["pred_logits"].shape == (q, TINY.num_classes)
    assert out["pred_masks"].shape == (n, q)
    assert len(out["aux_outputs"]) == TINY.num_decoders * len(TINY.hlevels) == 12
    assert all(a["pred_masks"].shape == (n, q) for a in out["aux_outputs"])
    torch.testing.assert_close(out["sampled_coords"], xyz[out["fps_idx"]])
    assert out["fps_idx"][0] == 0
    # the first prediction comes from all-zero queries: every query predicts the same
    first = out["aux_outputs"][0]["pred_masks"]
    torch.testing.assert_close(first, first[:, :1].expand_as(first))
    assert [a.shape[0] for a in out["attn_logits"][:4]] == [len(level.feats) for level in out["backbone_features"][:4]]


def test_fewer_voxels_than_queries_clamps(tiny_model):
    coords, features, xyz = tiny_cloud(300)
    model = Mask3D(dataclasses.replace(TINY, num_queries=10_000)).eval()
    model.load_state_dict(tiny_model.state_dict())
    with torch.inference_mode():
        out = model(coords, features, xyz)
    assert out["pred_masks"].shape == (len(coords), len(coords))
    assert sorted(out["fps_idx"].tolist()) == list(range(len(coords)))


def test_single_voxel_level_raises(tiny_model):
    coords = torch.tensor([[0, 0, 0], [1, 0, 0], [2, 3, 1]], dtype=torch.int32)    # one stride-16 cell
    with pytest.raises(DegenerateSceneError, match="single voxel"):
        tiny_model(coords, torch.zeros(3, 3), coords.float() * 0.02)
    with pytest.raises(DegenerateSceneError):
        tiny_model(torch.zeros(0, 3, dtype=torch.int32), torch.zeros(0, 3), torch.zeros(0, 3))


def test_fully_blocked_queries_attend_everywhere(tiny_model):
    coords, features, xyz = tiny_cloud()
    with torch.inference_mode():
        levels = tiny_model.backbone_levels(coords, features)
        feats, pool = [level.feats for level in levels], levels[-1].manager.avg_pool
        steps = [(len(feats[lvl]), TINY.num_queries) for _ in range(3) for lvl in TINY.hlevels]
        blocked = tiny_model.decode(feats, pool, coords, xyz, attn_logits=[-torch.ones(s) for s in steps])
        open_ = tiny_model.decode(feats, pool, coords, xyz, attn_logits=[torch.ones(s) for s in steps])
    torch.testing.assert_close(blocked["pred_masks"], open_["pred_masks"], rtol=0, atol=0)


def test_blocked_keys_do_not_reach_the_query():
    torch.manual_seed(0)
    layer = CrossAttentionLayer(16, 4, 0.0).eval()
    queries, memory, pos = torch.randn(3, 1, 16), torch.randn(10, 1, 16), torch.randn(10, 1, 16)
    blocked = torch.zeros(3, 10, dtype=torch.bool)
    blocked[:, 5:] = True
    changed = memory.clone()
    changed[5:] += 100.0
    a = layer(queries, layer.project_memory(memory, pos), blocked, torch.zeros_like(queries))
    b = layer(queries, layer.project_memory(changed, pos), blocked, torch.zeros_like(queries))
    torch.testing.assert_close(a, b)


def test_cross_attention_is_multihead_attention_op_for_op():
    """Projecting the memory once gives nn.MultiheadAttention's result bit for bit."""
    torch.manual_seed(1)
    layer = CrossAttentionLayer(32, 8, 0.0).eval()
    queries, query_pos = torch.randn(6, 1, 32), torch.randn(6, 1, 32)
    memory, key_pos = torch.randn(50, 1, 32), torch.randn(50, 1, 32)
    blocked = torch.rand(6, 50) < 0.5
    attended = layer.multihead_attn(queries + query_pos, memory + key_pos, memory, attn_mask=blocked,
                                    need_weights=False)[0]
    expected = layer.norm(queries + attended)
    assert torch.equal(layer(queries, layer.project_memory(memory, key_pos), blocked, query_pos), expected)


def test_one_segment_per_voxel_equals_voxel_masks(tiny_model):
    coords, features, xyz = tiny_cloud()
    with torch.inference_mode():
        plain = tiny_model(coords, features, xyz)
        segmented = tiny_model(coords, features, xyz, point2segment=torch.arange(len(coords)))
    torch.testing.assert_close(plain["pred_masks"], segmented["pred_masks"])
    torch.testing.assert_close(segmented["pred_segment_masks"], segmented["pred_masks"])


def test_segment_masks_are_constant_per_segment(tiny_model):
    coords, features, xyz = tiny_cloud()
    segments = torch.arange(len(coords)) % 7
    with torch.inference_mode():
        out = tiny_model(coords, features, xyz, point2segment=segments)
    assert out["pred_segment_masks"].shape == (7, TINY.num_queries)
    torch.testing.assert_close(out["pred_masks"], out["pred_segment_masks"][segments])


def test_training_backward_reaches_every_decoder_parameter():
    torch.manual_seed(0)
    model = Mask3D(TINY).train()
    coords, features, xyz = tiny_cloud()
    out = model(coords, features, xyz)
    loss = out["pred_logits"].sum() + out["pred_masks"].sum() + sum(a["pred_masks"].sum() for a in out["aux_outputs"])
    loss.backward()
    missing = [k for k, p in model.named_parameters() if p.grad is None and not k.startswith("backbone.final")]
    assert missing == []


@pytest.mark.parametrize("key_list, num_classes, num_labels", [
    ("mask3d_state_dict_scannet200.txt", 201, 200), ("mask3d_state_dict_scannet20.txt", 19, 20)])
def test_state_dict_matches_the_official_key_list(key_list, num_classes, num_labels):
    official = []
    for line in require_shared("notes", key_list).read_text().splitlines():
        if line.startswith("model."):
            name, shape = line.split(" ", 1)
            official.append((name[len("model."):], tuple(int(d) for d in shape.strip("[]").split(",") if d.strip())))
    with torch.device("meta"):
        model = Mask3D(Mask3DConfig(num_classes=num_classes, num_labels=num_labels))
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == official


def test_unshared_decoder_has_one_layer_set_per_pass():
    with torch.device("meta"):
        model = Mask3D(dataclasses.replace(TINY, shared_decoder=False))
    assert len(model.cross_attention) == TINY.num_decoders
    assert "cross_attention.2.3.norm.weight" in model.state_dict()
