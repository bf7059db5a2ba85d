"""The result contract between the model and everything that uses it.

:class:`VoxelSegmentation` is what the model computes: instance masks over the voxels, one
instance per voxel for display, and the voxelization's ``inverse_map`` to reach the points.
:class:`PointSegmentation` is what the node publishes: per-point instance id, class and score, and
the instances with their point indices. :func:`to_point_segmentation` is the one conversion from
the first to the second; ``mask3d_ros.evaluation.predictions`` turns either into scored masks.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

NO_INSTANCE = 0
NO_CLASS = 0xFFFFFFFF  # `label` of points that belong to no instance


@dataclass
class VoxelSegmentation:
    """The model's instances of one cloud, per voxel (per point through ``inverse_map``).

    Instance arrays are sorted by ``scores``, descending.
    """

    mode: str
    masks: np.ndarray               # bool [N_vox, M]: voxel v belongs to instance j
    class_ids: np.ndarray           # int64 [M]: model class index
    label_ids: np.ndarray           # int64 [M]: dataset label id (class_ids after the remap)
    scores: np.ndarray              # float32 [M]
    query_ids: np.ndarray           # int64 [M]: decoder query of the instance (-1: semantic segment)
    voxel_instance: np.ndarray      # int64 [N_vox]: instance shown at the voxel (highest score), -1 none
    inverse_map: np.ndarray | None = None   # int64 [N_points]: voxel of each point
    timings_ms: dict[str, float] = field(default_factory=dict)

    @property
    def num_instances(self) -> int:
        return len(self.scores)

    def _per_voxel(self, per_instance: np.ndarray, none) -> np.ndarray:
        values = np.full(len(self.voxel_instance), none, dtype=per_instance.dtype)
        assigned = self.voxel_instance >= 0
        values[assigned] = per_instance[self.voxel_instance[assigned]]
        return values

    @property
    def voxel_class(self) -> np.ndarray:
        return self._per_voxel(self.class_ids, -1)

    @property
    def voxel_label(self) -> np.ndarray:
        return self._per_voxel(self.label_ids, -1)

    @property
    def voxel_score(self) -> np.ndarray:
        return self._per_voxel(self.scores, 0.0)

    def _to_points(self, per_voxel: np.ndarray) -> np.ndarray:
        if self.inverse_map is None:
            raise ValueError("this segmentation has no inverse_map, so no per-point view")
        return per_voxel[self.inverse_map]

    @property
    def point_instance(self) -> np.ndarray:
        return self._to_points(self.voxel_instance)

    @property
    def point_class(self) -> np.ndarray:
        return self._to_points(self.voxel_class)

    @property
    def point_label(self) -> np.ndarray:
        return self._to_points(self.voxel_label)

    @property
    def point_score(self) -> np.ndarray:
        return self._to_points(self.voxel_score)

    def point_masks(self) -> np.ndarray:
        """bool ``[N_points, M]`` (allocated on demand: it can be large)."""
        return self._to_points(self.masks)


@dataclass
class Instance:
    id: int  # > 0; equals the instance_id of its points
    class_id: int
    class_name: str
    score: float
    indices: np.ndarray  # int64 rows of the points, ascending
    center: np.ndarray | None = None  # axis-aligned box of the points (fixed frame), filled by add_boxes
    size: np.ndarray | None = None


@dataclass
class PointSegmentation:
    """Per-point results for N points and the instances they form: what the node publishes."""

    instance_id: np.ndarray  # uint32 [N], 0 = none
    class_id: np.ndarray  # uint32 [N], NO_CLASS where no instance
    score: np.ndarray  # float32 [N], 0 where no instance
    instances: list[Instance] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.instance_id)

    @classmethod
    def empty(cls, num_points: int) -> "PointSegmentation":
        return cls(np.zeros(num_points, np.uint32), np.full(num_points, NO_CLASS, np.uint32),
                   np.zeros(num_points, np.float32))

    @classmethod
    def from_point_instances(cls, point_instance: np.ndarray, class_ids, scores, class_names,
                             timings_ms=None) -> "PointSegmentation":
        """From a per-point instance index (-1 none; instance j has class ``class_ids[j]``,
        score ``scores[j]``); instance j becomes id j + 1. Instances without points are left out."""
        point_instance = np.asarray(point_instance, dtype=np.int64)
        class_ids = np.asarray(class_ids, dtype=np.int64)
        scores = np.asarray(scores, dtype=np.float32)
        slot = point_instance + 1   # per-point values through tables indexed by instance + 1 (0: none)
        seg = cls(np.arange(len(class_ids) + 1, dtype=np.uint32).take(slot),
                  np.concatenate(([NO_CLASS], class_ids)).astype(np.uint32).take(slot),
                  np.concatenate(([0.0], scores)).astype(np.float32).take(slot), timings_ms=dict(timings_ms or {}))
        # Each instance's rows: a stable sort by instance keeps them ascending within it.
        order = np.argsort(point_instance, kind="stable")
        bounds = np.concatenate(([0], np.cumsum(np.bincount(slot, minlength=len(class_ids) + 1))))
        for j in np.flatnonzero(np.diff(bounds)[1:]).tolist():
            seg.instances.append(Instance(j + 1, int(class_ids[j]), _name(class_names, class_ids[j]),
                                          float(scores[j]), order[bounds[j + 1]:bounds[j + 2]]))
        seg.instances.sort(key=lambda inst: -inst.score)
        return seg

    def validate(self, num_points: int) -> None:
        """Raise ValueError unless the per-point arrays and the instances agree."""
        for name in ("instance_id", "class_id", "score"):
            values = getattr(self, name)
            if np.shape(values) != (num_points,):
                raise ValueError(f"segmentation {name} has shape {np.shape(values)}, expected ({num_points},)")
        ids = [inst.id for inst in self.instances]
        if len(set(ids)) != len(ids) or NO_INSTANCE in ids:
            raise ValueError(f"instance ids must be unique and non-zero, got {ids}")
        covered = 0
        for inst in self.instances:
            rows = np.asarray(inst.indices)
            if rows.size and (rows.min() < 0 or rows.max() >= num_points):
                raise ValueError(f"instance {inst.id} has point indices outside 0..{num_points - 1}")
            if not np.all(self.instance_id[rows] == inst.id):
                raise ValueError(f"instance {inst.id}: its indices and the per-point instance_id disagree")
            covered += rows.size
        if covered != int(np.count_nonzero(self.instance_id)):
            raise ValueError("points carry instance ids that no instance lists")


def _name(class_names, class_id) -> str:
    class_id = int(class_id)
    return class_names[class_id] if 0 <= class_id < len(class_names) else f"class_{class_id}"


def to_point_segmentation(result: VoxelSegmentation, class_names) -> PointSegmentation:
    """The model's per-voxel result as per-point instances (instance j becomes id j + 1).

    Points take the instance shown at their voxel (``voxel_instance``, the highest score), so each
    point belongs to at most one instance.
    """
    timings = dict(getattr(result, "timings_ms", {}) or {})
    return PointSegmentation.from_point_instances(result.point_instance, result.class_ids, result.scores,
                                                  class_names, timings)
