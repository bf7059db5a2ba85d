"""The one place where the node meets the model: building a Segmenter from the parameters and
turning its result into :class:`~mask3d_ros.model.results.PointSegmentation`.

The node core only needs an object with ``segment(xyz, rgb) -> PointSegmentation``,
``release()``, ``class_names`` and ``device`` (:class:`ModelRunner`); tests pass any such object.
No rclpy here.
"""
from __future__ import annotations

import threading
import warnings
from typing import Any, Callable, Mapping

import numpy as np

from mask3d_ros.model.backends import import_minkowski
from mask3d_ros.model.decoder import Mask3DConfig
from mask3d_ros.model.files import ModelError, resolve_checkpoint
from mask3d_ros.model.presets import SCANNET_COLOR_MEAN, SCANNET_COLOR_STD, Preset
from mask3d_ros.model.results import PointSegmentation, to_point_segmentation
from mask3d_ros.model.segmenter import Segmenter, resolve_device

# The architecture run with random weights when model.checkpoint is empty (plumbing tests only).
RANDOM_TABLETOP = {
    "class_names": ("table", "object"),
    "voxel_size": 0.01,
    "num_queries": 20,
    "topk": 20,
    "backbone": "Res16UNet14A",
    "backbone_width": 0.25,
}


def checked_device(device: str) -> str:
    """The torch device string for ``model.device``, or ModelError if it cannot be used."""
    try:
        return str(resolve_device(device))
    except ValueError as error:
        raise ModelError(f"model.{error}; use model.device:=cpu or auto") from error


def _random_tabletop_preset():
    spec = RANDOM_TABLETOP
    names = tuple(spec["class_names"])
    return Preset(
        name="tabletop-random",
        model=Mask3DConfig(num_classes=len(names) + 1, num_labels=len(names), backbone=spec["backbone"],
                           backbone_width=spec["backbone_width"], num_queries=spec["num_queries"]),
        class_names=names, label_ids=tuple(range(len(names))), voxel_size=spec["voxel_size"],
        color_mean=SCANNET_COLOR_MEAN, color_std=SCANNET_COLOR_STD, topk=spec["topk"], dbscan_eps=None)


def segmenter_factory(config: Mapping[str, Any]) -> tuple[Callable[[], Any], str]:
    """(a function building a fresh Segmenter, the device) from validated parameters.

    Everything that can be checked without building the model is checked here (checkpoint file,
    device, backend), so the node fails at start with a clear message.
    """
    device = checked_device(config["model.device"])
    preset_name = config["model.preset"]
    checkpoint = resolve_checkpoint(config["model.checkpoint"]) if config["model.checkpoint"] else None
    if checkpoint is None:
        preset = _random_tabletop_preset() if preset_name == "tabletop" else preset_name
    else:
        preset = None if preset_name == "tabletop" else preset_name  # tabletop: the checkpoint describes itself
    kwargs = {"device": device, "half": bool(config["model.half_precision"]), "mode": config["model.inference_mode"],
              "random_weights": checkpoint is None}
    for name in ("dbscan_eps", "smooth_radius"):       # -1 keeps what the checkpoint or preset says
        if config[f"model.{name}"] >= 0:
            kwargs[name] = float(config[f"model.{name}"])
    if config["model.backend"] == "minkowski":
        try:
            import_minkowski()
        except ImportError as error:
            raise ModelError(f"model.backend is minkowski: {error}") from error
    kwargs["backend"] = "minkowski" if config["model.backend"] == "minkowski" else "torch"  # auto: torch

    def build():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the node reports random weights itself
                return Segmenter(preset, None if checkpoint is None else str(checkpoint), **kwargs)
        except ModelError:
            raise
        except Exception as error:  # CheckpointError, ValueError from presets, ImportError of a backend
            hint = ""
            if preset is None and "name a preset" in str(error):
                hint = (" (model.preset tabletop expects a checkpoint written by mask3d-ros-train, which describes"
                        " its classes; for an official Mask3D checkpoint set model.preset to scannet, scannet200,"
                        " s3dis or stpls3d)")
            source = f"checkpoint {checkpoint}" if checkpoint else "random weights"
            raise ModelError(f"cannot build the model (preset {preset_name!r}, {source}, device {device}):"
                             f" {type(error).__name__}: {error}{hint}") from error

    return build, device


class ModelRunner:
    """Owns the Segmenter: builds it (again after :meth:`release`) and converts its results.

    Call :meth:`segment` and :meth:`release` from one thread (the inference worker).
    """

    def __init__(self, build: Callable[[], Any], device: str, random_weights: bool = False):
        self._build = build
        self.device = device
        self.random_weights = random_weights
        self._segmenter = None
        self._lock = threading.Lock()
        self.class_names: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "ModelRunner":
        build, device = segmenter_factory(config)
        runner = cls(build, device, random_weights=not config["model.checkpoint"])
        runner.load()
        return runner

    @property
    def loaded(self) -> bool:
        return self._segmenter is not None

    def load(self) -> None:
        with self._lock:
            if self._segmenter is None:
                self._segmenter = self._build()
                self.class_names = tuple(self._segmenter.preset.class_names)

    def segment(self, xyz: np.ndarray, rgb: np.ndarray) -> PointSegmentation:
        self.load()
        return to_point_segmentation(self._segmenter.segment(xyz, rgb), self.class_names)

    def release(self) -> None:
        with self._lock:
            if self._segmenter is not None:
                self._segmenter.release()
                self._segmenter = None
