"""Scored predictions, the evaluator's input, and the one place results become them.

Whatever produced the instances (the Segmenter, the node's published outputs, the classical
baseline's clusters), :class:`InstancePredictions` holds them as boolean point masks with a class
index into the scene's class list and a score. A class the scene does not name becomes -1, which
the evaluator ignores.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from mask3d_ros.model.results import Instance, VoxelSegmentation


@dataclass(frozen=True)
class InstancePredictions:
    """Predicted instances of one frame: a boolean point mask, a class and a score each."""

    masks: np.ndarray  # bool [P, N]
    classes: np.ndarray  # int [P], index into the class list of the frame's semantic labels
    scores: np.ndarray  # float [P]

    @staticmethod
    def empty(num_points: int) -> "InstancePredictions":
        return InstancePredictions(
            np.zeros((0, num_points), bool), np.zeros(0, np.int64), np.zeros(0, np.float64)
        )


def scene_classes(names: Sequence[str], scene_class_names: Sequence[str]) -> np.ndarray:
    """int64 index of each of ``names`` in the scene's class list, -1 where the scene lacks it."""
    index = {name: i for i, name in enumerate(scene_class_names)}
    return np.array([index.get(name, -1) for name in names], np.int64)


def from_voxel_segmentation(segmentation: VoxelSegmentation, model_class_names: Sequence[str],
                            scene_class_names: Sequence[str], disjoint: bool = False) -> InstancePredictions:
    """The model's instances as point masks. ``disjoint``: each point in at most one instance, the
    highest-scored one covering it, as the node publishes them (official Mask3D masks may overlap)."""
    if disjoint:
        masks = segmentation.point_instance[None, :] == np.arange(segmentation.num_instances)[:, None]
    else:
        masks = segmentation.masks[segmentation.inverse_map].T
    names = [model_class_names[c] for c in segmentation.class_ids]
    return InstancePredictions(masks, scene_classes(names, scene_class_names),
                               np.asarray(segmentation.scores, np.float64))


def from_instances(instances: Sequence[Instance], num_points: int,
                   scene_class_names: Sequence[str]) -> InstancePredictions:
    """Published instances (point indices into a cloud of ``num_points``) as point masks."""
    masks = np.zeros((len(instances), num_points), bool)
    for row, instance in enumerate(instances):
        masks[row, instance.indices] = True
    return InstancePredictions(masks, scene_classes([i.class_name for i in instances], scene_class_names),
                               np.array([i.score for i in instances], np.float64))


def from_labels(labels: np.ndarray, class_id: int) -> InstancePredictions:
    """One instance per cluster id (>= 0) of ``labels`` [N]; larger clusters score higher (few
    points: likely noise)."""
    ids, sizes = np.unique(labels[labels >= 0], return_counts=True)
    masks = labels[None, :] == ids[:, None]
    return InstancePredictions(masks, np.full(len(ids), class_id), sizes / (sizes + 1000.0))
