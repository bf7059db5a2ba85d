"""The inference API and the offline command on small synthetic scenes (random weights)."""
import dataclasses

import numpy as np
import pytest
import torch

from mask3d_ros.data.pointfile import read_point_file, write_ply
from mask3d_ros.model.backends import import_minkowski
from mask3d_ros.model.checkpoint import CheckpointError
from mask3d_ros.model.decoder import Mask3D, Mask3DConfig
from mask3d_ros.model.presets import get_preset
from mask3d_ros.model.segmenter import Segmenter, normalize_colors, to_half
from mask3d_ros.model.voxel import voxelize
from mask3d_ros.tools.segment import main as segment_main

pytestmark = pytest.mark.filterwarnings("ignore:Segmenter built with RANDOM WEIGHTS")

TINY = Mask3DConfig(num_classes=19, num_labels=20, backbone="Res16UNet14A", backbone_width=0.25, hidden_dim=32,
                    num_heads=4, dim_feedforward=64, num_queries=12)
TINY_PRESET = get_preset("scannet").replace(model=TINY, topk=20)


def scene(num_points: int = 3000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A 1 m floor with two coloured boxes on it."""
    rng = np.random.default_rng(seed)
    xyz = np.concatenate([rng.uniform((0, 0, 0), (1, 1, 0.01), (num_points // 3, 3)),
                          rng.uniform((0.2, 0.2, 0), (0.4, 0.4, 0.3), (num_points // 3, 3)),
                          rng.uniform((0.6, 0.5, 0), (0.9, 0.7, 0.2), (num_points - 2 * (num_points // 3), 3))])
    rgb = np.repeat(np.array([[200, 200, 200], [220, 30, 30], [30, 30, 220]], np.uint8), [num_points // 3] * 2
                    + [num_points - 2 * (num_points // 3)], axis=0)
    return xyz.astype(np.float32), rgb


@pytest.fixture(scope="module")
def segmenter() -> Segmenter:
    with pytest.warns(UserWarning, match="RANDOM WEIGHTS"):
        return Segmenter(TINY_PRESET, random_weights=True, device="cpu")


@pytest.mark.parametrize("mode", ["instance", "semantic", "panoptic"])
def test_every_mode_labels_every_point(segmenter, mode):
    xyz, rgb = scene()
    segmenter.mode = mode
    result = segmenter.segment(xyz, rgb)
    assert result.mode == mode
    assert result.point_instance.shape == result.point_label.shape == result.point_score.shape == (len(xyz),)
    assert result.masks.shape[0] == result.voxel_instance.shape[0] < len(xyz)
    assert set(result.timings_ms) == {"voxelize", "backbone", "decoder", "post", "total"}
    assert set(result.label_ids) <= set(TINY_PRESET.label_ids)
    segmenter.mode = "instance"


def test_instance_mode_uses_the_preset_topk_and_fixed_fps(segmenter):
    xyz, rgb = scene()
    result, raw = segmenter.segment(xyz, rgb, return_raw=True)
    assert result.num_instances == TINY_PRESET.topk
    assert raw["pred_masks"].shape == (len(raw["voxel_coords"]), TINY.num_queries)
    again, raw_again = segmenter.segment(xyz, rgb, fps_idx=torch.from_numpy(raw["fps_idx"]), return_raw=True)
    np.testing.assert_array_equal(raw["pred_logits"], raw_again["pred_logits"])


def test_bad_inputs_are_refused(segmenter):
    xyz, rgb = scene()
    with pytest.raises(ValueError, match="uint8"):
        segmenter.segment(xyz, rgb.astype(np.float32))
    with pytest.raises(ValueError, match=r"\[N, 3\]"):
        segmenter.segment(xyz[:, :2], rgb)
    with pytest.raises(ValueError, match="no checkpoint"):
        Segmenter(TINY_PRESET)
    with pytest.raises(ValueError, match="mode"):
        Segmenter(TINY_PRESET, random_weights=True, mode="stuff")


def test_half_is_ignored_off_cuda():
    with pytest.warns(UserWarning, match="only used on CUDA"):
        segmenter = Segmenter(TINY_PRESET, random_weights=True, device="cpu", half=True)
    assert segmenter.half is False


def test_half_precision_model_runs_and_keeps_positions_float32():
    # float16 runs on CPU too (slowly), which is enough to check the dtype plumbing used on CUDA
    torch.manual_seed(0)
    model = Mask3D(TINY).eval()
    xyz, rgb = scene()
    coords, unique_map, _ = voxelize(xyz, 0.02)
    features = torch.from_numpy(normalize_colors(rgb[unique_map], TINY_PRESET.color_mean, TINY_PRESET.color_std))
    inputs = torch.from_numpy(coords), features, torch.from_numpy(xyz[unique_map])
    with torch.inference_mode():
        full = model(*inputs)
        half = to_half(model)(inputs[0], inputs[1].half(), inputs[2])
    assert model.pos_enc.gauss_B.dtype == torch.float32 and model.class_embed_head.weight.dtype == torch.float16
    torch.testing.assert_close(half["pred_logits"].float(), full["pred_logits"], atol=2e-2, rtol=0)
    torch.testing.assert_close(half["fps_idx"], full["fps_idx"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("half", [False, True])
def test_cuda_matches_cpu(half):
    xyz, rgb = scene()
    cpu = Segmenter(TINY_PRESET, random_weights=True, device="cpu")
    cuda = Segmenter(TINY_PRESET, random_weights=True, device="cuda", half=half)
    _, raw_cpu = cpu.segment(xyz, rgb, return_raw=True)
    result, raw_cuda = cuda.segment(xyz, rgb, return_raw=True)
    np.testing.assert_array_equal(raw_cpu["fps_idx"], raw_cuda["fps_idx"])
    np.testing.assert_allclose(raw_cuda["pred_logits"], raw_cpu["pred_logits"], atol=2e-2 if half else 1e-3)
    assert result.point_instance.shape == (len(xyz),)
    cuda.release()


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")
def test_minkowski_backend_gives_the_torch_backends_result():
    """``backend="minkowski"`` (the node's ``model.backend``) runs the same weights through
    MinkowskiEngine's backbone; the decoder and the result must not notice."""
    try:
        import_minkowski()
    except ImportError as error:
        pytest.skip(f"MinkowskiEngine is not importable: {error}")
    xyz, rgb = scene()
    torch_segmenter = Segmenter(TINY_PRESET, random_weights=True, device="cpu")
    torch_result, torch_raw = torch_segmenter.segment(xyz, rgb, return_raw=True)
    me = Segmenter(TINY_PRESET, random_weights=True, device="cpu", backend="minkowski")
    result, raw = me.segment(xyz, rgb, return_raw=True)
    np.testing.assert_array_equal(raw["fps_idx"], torch_raw["fps_idx"])
    np.testing.assert_allclose(raw["pred_logits"], torch_raw["pred_logits"], atol=1e-4)
    np.testing.assert_array_equal(result.point_instance, torch_result.point_instance)


def test_release_frees_the_model():
    segmenter = Segmenter(TINY_PRESET, random_weights=True, device="cpu")
    segmenter.release()
    with pytest.raises(RuntimeError, match="released"):
        segmenter.segment(*scene())


def trained_checkpoint(path, config=TINY, description=True):
    """A checkpoint in the layout of the project's trainer (self-describing)."""
    torch.manual_seed(1)
    entries = {f"model.{k}": v for k, v in Mask3D(config).state_dict().items()}
    payload = {"state_dict": entries}
    if description:
        payload["hyper_parameters"] = {"mask3d_ros": {
            "model": dataclasses.asdict(config), "class_names": [f"c{i}" for i in range(config.num_classes - 1)],
            "voxel_size": 0.02, "color_mean": [0.5] * 3, "color_std": [0.25] * 3}}
    torch.save(payload, path)
    return path


def test_a_self_describing_checkpoint_needs_no_preset(tmp_path):
    segmenter = Segmenter(checkpoint=trained_checkpoint(tmp_path / "t.ckpt"), device="cpu")
    assert segmenter.preset.class_names[0] == "c0" and segmenter.preset.model == TINY
    assert segmenter.random_weights is False
    segmenter.segment(*scene())
    with pytest.raises(ValueError, match="name a preset"):
        Segmenter(checkpoint=trained_checkpoint(tmp_path / "bare.ckpt", description=False))


def test_a_preset_that_does_not_fit_the_checkpoint_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="preset 'scannet200'"):
        Segmenter("scannet200", trained_checkpoint(tmp_path / "t.ckpt"))


def test_cli_writes_ply_png_and_raw(tmp_path, capsys):
    xyz, rgb = scene(2000)
    records = np.zeros(len(xyz), [("x", "<f4"), ("y", "<f4"), ("z", "<f4"),
                                  ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    for i, axis in enumerate("xyz"):
        records[axis] = xyz[:, i]
    records["x"][:5] = np.nan                                   # invalid points stay, unlabelled
    records["red"], records["green"], records["blue"] = rgb.T
    write_ply(tmp_path / "scene.ply", records)
    ckpt = trained_checkpoint(tmp_path / "t.ckpt")
    code = segment_main([str(tmp_path / "scene.ply"), "--checkpoint", str(ckpt), "--out", str(tmp_path / "out.ply"),
                         "--png", str(tmp_path / "out.png"), "--queries", "6", "--dump-raw", str(tmp_path / "raw.npz"),
                         "--device", "cpu"])
    assert code == 0
    out = read_point_file(tmp_path / "out.ply").points
    assert {"label", "instance", "score", "red"} <= set(out.dtype.names) and len(out) == len(xyz)
    assert (out["label"][:5] == -1).all() and (out["instance"][:5] == -1).all()
    assert (tmp_path / "out.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with np.load(tmp_path / "raw.npz") as raw:
        assert raw["pred_masks"].shape[1] == 6 == len(raw["fps_idx"])
        assert len(raw["point_index"]) == len(xyz) - 5 and raw["voxel_coords"].shape[1] == 3
    assert "[4/4]" in capsys.readouterr().err


def test_cli_reports_errors_without_a_traceback(tmp_path, capsys):
    code = segment_main([str(tmp_path / "absent.ply"), "--preset", "scannet", "--random-weights",
                         "--out", str(tmp_path / "o.ply")])
    assert code == 2 and "error" in capsys.readouterr().err
