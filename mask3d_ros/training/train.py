"""Training Mask3D on labelled point clouds: the project's tabletop model and users' own data.

One YAML file (``config/train_*.yaml``) says which scenes to learn from, the architecture, the
voxel size and the optimisation; ``mask3d-ros-train CONFIG`` runs it on CPU or CUDA, shows the
losses in a progress bar, and writes resumable checkpoints in the official Lightning layout
(``state_dict`` with ``model.`` keys plus ``criterion.empty_weight``), which the strict loader
reads like a released checkpoint. The architecture, label set and colour statistics travel in
``hyper_parameters["mask3d_ros"]`` as plain Python values, so loading needs no pickled classes.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import glob
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml
from tqdm import tqdm

from mask3d_ros.data import datasets, synthetic
from mask3d_ros.model.decoder import DegenerateSceneError, Mask3D, Mask3DConfig
from mask3d_ros.model.segmenter import resolve_device
from mask3d_ros.model.voxel import voxelize
from mask3d_ros.training import copy_paste
from mask3d_ros.training.augment import AugmentConfig, augment_cloud, table_normal
from mask3d_ros.training.criterion import SceneTargets, SetCriterion


@dataclass
class TrainConfig:
    """Everything a training run depends on; read from YAML, stored in every checkpoint."""

    class_names: list[str]
    model: dict = field(default_factory=dict)            # Mask3DConfig fields
    voxel_size: float = 0.01
    # Scene sources: {"dataset": "mosd"|"scannet"|"npz"|"ply", "paths": [globs]} or
    # {"dataset": "synthetic", "count": N, "seed": S} (optional "kind": frame|varied|map and "cache": a
    # folder, see synthetic.cached_scenes) or {"dataset": "copy_paste", "paths": [globs], "count": N,
    # "seed": S} (real objects pasted into real frames, see copy_paste.make_scenes; optional
    # "added", "touching", "stacked", "scale", "height_scale" as in copy_paste.compose); "repeat": R shows
    # a source R times per epoch; "exclude": [globs] drops matching file names (held-out frames).
    data: list[dict] = field(default_factory=list)
    init_from: str | None = None      # start from these weights (a checkpoint of the same architecture)
    # fine-tuning: keep init_from's colour mean/std (the normalisation its weights learnt) instead of
    # recomputing them from this config's scenes; init_from may be a training or an exported checkpoint
    init_colour: bool = False
    stuff_classes: list[str] = field(default_factory=list)   # trained as one mask per scene
    topk: int = 100                   # inference: top-k (query, class) pairs kept
    dbscan_eps: float | None = None   # inference: DBSCAN split distance in metres (None: off)
    duplicate_iou: float | None = None   # inference: drop duplicate masks above this IoU
    smooth_radius: float | None = None   # inference: colour-weighted mask smoothing radius (None: off)
    smooth_color_sigma: float = 0.1      # inference: its colour kernel width
    iterations: int = 2000
    batch_size: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.01
    grad_clip: float = 0.0
    augment: dict = field(default_factory=dict)
    seed: int = 0
    device: str = "auto"
    out_dir: str = "build/train"
    checkpoint_every: int = 500
    keep_every: int = 0               # also keep weights-only step_N.ckpt every N steps (model selection)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "TrainConfig":
        raw = yaml.safe_load(Path(path).read_text()) or {}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"{path}: unknown training options {unknown}; known: {sorted(known)}")
        return cls(**raw)

    def model_config(self) -> Mask3DConfig:
        return Mask3DConfig(**{**self.model, "num_classes": len(self.class_names) + 1})


# TrainConfig fields that only post-processing reads: written into checkpoints for the Segmenter.
INFERENCE_SETTINGS = ("topk", "dbscan_eps", "duplicate_iou", "smooth_radius", "smooth_color_sigma")


@dataclass
class TrainingSample:
    """One voxelized scene as the model and the criterion consume it."""

    coords: torch.Tensor      # [N, 3] int32 voxel coordinates
    features: torch.Tensor    # [N, 3] normalised colour
    raw_xyz: torch.Tensor     # [N, 3] representative points, metres
    targets: SceneTargets


def load_training_scenes(config: TrainConfig, base: Path) -> list:
    """Read every scene the config names (relative paths are relative to ``base``, the cwd)."""
    scenes = []
    for source in config.data:
        kind = source["dataset"]
        if kind == "synthetic":
            loaded = _synthetic_source(source, base)
        elif kind == "copy_paste":
            frames = [datasets.load_scene(p) for p in _source_paths(source, base)]
            loaded = copy_paste.make_scenes(frames, int(source["count"]), int(source.get("seed", 0)),
                                            **_compose_options(source))
        else:
            loaded = [datasets.load_scene(p, dataset=kind) for p in _source_paths(source, base)]
        scenes += loaded * int(source.get("repeat", 1))
    if not scenes:
        raise ValueError("the training config names no scenes")
    for scene in scenes:
        if tuple(scene.class_names) != tuple(config.class_names):
            raise ValueError(f"scene {scene.name} has classes {scene.class_names}, the config {config.class_names}")
    return scenes


COMPOSE_OPTIONS = ("added", "touching", "stacked", "scale", "height_scale")


def _compose_options(source: dict) -> dict:
    """A copy-paste source's ``copy_paste.compose`` options (ranges as tuples)."""
    return {key: tuple(value) if isinstance(value, list) else value
            for key, value in source.items() if key in COMPOSE_OPTIONS}


def _source_paths(source: dict, base: Path) -> list[str]:
    """The files a source's ``paths`` globs match, minus its ``exclude`` name globs."""
    paths = sorted(p for pattern in source["paths"] for p in glob.glob(str(base / pattern))
                   if not any(fnmatch.fnmatch(Path(p).name, ex) for ex in source.get("exclude", [])))
    if not paths:
        raise FileNotFoundError(f"no {source['dataset']} scenes match {source['paths']} (relative to {base})")
    return paths


def _synthetic_source(source: dict, base: Path) -> list:
    """Scenes of a synthetic source; classic frames without a cache render as they always did."""
    first, count, kind = int(source.get("seed", 0)), int(source["count"]), source.get("kind", "frame")
    if kind == "frame" and "cache" not in source:
        return [synthetic.generate_frame(seed).to_scene(f"synthetic_{seed}") for seed in range(first, first + count)]
    cache = source.get("cache")
    return synthetic.cached_scenes(kind, count, first, str(base / cache) if cache else None)


def colour_statistics(scenes: list) -> tuple[list[float], list[float]]:
    """Colour mean and std in [0, 1] over all points (the official ``color_mean_std`` recipe)."""
    total = sum(len(s.rgb) for s in scenes)
    mean = sum(s.rgb.astype(np.float64).sum(0) for s in scenes) / (255.0 * total)
    mean_sq = sum(((s.rgb.astype(np.float64) / 255.0) ** 2).sum(0) for s in scenes) / total
    std = np.sqrt(np.maximum(mean_sq - mean ** 2, 1e-12))
    return mean.tolist(), std.tolist()


def build_targets(semantic: np.ndarray, instance: np.ndarray, class_names: list[str],
                  stuff_classes: list[str]) -> SceneTargets:
    """Instance masks over voxels: every instance id > 0, plus one mask per present stuff class.

    semantic/instance are the representative point's labels of each voxel (as the official
    voxelization takes them); semantic -1 means unlabelled and is never a target.
    """
    classes, masks = [], []
    for inst in np.unique(instance[instance > 0]):
        member = instance == inst
        labels = semantic[member]
        labels = labels[labels >= 0]
        if labels.size == 0:
            continue
        classes.append(int(np.bincount(labels).argmax()))
        masks.append(member)
    for name in stuff_classes:
        member = (semantic == class_names.index(name)) & (instance <= 0)
        if member.any():
            classes.append(class_names.index(name))
            masks.append(member)
    mask_array = np.stack(masks) if masks else np.zeros((0, semantic.shape[0]), dtype=bool)
    return SceneTargets(classes=torch.as_tensor(classes, dtype=torch.long),
                        masks=torch.as_tensor(mask_array, dtype=torch.float32))


def scene_up(scene, config: TrainConfig) -> np.ndarray | None:
    """The table normal of a scene (the first stuff class is the support surface), or None."""
    if not config.stuff_classes or config.stuff_classes[0] not in config.class_names:
        return None
    return table_normal(scene.xyz, scene.semantic == config.class_names.index(config.stuff_classes[0]))


def prepare_sample(scene, config: TrainConfig, colour_mean: np.ndarray, colour_std: np.ndarray,
                   rng: np.random.Generator | None, device: torch.device,
                   up: np.ndarray | None = None) -> TrainingSample:
    """Augment (when ``rng`` is given; ``up``: the table normal to turn about), voxelize, normalise
    colour, build voxel-level targets."""
    xyz, rgb, keep = scene.xyz, scene.rgb, np.arange(len(scene.xyz))
    if rng is not None:
        xyz, rgb, keep = augment_cloud(xyz, rgb, rng, AugmentConfig(**config.augment), up)
    coords, unique_map, _ = voxelize(xyz, config.voxel_size)
    features = (rgb[unique_map].astype(np.float32) / 255.0 - colour_mean) / colour_std
    point_rows = keep[unique_map]
    targets = build_targets(scene.semantic[point_rows], scene.instance[point_rows],
                            config.class_names, config.stuff_classes)
    return TrainingSample(
        coords=torch.as_tensor(coords, device=device),
        features=torch.as_tensor(features, dtype=torch.float32, device=device),
        raw_xyz=torch.as_tensor(xyz[unique_map], dtype=torch.float32, device=device),
        targets=SceneTargets(targets.classes.to(device), targets.masks.to(device)),
    )


def checkpoint_dict(model: Mask3D, criterion: SetCriterion, config: TrainConfig, colour: tuple,
                    step: int, optimizer=None, scheduler=None) -> dict:
    """The official Lightning layout, plus this project's model description."""
    state = {f"model.{k}": v.detach().cpu() for k, v in model.state_dict().items()}
    state["criterion.empty_weight"] = criterion.empty_weight.detach().cpu()
    ckpt = {
        "state_dict": state,
        "global_step": step,
        "hyper_parameters": {"mask3d_ros": {
            "model": dataclasses.asdict(model.config),
            "class_names": list(config.class_names),
            "stuff_classes": list(config.stuff_classes),
            "voxel_size": config.voxel_size,
            **{name: getattr(config, name) for name in INFERENCE_SETTINGS},
            "color_mean": list(colour[0]),
            "color_std": list(colour[1]),
            "train_config": dataclasses.asdict(config),
        }},
    }
    if optimizer is not None:
        ckpt["optimizer_states"] = [optimizer.state_dict()]
        ckpt["lr_schedulers"] = [scheduler.state_dict()]
    return ckpt


def train(config: TrainConfig, base: Path, resume: Path | None = None, progress: bool = True,
          scenes: list | None = None, augment: bool = True) -> dict:
    """Run the training loop; returns the last checkpoint dict and writes checkpoints to out_dir.

    ``scenes`` replaces the config's data sources (tests); ``augment=False`` trains on the scenes as
    they are.
    """
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    device = resolve_device(config.device)
    scenes = scenes if scenes is not None else load_training_scenes(config, base)
    colour = colour_statistics(scenes)
    if config.init_colour:
        if not config.init_from:
            raise ValueError("init_colour needs init_from")
        init_description = torch.load(base / config.init_from, map_location="cpu",
                                      weights_only=True)["hyper_parameters"]["mask3d_ros"]
        colour = (list(init_description["color_mean"]), list(init_description["color_std"]))
    colour_mean, colour_std = (np.asarray(c, dtype=np.float32) for c in colour)
    ups = [scene_up(scene, config) for scene in scenes] if config.augment.get("up_rotation") else [None] * len(scenes)

    model = Mask3D(config.model_config()).to(device).train()
    criterion = SetCriterion(len(config.class_names)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=config.iterations)
    start = 0
    if config.init_from and resume is None:
        init = torch.load(base / config.init_from, map_location=device, weights_only=True)
        model.load_state_dict({k[len("model."):]: v for k, v in init["state_dict"].items() if k.startswith("model.")})
    if resume is not None:
        ckpt = torch.load(resume, map_location=device, weights_only=True)
        model.load_state_dict({k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")})
        optimizer.load_state_dict(ckpt["optimizer_states"][0])
        scheduler.load_state_dict(ckpt["lr_schedulers"][0])
        start = int(ckpt["global_step"])
        rng = np.random.default_rng([config.seed, start])

    out_dir = Path(config.out_dir)
    if not out_dir.is_absolute():
        out_dir = base / out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    order: list[int] = []
    history: list[dict] = []
    bar = tqdm(range(start, config.iterations), initial=start, total=config.iterations, disable=not progress,
               desc="train", dynamic_ncols=True)
    began = time.perf_counter()
    for step in bar:
        outputs, targets = [], []
        while len(outputs) < config.batch_size:
            if not order:
                order = list(rng.permutation(len(scenes)))
            index = order.pop()
            sample = prepare_sample(scenes[index], config, colour_mean, colour_std,
                                    rng if augment else None, device, ups[index])
            try:
                outputs.append(model(sample.coords, sample.features, sample.raw_xyz))
            except DegenerateSceneError:
                continue
            targets.append(sample.targets)
        loss, parts = criterion(outputs, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        scheduler.step()
        record = {"step": step + 1, "loss": float(loss.detach()),
                  **{k: parts[k] for k in ("loss_ce", "loss_mask", "loss_dice")}}
        history.append(record)
        bar.set_postfix(loss=f"{record['loss']:.3f}", ce=f"{record['loss_ce']:.3f}",
                        mask=f"{record['loss_mask']:.3f}", dice=f"{record['loss_dice']:.3f}")
        if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.iterations:
            ckpt = checkpoint_dict(model, criterion, config, colour, step + 1, optimizer, scheduler)
            torch.save(ckpt, out_dir / "last.ckpt")
        if config.keep_every and (step + 1) % config.keep_every == 0:
            slim = checkpoint_dict(model, criterion, config, colour, step + 1)
            torch.save(slim, out_dir / f"step_{step + 1}.ckpt")
    ckpt = checkpoint_dict(model, criterion, config, colour, config.iterations, optimizer, scheduler)
    ckpt["history"] = history
    ckpt["train_seconds"] = time.perf_counter() - began
    return ckpt


def export_weights(ckpt_path: Path, out_path: Path, config: TrainConfig | None = None) -> None:
    """Write a checkpoint without optimizer state (what ships under model/). With ``config``, its
    inference settings replace the checkpoint's: they can be re-tuned after training."""
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    slim = {k: ckpt[k] for k in ("state_dict", "hyper_parameters", "global_step")}
    if config is not None:
        description = slim["hyper_parameters"]["mask3d_ros"]
        for name in INFERENCE_SETTINGS:
            description[name] = description["train_config"][name] = getattr(config, name)
    torch.save(slim, out_path)
