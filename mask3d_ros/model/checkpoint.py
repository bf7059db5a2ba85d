"""Reading Mask3D weights strictly: official Lightning ``.ckpt`` files and plain state dicts.

The official loader keeps random weights for any key whose shape does not match, so a ScanNet200
checkpoint "loads" into a ScanNet model with a random class head. Here every missing, unexpected
or wrong-shaped key is an error (:class:`CheckpointError`, listing all of them), and the
architecture is read off the tensor shapes so a preset that disagrees is reported by name.

Official checkpoints pickle their Hydra config (omegaconf objects) under ``hyper_parameters``,
which ``torch.load(weights_only=True)`` refuses. Only in that case is the file re-read with
``weights_only=False`` (which can run code from the file), with a warning.
"""
from __future__ import annotations

import dataclasses
import pickle
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from mask3d_ros.model import backbone as backbone_module
from mask3d_ros.model.decoder import BACKBONES, Mask3DConfig

MODEL_PREFIX = "model."
SHOWN_PER_KIND = 20


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read, or whose weights do not fit the model exactly."""

    def __init__(self, message: str, missing=(), unexpected=(), mismatched=()):
        super().__init__(message)
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        self.mismatched = list(mismatched)      # (key, checkpoint shape, model shape)


@dataclass
class Checkpoint:
    """Model weights (``model.`` stripped, no criterion) and whatever description came with them."""

    state_dict: dict[str, Tensor]
    hyper_parameters: dict = field(default_factory=dict)
    path: str = ""

    @property
    def description(self) -> dict | None:
        """The plain-value model description this project's trainer stores, if any."""
        hp = self.hyper_parameters
        return hp.get("mask3d_ros") if isinstance(hp, dict) else None


def _torch_load(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "omegaconf" not in str(err):
            raise CheckpointError(f"cannot read checkpoint {path} with the safe loader "
                                  f"(torch.load weights_only=True): {err}") from err
    try:
        import omegaconf  # noqa: F401, PLC0415 - optional: only official checkpoints need it; the unpickler imports it by name
    except ImportError as err:
        raise CheckpointError(
            f"{path} stores its training config as omegaconf objects; reading it needs omegaconf: "
            "pip install omegaconf") from err
    warnings.warn(f"{path}: hyper_parameters hold omegaconf objects, so the file is read with "
                  "torch.load(weights_only=False), which can run code: load only checkpoints you trust",
                  stacklevel=3)
    return torch.load(path, map_location="cpu", weights_only=False)


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Read a Lightning checkpoint (``state_dict`` with ``model.`` keys) or a plain state dict."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        raw = _torch_load(path)
    except CheckpointError:
        raise
    except Exception as err:       # a truncated or foreign file: say which and why
        raise CheckpointError(f"cannot read checkpoint {path}: {err}") from err
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: expected a dict, got {type(raw).__name__}")
    hyper_parameters = raw.get("hyper_parameters") or {}
    state = raw["state_dict"] if isinstance(raw.get("state_dict"), dict) else raw
    if not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()):
        raise CheckpointError(f"{path}: no state dict of tensors found (keys: {sorted(map(str, raw))[:10]})")
    return Checkpoint(model_state(state), dict(hyper_parameters) if isinstance(hyper_parameters, dict) else {},
                      str(path))


def model_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Strip Lightning's ``model.`` prefix and drop the loss module's ``criterion.*`` buffers."""
    state = {k: v for k, v in state.items() if not k.startswith("criterion.")}
    if any(k.startswith(MODEL_PREFIX) for k in state):
        return {(k[len(MODEL_PREFIX):] if k.startswith(MODEL_PREFIX) else k): v for k, v in state.items()}
    return dict(state)


def _backbone_signature(state: dict[str, Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()
            if k.startswith("backbone.") and not k.startswith("backbone.final.")}


# Res16UNet14A's unscaled stage widths, to recover its ``width`` from the stored channels.
_RES16UNET14A_PLANES = (32, 64, 128, 256, 128, 128, 96, 96)


def _candidate_widths(state: dict[str, Tensor]) -> list[float]:
    widths = {state["backbone.conv0p1s1.kernel"].shape[-1] / 32}
    for stage, planes in enumerate(_RES16UNET14A_PLANES, start=1):
        kernel = state.get(f"backbone.block{stage}.0.conv2.kernel")
        if kernel is not None:
            widths.add(kernel.shape[-1] / planes)
    return sorted(widths)


def infer_backbone(state: dict[str, Tensor], preferred: tuple[str, float] | None = None) -> tuple[str, float]:
    """``(variant, width)`` of a backbone whose parameter shapes equal the checkpoint's.

    Several widths of Res16UNet14A round to the same channels; ``preferred`` is tried first.
    """
    wanted = _backbone_signature(state)
    stem = state.get("backbone.conv0p1s1.kernel")
    if stem is None:
        raise CheckpointError("checkpoint has no backbone.conv0p1s1.kernel: not a Mask3D state dict")
    candidates = [preferred] if preferred else []
    candidates += [(name, width) for name in BACKBONES
                   for width in (_candidate_widths(state) if name == "Res16UNet14A" else [1.0])]
    for name, width in candidates:
        if name in BACKBONES and (width == 1.0 or name == "Res16UNet14A"):
            options = {"width": width} if width != 1.0 else {}
            with torch.device("meta"):      # shapes only: no memory, no initialisation cost
                candidate = getattr(backbone_module, name)(stem.shape[1], 1, **options)
            if _backbone_signature({f"backbone.{k}": v for k, v in candidate.state_dict().items()}) == wanted:
                return name, width
    raise CheckpointError(f"the checkpoint's backbone matches none of {', '.join(BACKBONES)}")


def infer_config(state: dict[str, Tensor], base: Mask3DConfig = Mask3DConfig()) -> Mask3DConfig:
    """``base`` with every field that the weights determine replaced by the checkpoint's value."""
    try:
        class_weight = state["class_embed_head.weight"]
        backbone, width = infer_backbone(state, (base.backbone, base.backbone_width))
        num_layer_sets = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"cross_attention\.(\d+)\.", k)))
        num_levels = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"lin_squeeze\.0\.(\d+)\.", k)))
        return dataclasses.replace(
            base,
            num_classes=class_weight.shape[0], hidden_dim=class_weight.shape[1],
            num_labels=state["backbone.final.kernel"].shape[-1],
            in_channels=state["backbone.conv0p1s1.kernel"].shape[1],
            backbone=backbone, backbone_width=width,
            dim_feedforward=state["ffn_attention.0.0.linear1.weight"].shape[0],
            shared_decoder=num_layer_sets == 1,
            num_decoders=base.num_decoders if num_layer_sets == 1 else num_layer_sets,
            hlevels=base.hlevels if len(base.hlevels) == num_levels else tuple(range(num_levels)),
        )
    except (KeyError, ValueError) as err:
        raise CheckpointError(f"not a Mask3D state dict (cannot read its architecture: {err})") from err


def check_config(state: dict[str, Tensor], expected: Mask3DConfig, expected_name: str = "the preset") -> None:
    """Raise naming every architecture field where the checkpoint and ``expected`` disagree."""
    found = infer_config(state, expected)
    diffs = [f"{f.name}: checkpoint {getattr(found, f.name)!r}, {expected_name} {getattr(expected, f.name)!r}"
             for f in dataclasses.fields(Mask3DConfig) if getattr(found, f.name) != getattr(expected, f.name)]
    if diffs:
        raise CheckpointError(f"the checkpoint does not fit {expected_name}: " + "; ".join(diffs)
                              + " (choose the preset matching the checkpoint)")


def load_weights(model: nn.Module, state: dict[str, Tensor]) -> None:
    """``load_state_dict`` that refuses any missing, unexpected or wrong-shaped key, listing all."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = [(k, tuple(state[k].shape), tuple(own[k].shape))
                  for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or mismatched:
        parts = []
        for title, items in (("missing", missing), ("unexpected", unexpected),
                             ("wrong shape (checkpoint vs model)", [f"{k} {a} vs {b}" for k, a, b in mismatched])):
            if items:
                shown = ", ".join(items[:SHOWN_PER_KIND]) + (" ..." if len(items) > SHOWN_PER_KIND else "")
                parts.append(f"{len(items)} {title}: {shown}")
        raise CheckpointError("checkpoint does not match the model: " + "; ".join(parts),
                              missing, unexpected, mismatched)
    model.load_state_dict(state, strict=True)
