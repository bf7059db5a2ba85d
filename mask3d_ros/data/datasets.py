"""Labelled scenes for training and evaluation: one ``Scene`` type and the readers that make it.

Formats:

* **mOSD** (``.pcd``, fields label x y z rgba, 640 x 480 organised, NaN where no return). Labels
  are merged as the dataset's README prescribes (2-9 -> 1, >= 10 -> label // 10): merged 1 is the
  table, merged k >= 2 is object k - 1. Classes are ``("table", "object")``; only ``object`` is an
  instance class: the table is the support surface (stuff), so its points have instance 0 and the
  evaluator treats them as void, as ScanNet does with wall and floor.
* **ScanNet** (``<id>_vh_clean_2.ply`` or ``.labels.ply``, ``<id>.aggregation.json``,
  ``<id>_vh_clean_2.0.010000.segs.json``): instances from the aggregation's segment groups;
  classes either from a user mapping of the raw category (``label_map``) or from the nyu40 ids in
  the PLY's ``label`` property (``.labels.ply``), mapped to the ScanNet 20-class benchmark set with
  its 18 instance classes (no wall, no floor).
* **Own data**, for users training on their robot's frames: a PLY with vertex properties
  ``x y z`` (float) ``red green blue`` (uchar) ``semantic instance`` (int), or an NPZ with arrays
  ``xyz`` [N,3] float, ``rgb`` [N,3] uint8, ``semantic`` [N] int, ``instance`` [N] int (optional
  ``organized_shape`` [2] and ``valid_index`` [N]). ``semantic`` indexes the class list, negative
  means unlabelled; ``instance`` 0 means no instance. The class list lives in ``classes.json``
  beside the files: ``{"class_names": [...], "instance_classes": [...]}``; without it classes are
  named ``class_0, class_1, ...`` and all are instance classes. Organised PLYs keep their NaN
  points (``comment organized W H``, see ``pointfile.write_ply``). :func:`write_scene` writes both.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from mask3d_ros.data.colors import unpack_rgb
from mask3d_ros.data.pointfile import PointTable, read_pcd, read_ply, write_ply

IGNORE = -1
"""Semantic label of unlabelled points."""
MOSD_CLASSES = ("table", "object")
MOSD_INSTANCE_CLASSES = ("object",)
SCANNET20_IDS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16, 24, 28, 33, 34, 36, 39)
"""nyu40 ids of the ScanNet 20-class benchmark, in its order."""
SCANNET20_CLASSES = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf",
    "picture", "counter", "desk", "curtain", "refrigerator", "shower curtain", "toilet", "sink",
    "bathtub", "otherfurniture",
)
SCANNET20_INSTANCE_CLASSES = SCANNET20_CLASSES[2:]
CLASSES_FILE = "classes.json"
DATASETS = ("mosd", "scannet", "ply", "npz")


@dataclass(frozen=True)
class Scene:
    """Points of one frame or scan with per-point labels; only finite points are kept."""

    xyz: np.ndarray  # float32 [N, 3]
    rgb: np.ndarray  # uint8 [N, 3]
    semantic: np.ndarray  # int64 [N], index into class_names, IGNORE when unlabelled
    instance: np.ndarray  # int64 [N], 0 = no instance
    class_names: tuple[str, ...]
    instance_classes: tuple[str, ...]  # the classes whose instances are segmented and evaluated
    name: str
    organized_shape: tuple[int, int] | None = None  # (height, width) of the sensor grid
    valid_index: np.ndarray | None = None  # int64 [N], flat grid index of each point

    def __post_init__(self):
        n = len(self.xyz)
        shapes = (self.xyz.shape, self.rgb.shape, self.semantic.shape, self.instance.shape)
        if shapes != ((n, 3), (n, 3), (n,), (n,)):
            raise ValueError(
                f"scene {self.name}: inconsistent shapes xyz {self.xyz.shape} rgb {self.rgb.shape} "
                f"semantic {self.semantic.shape} instance {self.instance.shape}")
        if not set(self.instance_classes) <= set(self.class_names):
            raise ValueError(f"scene {self.name}: instance classes {self.instance_classes} not in {self.class_names}")

    @property
    def instance_class_ids(self) -> list[int]:
        return [self.class_names.index(name) for name in self.instance_classes]


def _scene(xyz, rgb, semantic, instance, class_names, instance_classes, name, table: PointTable | None = None) -> Scene:
    """Keep the finite points; remember their grid positions when the source was organised."""
    xyz = np.asarray(xyz, np.float32)
    keep = np.flatnonzero(np.isfinite(xyz).all(axis=1))
    organised = table is not None and table.is_organized
    return Scene(
        xyz=xyz[keep],
        rgb=np.asarray(rgb, np.uint8)[keep],
        semantic=np.asarray(semantic, np.int64)[keep],
        instance=np.asarray(instance, np.int64)[keep],
        class_names=tuple(class_names),
        instance_classes=tuple(instance_classes),
        name=name,
        organized_shape=(table.height, table.width) if organised else None,
        valid_index=keep if organised else None,
    )


def _xyz(points: np.ndarray) -> np.ndarray:
    return np.stack([points["x"], points["y"], points["z"]], axis=1)


def load_mosd(path: str | os.PathLike) -> Scene:
    """An mOSD frame: table (stuff) and objects (instances), NaN points dropped."""
    table = read_pcd(path)
    points = table.points
    label = points["label"].astype(np.int64)
    merged = np.where((label >= 2) & (label <= 9), 1, np.where(label >= 10, label // 10, label))
    semantic = np.select([merged == 1, merged >= 2], [0, 1], IGNORE)
    instance = np.where(merged >= 2, merged - 1, 0)
    return _scene(_xyz(points), unpack_rgb(points["rgba"]), semantic, instance, MOSD_CLASSES,
                  MOSD_INSTANCE_CLASSES, Path(path).stem, table)


# --- ScanNet ------------------------------------------------------------------------------------


def _scannet_files(path: Path, prefer_labels: bool) -> tuple[Path, str]:
    """The mesh to read and the scene id, from a scene folder or one of its PLYs."""
    if path.is_dir():
        scene_id = path.name
        labelled = path / f"{scene_id}_vh_clean_2.labels.ply"
        return (labelled if prefer_labels and labelled.exists() else path / f"{scene_id}_vh_clean_2.ply"), scene_id
    return path, path.name.split("_vh_clean_2")[0]


def load_scannet(
    path: str | os.PathLike,
    label_map: Mapping[str, str] | None = None,
    class_names: Sequence[str] | None = None,
    instance_classes: Sequence[str] | None = None,
) -> Scene:
    """A ScanNet scene (folder or ``*_vh_clean_2[.labels].ply``) with instances from its aggregation.

    With ``label_map`` (raw category -> class name) classes are ``class_names`` (default: the map's
    values in first-seen order) and unmapped categories are unlabelled; without it the PLY must have
    the nyu40 ``label`` property and classes are the ScanNet 20 benchmark classes.
    """
    mesh_path, scene_id = _scannet_files(Path(path), prefer_labels=label_map is None)
    folder = mesh_path.parent
    vertices = read_ply(mesh_path).points
    segments = np.asarray(json.loads((folder / f"{scene_id}_vh_clean_2.0.010000.segs.json").read_text())["segIndices"])
    groups = json.loads((folder / f"{scene_id}.aggregation.json").read_text())["segGroups"]
    if len(segments) != len(vertices):
        raise ValueError(f"{mesh_path}: {len(vertices)} vertices but {len(segments)} segment indices")

    if label_map is not None:
        class_names = tuple(class_names or dict.fromkeys(label_map.values()))
        instance_classes = tuple(instance_classes or class_names)
    elif "label" in vertices.dtype.names:
        nyu40 = vertices["label"].astype(np.int64)
        nyu40_to_class = np.full(max(int(nyu40.max(initial=0)), *SCANNET20_IDS) + 1, IGNORE)
        nyu40_to_class[list(SCANNET20_IDS)] = np.arange(len(SCANNET20_IDS))
        semantic = nyu40_to_class[nyu40]
        class_names, instance_classes = SCANNET20_CLASSES, tuple(instance_classes or SCANNET20_INSTANCE_CLASSES)
    else:
        raise ValueError(f"{mesh_path} has no nyu40 'label' property: pass label_map (raw category -> class)")

    instance = np.zeros(len(vertices), np.int64)
    group_semantic = np.full(len(vertices), IGNORE, np.int64)
    for group in groups:
        members = np.isin(segments, group["segments"])
        instance[members] = int(group["objectId"]) + 1
        if label_map is not None and label_map.get(group["label"]) in class_names:
            group_semantic[members] = class_names.index(label_map[group["label"]])
    if label_map is not None:
        semantic = group_semantic
    rgb = np.stack([vertices["red"], vertices["green"], vertices["blue"]], axis=1)
    return _scene(_xyz(vertices), rgb, semantic, instance, class_names, instance_classes, scene_id)


# --- own format ---------------------------------------------------------------------------------


def _read_classes(folder: Path, semantic: np.ndarray) -> tuple[tuple[str, ...], tuple[str, ...]]:
    classes_file = folder / CLASSES_FILE
    if classes_file.exists():
        classes = json.loads(classes_file.read_text())
        class_names = tuple(classes["class_names"])
        return class_names, tuple(classes.get("instance_classes", class_names))
    class_names = tuple(f"class_{i}" for i in range(int(semantic.max(initial=-1)) + 1))
    return class_names, class_names


def _write_classes(folder: Path, scene: Scene) -> None:
    classes = {"class_names": list(scene.class_names), "instance_classes": list(scene.instance_classes)}
    classes_file = folder / CLASSES_FILE
    if classes_file.exists() and json.loads(classes_file.read_text()) != classes:
        raise ValueError(f"{classes_file} already lists other classes than scene {scene.name}: {classes}")
    classes_file.write_text(json.dumps(classes, indent=1) + "\n")


def load_ply(path: str | os.PathLike) -> Scene:
    """A PLY of our own format (see the module docstring)."""
    table = read_ply(path)
    points = table.points
    semantic = points["semantic"].astype(np.int64)
    class_names, instance_classes = _read_classes(Path(path).parent, semantic)
    rgb = np.stack([points["red"], points["green"], points["blue"]], axis=1)
    return _scene(_xyz(points), rgb, semantic, points["instance"], class_names, instance_classes,
                  Path(path).stem, table)


def load_npz(path: str | os.PathLike) -> Scene:
    """An NPZ of our own format (see the module docstring)."""
    with np.load(path) as arrays:
        semantic = arrays["semantic"].astype(np.int64)
        class_names, instance_classes = _read_classes(Path(path).parent, semantic)
        shape = tuple(int(v) for v in arrays["organized_shape"]) if "organized_shape" in arrays else None
        scene = _scene(arrays["xyz"], arrays["rgb"], semantic, arrays["instance"], class_names,
                       instance_classes, Path(path).stem)
        if shape is None:
            return scene
        valid_index = arrays["valid_index"].astype(np.int64)
    if len(valid_index) != len(scene.xyz):
        raise ValueError(f"{path}: valid_index has {len(valid_index)} entries for {len(scene.xyz)} finite points")
    return replace(scene, organized_shape=shape, valid_index=valid_index)


def write_scene(path: str | os.PathLike, scene: Scene) -> None:
    """Write ``scene`` as our own ``.ply`` or ``.npz`` plus ``classes.json`` in the same folder."""
    path = Path(path)
    if path.suffix == ".npz":
        extra = {}
        if scene.organized_shape is not None:
            extra = {"organized_shape": np.asarray(scene.organized_shape), "valid_index": scene.valid_index}
        np.savez_compressed(path, xyz=scene.xyz, rgb=scene.rgb, semantic=scene.semantic, instance=scene.instance,
                            **extra)
    elif path.suffix == ".ply":
        dtype = [("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1"),
                 ("semantic", "i4"), ("instance", "i4")]
        size = scene.organized_shape[0] * scene.organized_shape[1] if scene.organized_shape else len(scene.xyz)
        rows = scene.valid_index if scene.organized_shape else np.arange(len(scene.xyz))
        points = np.zeros(size, dtype)
        for axis in "xyz":
            points[axis] = np.nan
        points["semantic"] = IGNORE
        for column, axis in enumerate("xyz"):
            points[axis][rows] = scene.xyz[:, column]
        for column, channel in enumerate(("red", "green", "blue")):
            points[channel][rows] = scene.rgb[:, column]
        points["semantic"][rows] = scene.semantic
        points["instance"][rows] = scene.instance
        write_ply(path, points.reshape(scene.organized_shape) if scene.organized_shape else points)
    else:
        raise ValueError(f"{path}: own-format scenes are .ply or .npz")
    _write_classes(path.parent, scene)


# --- dispatch -----------------------------------------------------------------------------------


def dataset_of(path: str | os.PathLike) -> str:
    """Guess the format from the path: .pcd is mOSD, a ScanNet mesh or folder is ScanNet."""
    path = Path(path)
    if path.is_dir() or "_vh_clean_2" in path.name:
        return "scannet"
    if path.suffix == ".pcd":
        return "mosd"
    if path.suffix in (".ply", ".npz"):
        return path.suffix[1:]
    raise ValueError(f"{path}: cannot tell the dataset format; pass one of {DATASETS}")


def load_scene(path: str | os.PathLike, dataset: str = "auto", **options) -> Scene:
    """Read one scene; ``dataset`` is one of ``DATASETS`` or "auto"; ``options`` go to the reader."""
    dataset = dataset_of(path) if dataset == "auto" else dataset
    readers = {"mosd": load_mosd, "scannet": load_scannet, "ply": load_ply, "npz": load_npz}
    if dataset not in readers:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {DATASETS}")
    return readers[dataset](path, **options)
