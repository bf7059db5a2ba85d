"""Classical tabletop baseline: remove the support plane (RANSAC), cluster what stands on it (DBSCAN).

It is what model-free tabletop segmentation did before learned models, so the learned model is
measured against it on the same frames and with the same evaluator. Points are assumed to be in a
sensor frame (the sensor at the origin, as in mOSD and the node's input): the plane normal is
turned towards the origin to tell what stands on the table from what lies under it.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
import open3d as o3d

from mask3d_ros.data.datasets import Scene
from mask3d_ros.evaluation.ap import evaluate
from mask3d_ros.evaluation.predictions import InstancePredictions, from_labels
from mask3d_ros.model.voxel import voxelize

OBJECT_CLASS = "object"


@dataclass(frozen=True)
class BaselineParams:
    """``plane_distance``, ``cluster_eps`` and ``min_cluster_points`` are what
    ``tune_baseline(mOSD learn/, TUNING_GRID)`` chose (45 frames, AP50 0.848 there; 100, 300 and
    1000 points tie); the rest is fixed by hand."""

    plane_distance: float = 0.008  # [m] RANSAC inlier band; points must stand further above it
    cluster_eps: float = 0.015  # [m] DBSCAN neighbourhood radius
    min_cluster_points: int = 100  # smaller clusters are noise, not objects
    max_cluster_points: int = 60000  # larger clusters are not tabletop objects
    voxel_size: float = 0.005  # [m] clustering runs on one point per voxel, for speed
    ransac_iterations: int = 500
    ransac_points: int = 20000  # RANSAC samples this many points, evenly spread over the cloud



def _support_plane(xyz: np.ndarray, params: BaselineParams) -> np.ndarray:
    """(a, b, c, d) of the dominant plane, refined by least squares, normal towards the sensor."""
    sample = xyz[:: max(1, len(xyz) // params.ransac_points)]
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(sample.astype(np.float64)))
    o3d.utility.random.seed(0)
    plane, _ = cloud.segment_plane(params.plane_distance, 3, params.ransac_iterations)
    plane = np.asarray(plane)
    inliers = sample[np.abs(sample @ plane[:3] + plane[3]) <= params.plane_distance]
    centre = inliers.mean(axis=0)
    normal = np.linalg.svd(inliers - centre, full_matrices=False)[2][2]
    plane = np.r_[normal, -normal @ centre]
    return plane if plane[3] > 0 else -plane


def cluster_objects(xyz: np.ndarray, params: BaselineParams = BaselineParams()) -> np.ndarray:
    """Object id per point (0..K-1) for the clusters standing on the support plane, -1 elsewhere."""
    labels = np.full(len(xyz), -1, np.int64)
    if len(xyz) < 3:
        return labels
    plane = _support_plane(xyz, params)
    above = np.flatnonzero(xyz @ plane[:3] + plane[3] > params.plane_distance)
    if len(above) == 0:
        return labels
    _, representatives, voxel_of_point = voxelize(xyz[above], params.voxel_size)
    voxels = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(xyz[above][representatives].astype(np.float64)))
    voxel_labels = np.asarray(voxels.cluster_dbscan(params.cluster_eps, min_points=1))
    point_labels = voxel_labels[voxel_of_point]
    ids, sizes = np.unique(point_labels, return_counts=True)
    kept = ids[(sizes >= params.min_cluster_points) & (sizes <= params.max_cluster_points)]
    renumber = np.full(voxel_labels.max(initial=-1) + 1, -1)
    renumber[kept] = np.arange(len(kept))
    labels[above] = renumber[point_labels]
    return labels


def predict_scene(scene: Scene, params: BaselineParams = BaselineParams()) -> InstancePredictions:
    """Baseline instances of ``scene``, all of class ``object``."""
    return from_labels(cluster_objects(scene.xyz, params), scene.class_names.index(OBJECT_CLASS))


TUNING_GRID = {
    "plane_distance": (0.006, 0.008, 0.01, 0.015),
    "cluster_eps": (0.01, 0.015, 0.02),
    "min_cluster_points": (100, 300, 1000),
}


def tune_baseline(scenes: Sequence[Scene], grid: dict[str, Sequence] = TUNING_GRID,
                  base: BaselineParams = BaselineParams()) -> tuple[BaselineParams, float]:
    """Grid search maximising AP50 (ties: AP, then grid order) over ``scenes``; returns the best
    params and their AP50. Clustering is cheap (~40 ms a frame), so every cell is run in full."""
    best, best_key = base, (-1.0, -1.0)
    names = list(grid)
    for values in itertools.product(*(grid[name] for name in names)):
        params = replace(base, **dict(zip(names, values)))
        result = evaluate(
            ((scene.semantic, scene.instance, predict_scene(scene, params)) for scene in scenes),
            scenes[0].class_names, scenes[0].instance_classes,
        )
        key = (round(result.AP50, 9), round(result.AP, 9))  # rounded: float noise must not break ties
        if key > best_key:
            best, best_key = params, key
    return best, best_key[0]
