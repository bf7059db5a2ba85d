"""The inference API: a coloured point cloud in, labelled instances per point out.

``Segmenter`` owns one Mask3D model on one device and runs the whole official eval path on a
cloud: colour normalisation, voxelisation (first point per voxel), backbone, decoder,
post-processing, and the mapping back to points. The ROS node, the CLI and the evaluation all go
through it, so they cannot drift apart. Nothing here knows about ROS.
"""
from __future__ import annotations

import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from mask3d_ros.model import postprocess
from mask3d_ros.model.checkpoint import Checkpoint, check_config, load_weights, read_checkpoint
from mask3d_ros.model.decoder import Mask3D
from mask3d_ros.model.neighbours import VoxelPairs
from mask3d_ros.model.presets import Preset, get_preset, preset_from_description
from mask3d_ros.model.results import VoxelSegmentation
from mask3d_ros.model.sparse import CoordinateManager
from mask3d_ros.model.voxel import voxel_mean, voxelize

MODES = ("instance", "semantic", "panoptic")


def normalize_colors(rgb: np.ndarray, mean, std) -> np.ndarray:
    """uint8 RGB to the backbone input, exactly as albumentations' ``Normalize`` (max 255) in float32."""
    mean255 = np.asarray(mean, dtype=np.float32) * np.float32(255)
    inverse_std255 = np.reciprocal(np.asarray(std, dtype=np.float32) * np.float32(255), dtype=np.float32)
    return (np.asarray(rgb).astype(np.float32) - mean255) * inverse_std255


def to_half(model: Mask3D) -> Mask3D:
    """float16 weights, except the positional-encoding matrix: positions keep float32, as under the
    official autocast."""
    gauss_b = model.pos_enc.gauss_B.clone()
    model.half()
    model.pos_enc.gauss_B = gauss_b
    return model


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` (CUDA when present, else CPU) or a device torch can use here; a ValueError that
    says why otherwise, so a node or a training run fails at start, not at the first tensor."""
    name = str(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, not {name!r}") from error
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r}: CUDA is not available to torch {torch.__version__}"
                             " (CPU-only build or no GPU); use cpu or auto")
        if (resolved.index or 0) >= torch.cuda.device_count():
            raise ValueError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) present")
    elif resolved.type != "cpu":
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, not {name!r}")
    return resolved


def _resolve_preset(preset: str | Preset | None, checkpoint: Checkpoint | None) -> Preset:
    """The preset to run: the given one (checked against the weights) or the checkpoint's own."""
    if isinstance(preset, str):
        preset = get_preset(preset)
    if preset is None:
        if checkpoint is None or checkpoint.description is None:
            raise ValueError("name a preset (scannet, scannet200, s3dis, stpls3d): the checkpoint does not "
                             "describe its own labels and colour statistics")
        preset = preset_from_description(checkpoint.description, Path(checkpoint.path).stem)
    if checkpoint is not None:
        check_config(checkpoint.state_dict, preset.model, f"preset {preset.name!r}")
    return preset


def _voxel_pairs(manager: CoordinateManager, coords: Tensor, voxel_size: float) -> VoxelPairs | None:
    """The neighbouring voxels the backbone's widest stride-1 convolution already found (None: none)."""
    widest = manager.widest_kernel_map(1)
    if widest is None:
        return None
    kernel_size, pairs = widest
    return VoxelPairs(*pairs.unordered_pairs(), coords, voxel_size, kernel_size // 2)


class Segmenter:
    """One model on one device. ``segment(xyz, rgb)`` returns a :class:`VoxelSegmentation`.

    ``preset`` gives labels, colour statistics, voxel size and the official evaluation settings;
    ``num_queries``, ``topk``, ``dbscan_eps`` (0 disables DBSCAN), ``smooth_radius`` (0 disables mask
    smoothing) and ``voxel_size`` override it.
    ``score_threshold`` applies to the instance score (instance mode) or to the query's class
    probability (panoptic); ``min_points`` drops smaller instances.
    ``checkpoint=None`` needs ``random_weights=True`` (tests only: the output is meaningless).
    ``half`` runs the network in float16 on CUDA; PE and post-processing stay float32.
    """

    def __init__(self, preset: str | Preset | None = None, checkpoint: str | Path | None = None, *,
                 device: str | torch.device = "auto", half: bool = False, mode: str = "instance",
                 num_queries: int | None = None, topk: int | None = None, dbscan_eps: float | None = None,
                 smooth_radius: float | None = None, voxel_size: float | None = None,
                 score_threshold: float = 0.0, min_points: int = 0,
                 random_weights: bool = False, seed: int = 0, backend: str = "torch"):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        ckpt = None if checkpoint is None else read_checkpoint(checkpoint)
        if ckpt is None and not random_weights:
            raise ValueError("no checkpoint given; pass random_weights=True to run untrained weights (tests only)")
        preset = _resolve_preset(preset, ckpt)
        if num_queries is not None:
            preset = preset.with_model(num_queries=num_queries)
        changes = {k: v for k, v in (("topk", topk), ("dbscan_eps", dbscan_eps), ("smooth_radius", smooth_radius),
                                     ("voxel_size", voxel_size)) if v is not None}
        self.preset = preset.replace(**changes)
        self.mode = mode
        self.score_threshold = score_threshold
        self.min_points = min_points
        self.device = resolve_device(device)
        if half and self.device.type != "cuda":
            warnings.warn("half precision is only used on CUDA; running float32", stacklevel=2)
            half = False
        self.half = half
        if not self.preset.color_stats_known:
            warnings.warn(f"preset {self.preset.name!r}: the official colour statistics are unpublished; "
                          "using ScanNet's as a placeholder", stacklevel=2)

        with torch.random.fork_rng(devices=[]):      # seeded initialisation without touching the caller's RNG
            torch.manual_seed(seed)
            model = Mask3D(self.preset.model, backend=backend)  # ImportError if minkowski is absent
        if ckpt is None:
            warnings.warn("Segmenter built with RANDOM WEIGHTS: its output means nothing", stacklevel=2)
        else:
            load_weights(model, ckpt.state_dict)
        self.random_weights = ckpt is None
        model = model.eval().to(self.device)
        self.model = to_half(model) if half else model

    # ---------------------------------------------------------------------------------------

    @contextmanager
    def _timed(self, timings: dict, stage: str):
        start = time.perf_counter()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        timings[stage] = (time.perf_counter() - start) * 1e3

    def segment(self, xyz: np.ndarray, rgb: np.ndarray, *, fps_idx=None, return_raw: bool = False):
        """Segment ``xyz`` float32 ``[N, 3]`` (metres, finite) coloured ``rgb`` uint8 ``[N, 3]``.

        Returns the :class:`VoxelSegmentation` (per point via its ``inverse_map``; ``timings_ms`` holds
        voxelize/backbone/decoder/post/total), or ``(segmentation, raw)`` with ``return_raw`` where
        raw holds the voxel coords in model order, fps indices and the final logits/masks.
        """
        if self.model is None:
            raise RuntimeError("this Segmenter was released")
        xyz = np.ascontiguousarray(xyz, dtype=np.float32)
        rgb = np.asarray(rgb)
        if xyz.ndim != 2 or xyz.shape[1] != 3 or rgb.shape != xyz.shape:
            raise ValueError(f"need xyz [N, 3] and rgb [N, 3], got {xyz.shape} and {rgb.shape}")
        if rgb.dtype != np.uint8:
            raise ValueError(f"rgb must be uint8, got {rgb.dtype}")
        timings: dict[str, float] = {}
        begin = time.perf_counter()
        dtype = torch.float16 if self.half else torch.float32
        with self._timed(timings, "voxelize"):
            coords, unique_map, inverse_map = voxelize(xyz, self.preset.voxel_size)
            voxel_xyz = np.take(xyz, unique_map, axis=0)      # take: several times faster than indexing rows
            features = normalize_colors(np.take(rgb, unique_map, axis=0), self.preset.color_mean, self.preset.color_std)
            coords_t = torch.from_numpy(coords).to(self.device)
            features_t = torch.from_numpy(features).to(self.device, dtype)
            voxel_xyz_t = torch.from_numpy(voxel_xyz).to(self.device)
        with torch.inference_mode():
            with self._timed(timings, "backbone"):
                levels = self.model.backbone_levels(coords_t, features_t)
            with self._timed(timings, "decoder"):
                out = self.model.decode([level.feats for level in levels], levels[-1].manager.avg_pool,
                                        coords_t, voxel_xyz_t, fps_idx=fps_idx, aux_masks=False)
            with self._timed(timings, "post"):
                neighbours = _voxel_pairs(levels[-1].manager, coords_t, self.preset.voxel_size)
                result = self._postprocess(out, voxel_xyz, rgb, inverse_map, neighbours)
        timings["total"] = (time.perf_counter() - begin) * 1e3
        result.timings_ms = timings
        if not return_raw:
            return result
        raw = {"voxel_coords": coords, "unique_map": unique_map, "inverse_map": inverse_map,
               "fps_idx": out["fps_idx"].cpu().numpy(),
               "pred_logits": out["pred_logits"].float().cpu().numpy(),
               "pred_masks": out["pred_masks"].float().cpu().numpy()}
        return result, raw

    def _postprocess(self, out: dict, voxel_xyz: np.ndarray, rgb: np.ndarray, inverse_map: np.ndarray,
                     voxel_pairs: VoxelPairs | None = None) -> VoxelSegmentation:
        preset = self.preset
        logits, masks = out["pred_logits"].float(), out["pred_masks"].float()
        voxel_xyz = torch.from_numpy(voxel_xyz).to(masks.device)     # neighbour searches run on the model's device
        smoothing = None
        if preset.smooth_radius:    # on each voxel's mean colour: steadier than its one representative point's
            voxel_rgb = voxel_mean(rgb, inverse_map, len(voxel_xyz))
            smoothing = postprocess.smoothing_graph(voxel_xyz, voxel_rgb, preset.smooth_radius,
                                                    preset.smooth_color_sigma, masks.device, voxel_pairs)
        common = {"class_to_label": preset.class_to_label, "inverse_map": inverse_map}
        if self.mode != "instance" and smoothing is not None:     # instance smooths only the masks it splits
            masks = smoothing @ masks
        if self.mode == "semantic":
            return postprocess.semantic_inference(logits, masks, **common)
        if self.mode == "panoptic":
            return postprocess.panoptic_inference(logits, masks, score_threshold=self.score_threshold,
                                                  min_size=self.min_points, **common)
        return postprocess.instance_inference(
            logits, masks, topk=preset.topk, dbscan_eps=preset.dbscan_eps or None, voxel_xyz=voxel_xyz,
            score_threshold=self.score_threshold, min_size=self.min_points, exclude_classes=preset.exclude_classes,
            duplicate_iou=preset.duplicate_iou, smoothing=smoothing, **common)

    def release(self) -> None:
        """Drop the model and return its GPU memory; the Segmenter cannot be used afterwards."""
        self.model = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
