"""What the node answered, read back from a recorded bag and scored against the ground truth.

A node output (:class:`NodeOutput`) is a labeled cloud and the ``~/instances`` with the same stamp.
Scoring a map: each point of an output's labeled cloud (the voxel-de-duplicated accumulated map in
the fixed frame) takes the labels of the nearest point of the accumulated ground-truth cloud (every
finite input point of the frames up to the output's stamp, moved by the generator's exact camera
pose) when one lies within the map's voxel size, and counts as unlabelled (void) otherwise. Each
output is one evaluation frame (its instances' point masks, classes and scores against the objects
in its map), accumulated over all outputs as the ScanNet evaluator does
(``mask3d_ros.evaluation.ap``); :func:`score` also follows the instance ids across outputs.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from scipy.spatial import cKDTree

from mask3d_ros.evaluation.ap import MIN_REGION_SIZE, APResult, evaluate
from mask3d_ros.evaluation.predictions import InstancePredictions, from_instances
from mask3d_ros.model.results import Instance
from mask3d_ros.ros.cloud import read_points, xyz_rgb_from_cloud
from mask3d_ros.ros.poses import transform_points
from mask3d_ros.tools.bag import GroundTruth, deserialize_rclpy, read_messages, stamp_ns
from mask3d_ros.tools.harness import DIAGNOSTICS_TOPIC, INSTANCES_TOPIC, LABELED_CLOUD_TOPIC, pipeline_values

# --- reading ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeOutput:
    """One result of the node: the labeled cloud and the instances with the same stamp."""

    stamp_ns: int
    frame_id: str
    received_ns: int  # log time in the recorded bag: receive time on the recorder's clock
    points: np.ndarray  # structured: x y z rgb label instance_id score (LABELED_CLOUD_DTYPE)
    instances: tuple[Instance, ...]  # as published: center and size in the cloud's frame

    @property
    def xyz(self) -> np.ndarray:
        return np.stack([self.points[axis] for axis in "xyz"], axis=1)


def _instance(message) -> Instance:
    center, size = message.center.position, message.size
    return Instance(int(message.id), int(message.class_id), message.class_name, float(message.score),
                    np.frombuffer(message.point_indices, np.uint32).astype(np.int64),
                    np.array([center.x, center.y, center.z]), np.array([size.x, size.y, size.z]))


def read_outputs(bag: Path, cloud_topic: str = LABELED_CLOUD_TOPIC,
                 instances_topic: str = INSTANCES_TOPIC) -> list[NodeOutput]:
    """The recorded results in stamp order; a labeled cloud counts once its instances are there too."""
    clouds, instances = {}, {}
    for message in read_messages(bag, [cloud_topic, instances_topic]):
        decoded = deserialize_rclpy(message.data, message.msgtype)
        key = stamp_ns(decoded.header.stamp)
        if message.topic == cloud_topic:
            clouds[key] = (message.log_time_ns, decoded)
        else:
            instances[key] = tuple(_instance(item) for item in decoded.instances)
    return [NodeOutput(key, clouds[key][1].header.frame_id, clouds[key][0], read_points(clouds[key][1]),
                       instances[key]) for key in sorted(clouds.keys() & instances.keys())]


def last_diagnostics(bag: Path) -> dict[str, str]:
    """Key/values of the node's newest pipeline status in the recorded bag ({} when none)."""
    values = [pipeline_values(deserialize_rclpy(message.data, message.msgtype))
              for message in read_messages(bag, [DIAGNOSTICS_TOPIC])]
    return next((found[-1] for found in reversed(values) if found), {})


# --- scoring against the ground truth --------------------------------------------------------


@dataclass(frozen=True)
class LabelledPoints:
    """Points with ground-truth labels, in the frame the node's outputs use."""

    xyz: np.ndarray  # float [N, 3]
    semantic: np.ndarray  # int [N], -1 unlabelled
    instance: np.ndarray  # int [N], 0 none

    @staticmethod
    def concatenate(parts: Sequence["LabelledPoints"]) -> "LabelledPoints":
        return LabelledPoints(*(np.concatenate([getattr(part, name) for part in parts])
                                for name in ("xyz", "semantic", "instance")))


def truth_points(bag: Path, truth: GroundTruth) -> dict[int, LabelledPoints]:
    """Per cloud stamp: the cloud's finite points, moved into the fixed frame by the generator's
    exact pose (left in the cloud frame when the truth has no poses), with their labels."""
    frames = {}
    for message in read_messages(bag, [truth.topic]):
        cloud = deserialize_rclpy(message.data, message.msgtype)
        key = stamp_ns(cloud.header.stamp)
        labels = truth.frame(key)
        xyz, _rgb, index = xyz_rgb_from_cloud(cloud)
        if labels.sensor_pose is not None:
            xyz = transform_points(labels.sensor_pose, xyz)
        frames[key] = LabelledPoints(xyz, labels.semantic.reshape(-1)[index], labels.instance.reshape(-1)[index])
    return frames


def label_by_nearest(reference: LabelledPoints, xyz: np.ndarray, max_distance: float) -> LabelledPoints:
    """``xyz`` with the labels of the nearest reference point within ``max_distance``, void beyond."""
    distance, nearest = cKDTree(reference.xyz).query(xyz, distance_upper_bound=max_distance)
    found = np.isfinite(distance)
    semantic, instance = np.full(len(xyz), -1, np.int64), np.zeros(len(xyz), np.int64)
    semantic[found], instance[found] = reference.semantic[nearest[found]], reference.instance[nearest[found]]
    return LabelledPoints(xyz, semantic, instance)


def output_predictions(output: NodeOutput, class_names: Sequence[str]) -> InstancePredictions:
    """The output's instances as point masks over its labeled cloud."""
    return from_instances(output.instances, len(output.points), class_names)


def map_truth(outputs: Sequence[NodeOutput], frames: Mapping[int, LabelledPoints],
              max_distance: float) -> list[LabelledPoints]:
    """Ground truth of every output's map points, from the accumulated ground truth up to its stamp
    (``max_distance``: the map's voxel size)."""
    labels = []
    for output in outputs:
        seen = LabelledPoints.concatenate([frames[key] for key in sorted(frames) if key <= output.stamp_ns])
        labels.append(label_by_nearest(seen, output.xyz, max_distance))
    return labels


def matched_ids(labels: LabelledPoints, output: NodeOutput, min_points: int = MIN_REGION_SIZE) -> dict[int, int]:
    """Ground-truth object -> id of the node's instance matching it at IoU > 0.5 (an AP50 match; at
    most one, the node's instances being disjoint), for objects with ``min_points`` map points."""
    objects, sizes = np.unique(labels.instance[labels.instance > 0], return_counts=True)
    matches = {}
    for obj, size in zip(objects[sizes >= min_points].tolist(), sizes[sizes >= min_points].tolist()):
        in_object = labels.instance == obj
        for instance in output.instances:
            inter = int(in_object[instance.indices].sum())
            if inter / (size + len(instance.indices) - inter) > 0.5:
                matches[obj] = instance.id
    return matches


def kept_ids(matches: Sequence[Mapping[int, int]]) -> tuple[int, int]:
    """(object matches that kept the instance id, object matches followed) over consecutive outputs:
    an object the node segments well in two outputs in a row must keep its id (the tracker's job;
    whether the model segments it well is what AP measures)."""
    pairs = [(first[obj], second[obj]) for first, second in zip(matches, matches[1:])
             for obj in first.keys() & second.keys()]
    return sum(a == b for a, b in pairs), len(pairs)


@dataclass(frozen=True)
class FrameRow:
    index: int
    stamp_ns: int
    input_points: int
    map_points: int | None  # None: no output with this stamp (dropped while the node was busy, or skipped)
    instances: int | None
    objects: int | None  # ground-truth objects with >= MIN_REGION_SIZE points in the map
    latency_ms: float | None


@dataclass(frozen=True)
class Score:
    rows: list[FrameRow]
    ap_all: APResult  # every output, accumulated
    ap_last: APResult  # the final map alone
    kept_ids: tuple[int, int]  # see kept_ids
    truth_coverage: float  # share of map points with a labelled ground-truth point within the bound
    outputs: list[NodeOutput]
    labels: list[LabelledPoints]  # ground truth of each output's map points


def score(outputs: Sequence[NodeOutput], truth: GroundTruth, frames: Mapping[int, LabelledPoints],
          published_ns: Mapping[int, int], voxel_size: float) -> Score:
    """Per-frame rows, AP and id stability of the node's outputs (see the module docstring); map
    points take the labels of ground truth within ``voxel_size``, the map's grid."""
    labels = map_truth(outputs, frames, voxel_size)
    evaluated = [(label.semantic, label.instance, output_predictions(output, truth.class_names))
                 for output, label in zip(outputs, labels)]
    by_stamp = {output.stamp_ns: (output, label) for output, label in zip(outputs, labels)}
    rows = []
    for index, key in enumerate(truth.stamps.tolist()):
        output, label = by_stamp.get(key, (None, None))
        objects = None
        if label is not None:
            _ids, sizes = np.unique(label.instance[label.instance > 0], return_counts=True)
            objects = int((sizes >= MIN_REGION_SIZE).sum())
        latency = None
        if output is not None and key in published_ns:
            latency = (output.received_ns - published_ns[key]) / 1e6
        rows.append(FrameRow(index, key, len(frames[key].xyz), None if output is None else len(output.points),
                             None if output is None else len(output.instances), objects, latency))
    matches = [matched_ids(label, output) for output, label in zip(outputs, labels)]
    return Score(rows, evaluate(evaluated, truth.class_names, truth.instance_classes),
                 evaluate(evaluated[-1:], truth.class_names, truth.instance_classes),
                 kept_ids(matches), float(np.mean(np.concatenate([label.semantic >= 0 for label in labels]))),
                 list(outputs), labels)
