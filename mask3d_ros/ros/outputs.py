"""What the node publishes, built from plain data: the segmentation contract, instance selection,
stable instance ids, the labeled cloud records, the InstanceArray and the vision_msgs messages.

:class:`PointSegmentation` is all the node needs from a model: per-point instance id (0 none),
class id and score, plus the instances with their point indices. Any callable
``segment(xyz float32 [N, 3], rgb uint8 [N, 3]) -> PointSegmentation`` can drive the node.

Nothing here imports rclpy. Message classes are passed in or imported lazily, so the
vision_msgs builders are tested with stand-ins where vision_msgs is not installed.
"""
from __future__ import annotations

import array
import colorsys
from dataclasses import replace

import numpy as np

from mask3d_ros import msg as mask3d_msgs
from mask3d_ros.model.results import PointSegmentation
from mask3d_ros.model.voxel import grid_keys, sorted_unique

LABELED_CLOUD_DTYPE = np.dtype({
    "names": ["x", "y", "z", "rgb", "label", "instance_id", "score"],
    "formats": ["<f4", "<f4", "<f4", "<f4", "<u4", "<u4", "<f4"],
    "offsets": [0, 4, 8, 12, 16, 20, 24],
    "itemsize": 28,
})


# --- selection -----------------------------------------------------------------------------


def select_instances(seg: PointSegmentation, score_threshold: float = 0.0, min_points: int = 1,
                     max_instances: int = 0, class_filter=()) -> PointSegmentation:
    """Keep instances with score >= threshold, >= min_points points, a class in ``class_filter``
    (names or ids as text; empty keeps all), at most ``max_instances`` (0: no limit) by score.
    Points of dropped instances become unassigned. Returns a new object."""
    wanted = {str(c) for c in class_filter}
    kept = [inst for inst in seg.instances
            if inst.score >= score_threshold and len(inst.indices) >= min_points
            and (not wanted or inst.class_name in wanted or str(inst.class_id) in wanted)]
    kept.sort(key=lambda inst: -inst.score)
    if max_instances > 0:
        kept = kept[:max_instances]
    if len(kept) == len(seg.instances):
        return replace(seg, instances=kept)
    out = PointSegmentation.empty(len(seg))
    out.timings_ms = dict(seg.timings_ms)
    for inst in kept:
        out.instance_id[inst.indices] = inst.id
        out.class_id[inst.indices] = seg.class_id[inst.indices]
        out.score[inst.indices] = seg.score[inst.indices]
    out.instances = kept
    return out


# --- stable ids --------------------------------------------------------------------------


class InstanceTracker:
    """Gives each instance an id that persists across inferences.

    An instance keeps the id of the previous inference's instance of the same class whose voxels
    (on a grid of ``voxel_size``, in the fixed frame) overlap it most, if that intersection over
    union reaches ``min_iou``; otherwise it gets a new id. Ids are never reused. Only the previous
    inference is remembered, so memory is bounded.
    """

    def __init__(self, voxel_size: float = 0.05, min_iou: float = 0.2):
        self.voxel_size = voxel_size
        self.min_iou = min_iou
        self.reset()

    def reset(self) -> None:
        self._next_id = 1
        self._prev_keys = np.empty(0, np.int64)  # sorted (voxel key) of previous (key, id) pairs
        self._prev_ids = np.empty(0, np.int64)
        self._prev_sizes: dict[int, int] = {}
        self._prev_classes: dict[int, int] = {}

    def _pairs(self, xyz: np.ndarray, instances) -> tuple[np.ndarray, np.ndarray, dict[int, int]]:
        """Sorted (voxel key, instance id) pairs of the instances' points, and each instance's voxel count."""
        if not instances:
            return np.empty(0, np.int64), np.empty(0, np.int64), {}
        counts = [len(inst.indices) for inst in instances]
        rows = np.concatenate([inst.indices for inst in instances])
        inside_keys, inside = grid_keys(np.take(xyz, rows, axis=0), self.voxel_size)  # instance points only
        point_keys = inside_keys
        if not inside.all():        # -1: a point outside the key range
            point_keys = np.full(len(inside), -1, np.int64)
            point_keys[inside] = inside_keys
        keys, owners, sizes = [], [], {}
        for inst, part in zip(instances, np.split(point_keys, np.cumsum(counts)[:-1])):
            k = sorted_unique(part)
            k = k[k >= 0]
            keys.append(k)
            owners.append(np.full(len(k), inst.id, np.int64))
            sizes[inst.id] = len(k)
        keys, owners = np.concatenate(keys), np.concatenate(owners)
        order = np.argsort(keys, kind="stable")
        return keys[order], owners[order], sizes

    def assign(self, xyz: np.ndarray, seg: PointSegmentation) -> PointSegmentation:
        """A copy of ``seg`` whose instance ids are the stable ones."""
        keys, owners, sizes = self._pairs(np.asarray(xyz), seg.instances)
        mapping: dict[int, int] = {}
        if len(keys) and len(self._prev_keys):
            left = np.searchsorted(self._prev_keys, keys, "left")
            count = np.searchsorted(self._prev_keys, keys, "right") - left
            total = int(count.sum())
            if total:
                # every (new key row, previous key row) pair with the same voxel key, vectorised
                new_rows = np.repeat(np.arange(len(keys)), count)
                offsets = np.arange(total) - np.repeat(np.cumsum(count) - count, count)
                prev_rows = np.repeat(left, count) + offsets
                pair_new, pair_prev = owners[new_rows], self._prev_ids[prev_rows]
                base = int(pair_prev.max()) + 1
                codes, inter = np.unique(pair_new * base + pair_prev, return_counts=True)
                classes = {inst.id: inst.class_id for inst in seg.instances}
                candidates = []
                for code, n in zip(codes.tolist(), inter.tolist()):
                    new_id, prev_id = divmod(code, base)
                    if classes[new_id] != self._prev_classes[prev_id]:
                        continue
                    iou = n / (sizes[new_id] + self._prev_sizes[prev_id] - n)
                    if iou >= self.min_iou:
                        candidates.append((iou, new_id, prev_id))
                used_prev = set()
                for _iou, new_id, prev_id in sorted(candidates, reverse=True):
                    if new_id not in mapping and prev_id not in used_prev:
                        mapping[new_id] = prev_id
                        used_prev.add(prev_id)
        for inst in seg.instances:  # by descending score: new ids in score order
            if inst.id not in mapping:
                mapping[inst.id] = self._next_id
                self._next_id += 1
        out = relabel(seg, mapping)
        # remember this inference under the stable ids
        self._prev_keys = keys
        if len(owners):
            unique, inverse = np.unique(owners, return_inverse=True)
            self._prev_ids = np.array([mapping[int(u)] for u in unique], np.int64)[inverse.reshape(-1)]
        else:
            self._prev_ids = owners
        self._prev_sizes = {mapping[i]: s for i, s in sizes.items()}
        self._prev_classes = {mapping[inst.id]: inst.class_id for inst in seg.instances}
        return out


def relabel(seg: PointSegmentation, mapping: dict[int, int]) -> PointSegmentation:
    """Copy of ``seg`` with instance ids replaced through ``mapping`` (old -> new)."""
    instance_id = np.zeros_like(seg.instance_id)
    instances = []
    for inst in seg.instances:
        new = mapping[inst.id]
        instance_id[inst.indices] = new
        instances.append(replace(inst, id=new))
    return replace(seg, instance_id=instance_id, instances=instances)


# --- geometry and colours -----------------------------------------------------------------


def add_boxes(xyz: np.ndarray, seg: PointSegmentation) -> PointSegmentation:
    """Fill each instance's axis-aligned box (centre, size) from its points, in place."""
    columns = np.ascontiguousarray(np.asarray(xyz).T)     # [3, N]: reductions along contiguous rows
    for inst in seg.instances:
        if len(inst.indices) == 0:
            inst.center, inst.size = np.zeros(3), np.zeros(3)
            continue
        points = np.take(columns, inst.indices, axis=1)
        lo, hi = points.min(1).astype(np.float64), points.max(1).astype(np.float64)
        inst.center, inst.size = (lo + hi) / 2.0, hi - lo
    return seg


def instance_colour(instance_id: int) -> tuple[int, int, int]:
    """A distinct, stable colour per instance id (golden-ratio hue walk)."""
    hue = (instance_id * 0.6180339887498949) % 1.0
    saturation = 0.55 + 0.35 * ((instance_id * 0.37) % 1.0)
    r, g, b = colorsys.hsv_to_rgb(hue, saturation, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def packed_point_colours(seg: PointSegmentation, input_rgb: np.ndarray | None) -> np.ndarray:
    """uint32 ``[N]`` packed ``0x00RRGGBB``: the instance colour, or the dimmed grey of the input
    colour elsewhere (a flat grey without input colours)."""
    n = len(seg)
    if input_rgb is not None and len(input_rgb) == n:
        rgb = np.asarray(input_rgb)
        grey = (rgb[:, 0].astype(np.uint32) * 77 + rgb[:, 1].astype(np.uint32) * 150
                + rgb[:, 2].astype(np.uint32) * 29) >> 9                   # half luminance
    else:
        grey = np.full(n, 60, np.uint32)
    packed = grey * np.uint32(0x010101)
    if seg.instances:
        slot = np.zeros(n, np.int64)            # 0: no instance, k: the k-th instance
        for k, inst in enumerate(seg.instances, 1):
            slot[inst.indices] = k
        palette = np.array([0] + [(r << 16) | (g << 8) | b for r, g, b in map(instance_colour, (
            inst.id for inst in seg.instances))], np.uint32)
        packed = np.where(slot > 0, np.take(palette, slot), packed)
    return packed


def labeled_records(xyz: np.ndarray, seg: PointSegmentation, input_rgb: np.ndarray | None = None) -> np.ndarray:
    """Structured array (LABELED_CLOUD_DTYPE) of the labeled cloud, one row per input point."""
    n = len(xyz)
    if len(seg) != n:
        raise ValueError(f"segmentation has {len(seg)} points, the cloud {n}")
    records = np.empty(n, LABELED_CLOUD_DTYPE)
    records["x"], records["y"], records["z"] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    records["rgb"] = packed_point_colours(seg, input_rgb).view(np.float32)
    records["label"] = seg.class_id
    records["instance_id"] = seg.instance_id
    records["score"] = seg.score
    return records


# --- messages ------------------------------------------------------------------------------


def _pose(msg_pose, center) -> None:
    msg_pose.position.x, msg_pose.position.y, msg_pose.position.z = (float(v) for v in center)
    msg_pose.orientation.x = msg_pose.orientation.y = msg_pose.orientation.z = 0.0
    msg_pose.orientation.w = 1.0


def build_instance_array(header, seg: PointSegmentation, msg_module=None):
    """mask3d_ros/InstanceArray with one entry per instance (boxes filled by add_boxes)."""
    msg_module = msg_module or mask3d_msgs
    out = msg_module.InstanceArray()
    out.header = header
    for inst in sorted(seg.instances, key=lambda i: -i.score):
        item = msg_module.Instance()
        item.id = int(inst.id)
        item.class_id = int(inst.class_id)
        item.class_name = inst.class_name
        item.score = float(inst.score)
        if inst.center is not None:
            _pose(item.center, inst.center)
            item.size.x, item.size.y, item.size.z = (float(v) for v in inst.size)
        item.point_count = int(len(inst.indices))
        indices = array.array("I")
        indices.frombytes(np.ascontiguousarray(inst.indices, dtype=np.uint32).tobytes())
        item.point_indices = indices  # array.array: a numpy array or list is converted element by element
        out.instances.append(item)
    return out


def build_detections(vision_msgs, header, seg: PointSegmentation):
    """vision_msgs/Detection3DArray (Humble/Jazzy 4.x API) from the instances.

    ``vision_msgs`` is the ``vision_msgs.msg`` module, or a stand-in with the same classes
    (Detection3DArray, Detection3D, ObjectHypothesisWithPose).
    """
    out = vision_msgs.Detection3DArray()
    out.header = header
    for inst in sorted(seg.instances, key=lambda i: -i.score):
        detection = vision_msgs.Detection3D()
        detection.header = header
        detection.id = str(inst.id)
        hypothesis = vision_msgs.ObjectHypothesisWithPose()
        hypothesis.hypothesis.class_id = str(inst.class_id)
        hypothesis.hypothesis.score = float(inst.score)
        if inst.center is not None:
            _pose(hypothesis.pose.pose, inst.center)
            _pose(detection.bbox.center, inst.center)
            detection.bbox.size.x, detection.bbox.size.y, detection.bbox.size.z = (float(v) for v in inst.size)
        detection.results.append(hypothesis)
        out.detections.append(detection)
    return out


def build_label_info(vision_msgs, header, class_names, threshold: float):
    """vision_msgs/LabelInfo: the class map (id -> name) and the score threshold."""
    out = vision_msgs.LabelInfo()
    out.header = header
    for class_id, name in enumerate(class_names):
        item = vision_msgs.VisionClass()
        item.class_id = class_id
        item.class_name = name
        out.class_map.append(item)
    out.threshold = float(threshold)
    return out


def import_vision_msgs():
    """The vision_msgs.msg module if it is installed and has the Humble/Jazzy API, else None."""
    try:
        from vision_msgs import msg as vision_msgs  # noqa: PLC0415 - optional
    except ImportError:
        return None
    needed = ("Detection3DArray", "Detection3D", "ObjectHypothesisWithPose", "LabelInfo", "VisionClass")
    if not all(hasattr(vision_msgs, name) for name in needed) or \
            not hasattr(vision_msgs.ObjectHypothesisWithPose(), "hypothesis"):
        return None  # Foxy-era API (ObjectHypothesisWithPose.id / .score): not supported
    return vision_msgs
