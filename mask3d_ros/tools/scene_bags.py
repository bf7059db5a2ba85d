"""Bags of point-cloud frames to replay into the node, as a camera driver would have recorded them
(what ``mask3d-ros-make-bag`` writes; its help says what the bags hold).

:func:`write_synthetic_bag`: a synthetic tabletop sequence (a camera circling a table) with the
poses a moving robot's drivers publish (/tf, /tf_static with the camera mount :data:`CAMERA_MOUNT`,
/odom), and :func:`odometry_parameters`, the node parameters that use them. :func:`write_files_bag`:
PCD/PLY files as clouds, without poses. Frames are stamped by a :class:`BagLayout`, and both write
the ground truth beside the bag (``mask3d_ros.tools.bag.GroundTruth``) when they have it.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
from builtin_interfaces.msg import Time
from nav_msgs.msg import Odometry
from scipy.spatial.transform import Rotation
from std_msgs.msg import Header
from tqdm import tqdm

from mask3d_ros.data import synthetic
from mask3d_ros.data.colors import colors_from_points, intensity_from_points, pack_rgb
from mask3d_ros.data.datasets import IGNORE, MOSD_CLASSES, MOSD_INSTANCE_CLASSES, load_scene
from mask3d_ros.data.pointfile import read_point_file
from mask3d_ros.ros.cloud import create_cloud
from mask3d_ros.ros.poses import matrix_from_pose, pose_from_matrix
from mask3d_ros.tools.bag import (
    NS_PER_S,
    TF_STATIC_TOPIC,
    BagMessage,
    BagWriter,
    GroundTruth,
    qos,
    serialize_rclpy,
    serialize_typestore,
    split_stamp,
    typestore,
)
from mask3d_ros.tools.cli import natural_key

DEFAULT_START_NS = 1_700_000_000 * NS_PER_S
"""Stamp of the first frame unless told otherwise: fixed, so a bag is the same every time it is made."""
POINT_FILE_SUFFIXES = (".pcd", ".ply")
OPTICAL_IN_BODY_XYZW = (-0.5, 0.5, -0.5, 0.5)
"""Rotation of an optical frame (x right, y down, z forward) in a body frame (x forward, z up)."""
CAMERA_MOUNT = matrix_from_pose((0.10, 0.0, 0.05), OPTICAL_IN_BODY_XYZW)
"""base_frame_T_frame_id of synthetic bags: the camera 10 cm ahead of and 5 cm above base_link."""
CLOUD_XYZRGB = np.dtype({"names": ["x", "y", "z", "rgb"], "formats": ["<f4"] * 4, "offsets": [0, 4, 8, 12]})


@dataclass(frozen=True)
class BagLayout:
    """Topic names, frame ids and timing of a made bag."""

    points_topic: str = "/camera/depth/color/points"
    frame_id: str = "camera_color_optical_frame"
    fixed_frame: str = "odom"
    base_frame: str = "base_link"
    odom_topic: str = "/odom"
    rate_hz: float = 2.0
    start_ns: int = DEFAULT_START_NS

    def stamp(self, index: int) -> int:
        return self.start_ns + round(index * NS_PER_S / self.rate_hz)


def odometry_parameters(layout: BagLayout = BagLayout()) -> dict:
    """Node parameters for accumulating a synthetic bag with ``pose_source: odometry``."""
    translation, rotation = pose_from_matrix(CAMERA_MOUNT)
    return {
        "pose_source": "odometry",
        "fixed_frame": layout.fixed_frame,
        "odom_topic": layout.odom_topic,
        "odometry.body_frame": layout.base_frame,
        "odometry.sensor_frame": layout.frame_id,
        "odometry.body_to_sensor": [float(v) for v in (*translation, *rotation)],
    }


# --- messages -------------------------------------------------------------------------------


def cloud_message(records: np.ndarray, stamp_ns: int, layout: BagLayout) -> BagMessage:
    """One PointCloud2 of a (height, width) or (N,) structured array, logged at its stamp."""
    sec, nanosec = split_stamp(stamp_ns)
    cloud = create_cloud(Header(stamp=Time(sec=sec, nanosec=nanosec), frame_id=layout.frame_id), None, records)
    return BagMessage(layout.points_topic, "sensor_msgs/msg/PointCloud2", stamp_ns, serialize_rclpy(cloud))


def _transform(stamp_ns: int, parent: str, child: str, matrix: np.ndarray):
    """geometry_msgs/TransformStamped (type store) of parent_T_child."""
    types = typestore().types
    translation, rotation = pose_from_matrix(matrix)
    sec, nanosec = split_stamp(stamp_ns)
    return types["geometry_msgs/msg/TransformStamped"](
        header=types["std_msgs/msg/Header"](stamp=types["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec),
                                            frame_id=parent),
        child_frame_id=child,
        transform=types["geometry_msgs/msg/Transform"](
            translation=types["geometry_msgs/msg/Vector3"](*map(float, translation)),
            rotation=types["geometry_msgs/msg/Quaternion"](*map(float, rotation))))


def tf_message(topic: str, stamp_ns: int, transforms: Sequence[tuple[str, str, np.ndarray]]) -> BagMessage:
    """tf2_msgs/TFMessage of (parent, child, parent_T_child) transforms, all at ``stamp_ns``."""
    message = typestore().types["tf2_msgs/msg/TFMessage"](
        transforms=[_transform(stamp_ns, parent, child, matrix) for parent, child, matrix in transforms])
    return BagMessage(topic, "tf2_msgs/msg/TFMessage", stamp_ns, serialize_typestore(message))


def body_twist(pose: np.ndarray, next_pose: np.ndarray, dt_s: float) -> tuple[np.ndarray, np.ndarray]:
    """(linear, angular) velocity in the body frame that moves ``pose`` to ``next_pose`` in ``dt_s``."""
    rotation = pose[:3, :3]
    linear = rotation.T @ (next_pose[:3, 3] - pose[:3, 3]) / dt_s
    angular = Rotation.from_matrix(rotation.T @ next_pose[:3, :3]).as_rotvec() / dt_s
    return linear, angular


def odometry_message(stamp_ns: int, body_pose: np.ndarray, twist: tuple[np.ndarray, np.ndarray],
                     layout: BagLayout) -> BagMessage:
    message = Odometry()
    message.header.stamp.sec, message.header.stamp.nanosec = split_stamp(stamp_ns)
    message.header.frame_id = layout.fixed_frame
    message.child_frame_id = layout.base_frame
    translation, rotation = pose_from_matrix(body_pose)
    position, orientation = message.pose.pose.position, message.pose.pose.orientation
    position.x, position.y, position.z = map(float, translation)
    orientation.x, orientation.y, orientation.z, orientation.w = map(float, rotation)
    linear, angular = twist
    message.twist.twist.linear.x, message.twist.twist.linear.y, message.twist.twist.linear.z = map(float, linear)
    message.twist.twist.angular.x, message.twist.twist.angular.y, message.twist.twist.angular.z = map(float, angular)
    return BagMessage(layout.odom_topic, "nav_msgs/msg/Odometry", stamp_ns, serialize_rclpy(message))


def _with_next(items: Iterable) -> Iterator[tuple[object, object | None]]:
    """(item, the item after it or None), lazily."""
    iterator = iter(items)
    try:
        current = next(iterator)
    except StopIteration:
        return
    for following in iterator:
        yield current, following
        current = following
    yield current, None


def synthetic_records(frame) -> np.ndarray:
    """(height, width) x, y, z, rgb records of a synthetic frame."""
    records = np.empty(frame.xyz.shape[:2], CLOUD_XYZRGB)
    for axis, name in enumerate("xyz"):
        records[name] = frame.xyz[..., axis]
    records["rgb"] = pack_rgb(frame.rgb)
    return records


def synthetic_frames(seed: int, num_frames: int, width: int, height: int, ideal: bool, arc_degrees: float):
    """The generator's moving-camera sequence (the one place that depends on its API)."""
    return synthetic.sequence(seed, num_frames, synthetic.Camera.kinect(width, height),
                              None if ideal else synthetic.KinectNoise(), arc_degrees=arc_degrees)


def write_synthetic_bag(path: str | Path, seed: int = 0, num_frames: int = 24, width: int = 320, height: int = 240,
                        ideal: bool = False, arc_degrees: float = 360.0, layout: BagLayout = BagLayout(),
                        progress: bool = False) -> GroundTruth:
    """A synthetic tabletop sequence as a bag with poses (see the module docstring); returns its ground truth."""
    frames = synthetic_frames(seed, num_frames, width, height, ideal, arc_degrees)
    sensor_poses, semantic, instance = [], [], []
    dt_s, twist = 1.0 / layout.rate_hz, (np.zeros(3), np.zeros(3))
    with BagWriter(path, compress=True) as writer:
        writer.add_topic(TF_STATIC_TOPIC, "tf2_msgs/msg/TFMessage", [qos(reliable=True, transient_local=True, depth=1)])
        writer.write_message(tf_message(TF_STATIC_TOPIC, layout.start_ns,
                                        [(layout.base_frame, layout.frame_id, CAMERA_MOUNT)]))
        for index, (frame, next_frame) in enumerate(_progress(_with_next(frames), num_frames, progress)):
            stamp = layout.stamp(index)
            body_pose = frame.camera_pose @ np.linalg.inv(CAMERA_MOUNT)
            if next_frame is not None:
                twist = body_twist(body_pose, next_frame.camera_pose @ np.linalg.inv(CAMERA_MOUNT), dt_s)
            writer.write_message(tf_message("/tf", stamp, [(layout.fixed_frame, layout.base_frame, body_pose)]))
            writer.write_message(odometry_message(stamp, body_pose, twist, layout))
            writer.write_message(cloud_message(synthetic_records(frame), stamp, layout))
            sensor_poses.append(frame.camera_pose)
            semantic.append(frame.semantic)
            instance.append(frame.instance)
    truth = GroundTruth(layout.points_topic, layout.frame_id, MOSD_CLASSES, MOSD_INSTANCE_CLASSES,
                        np.array([layout.stamp(i) for i in range(len(semantic))], np.int64),
                        tuple(semantic), tuple(instance), layout.fixed_frame, np.stack(sensor_poses))
    truth.save(path)
    return truth


# --- point files ----------------------------------------------------------------------------


def point_files(paths: Sequence[str | Path]) -> list[Path]:
    """Files as given; folders expand to their .pcd/.ply files in natural order (2 before 10)."""
    files = []
    for path in map(Path, paths):
        if path.is_dir():
            found = (p for p in path.iterdir() if p.suffix.lower() in POINT_FILE_SUFFIXES)
            files.extend(sorted(found, key=natural_key))
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    if not files:
        raise FileNotFoundError(f"no .pcd or .ply files in {', '.join(map(str, paths))}")
    return files


def file_records(points: np.ndarray) -> np.ndarray:
    """x, y, z, packed rgb (when coloured) and intensity (when present) of a file's records."""
    missing = [axis for axis in "xyz" if axis not in points.dtype.names]
    if missing:
        raise ValueError(f"points have no {', '.join(missing)} field (fields: {list(points.dtype.names)})")
    colours, intensity = colors_from_points(points), intensity_from_points(points)
    names = ["x", "y", "z"] + ([] if colours is None else ["rgb"]) + ([] if intensity is None else ["intensity"])
    records = np.empty(points.shape, np.dtype({"names": names, "formats": ["<f4"] * len(names)}))
    for axis in "xyz":
        records[axis] = points[axis]
    if colours is not None:
        records["rgb"] = pack_rgb(colours)
    if intensity is not None:
        records["intensity"] = intensity
    return records


def _has_labels(points: np.ndarray) -> bool:
    names = set(points.dtype.names)
    return "label" in names or {"semantic", "instance"} <= names


def _file_labels(path: Path, points: np.ndarray):
    """(semantic, instance) shaped like ``points`` and the scene's classes, via ``datasets.load_scene``."""
    scene = load_scene(path)
    flat = points.reshape(-1)
    finite = np.flatnonzero(np.isfinite(flat["x"]) & np.isfinite(flat["y"]) & np.isfinite(flat["z"]))
    if len(finite) != len(scene.xyz):
        raise ValueError(f"{path}: the labelled scene has {len(scene.xyz)} points, the file {len(finite)} finite ones")
    semantic = np.full(flat.shape, IGNORE, np.int64)
    instance = np.zeros(flat.shape, np.int64)
    semantic[finite], instance[finite] = scene.semantic, scene.instance
    return semantic.reshape(points.shape), instance.reshape(points.shape), scene.class_names, scene.instance_classes


def write_files_bag(path: str | Path, files: Sequence[str | Path], layout: BagLayout = BagLayout(),
                    progress: bool = False) -> GroundTruth | None:
    """PCD/PLY frames as a bag of clouds (no poses); returns the ground truth when every file has labels."""
    files = point_files(files)
    labels, classes, all_labelled = [], set(), True
    with BagWriter(path, compress=True) as writer:
        for index, file in enumerate(_progress(files, len(files), progress)):
            points = read_point_file(file).grid()  # (1, N) when not organised, like PointCloud2
            writer.write_message(cloud_message(file_records(points), layout.stamp(index), layout))
            all_labelled = all_labelled and _has_labels(points)
            if all_labelled:
                semantic, instance, class_names, instance_classes = _file_labels(file, points)
                labels.append((semantic, instance))
                classes.add((class_names, instance_classes))
    if not all_labelled or len(classes) != 1:
        return None
    (class_names, instance_classes), = classes
    truth = GroundTruth(layout.points_topic, layout.frame_id, class_names, instance_classes,
                        np.array([layout.stamp(i) for i in range(len(files))], np.int64),
                        tuple(s for s, _ in labels), tuple(i for _, i in labels))
    truth.save(path)
    return truth


def _progress(items, total: int, enabled: bool):
    if not enabled:
        return items
    return tqdm(items, total=total, unit="frame", desc="writing", file=sys.stderr)
