"""``mask3d-ros-make-bag``: write point-cloud frames as a rosbag2 (mcap) to replay into the node.

    mask3d-ros-make-bag OUT --synthetic [--frames 24] [--resolution 320x240] [--seed 0] [--ideal]
    mask3d-ros-make-bag OUT --files DIR_OR_FILE [...]        # .pcd / .ply, natural name order
        [--rate 2] [--start 1700000000] [--topic /camera/depth/color/points]
        [--frame-id camera_color_optical_frame] [--fixed-frame odom] [--base-frame base_link]
        [--odom-topic /odom] [--overwrite]

Every frame becomes one organised ``sensor_msgs/PointCloud2`` (x, y, z, packed float ``rgb``;
``intensity`` too when a file has it; NaN where nothing returned, ``is_dense`` false then) stamped
``start + i / rate``, logged at its stamp. Label fields of files are not copied into the clouds.

A synthetic sequence (a camera circling a table, from ``mask3d_ros.data.synthetic``) also carries its
poses, as a moving robot's drivers would publish them: ``/tf`` (tf2_msgs/TFMessage,
``fixed_frame -> base_frame`` per frame), ``/tf_static`` (``base_frame -> frame_id``, the fixed
camera mount :data:`CAMERA_MOUNT`, offered transient-local) and ``/odom`` (nav_msgs/Odometry of
``base_frame`` in ``fixed_frame``, twist by finite differences, in the body frame); pose messages
of a frame are logged just before its cloud. :func:`odometry_parameters` gives the node parameters
that use them. Ground truth for scoring goes to ``OUT/ground_truth.npz`` (``mask3d_ros.tools.bag.GroundTruth``):
always for synthetic frames, for files when every file carries labels (mOSD ``label``, or our
PLY ``semantic``/``instance``).
"""
from __future__ import annotations

import argparse
import re
import shutil
import sys
import time
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


def _natural_key(path: Path) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def point_files(paths: Sequence[str | Path]) -> list[Path]:
    """Files as given; folders expand to their .pcd/.ply files in natural order (2 before 10)."""
    files = []
    for path in map(Path, paths):
        if path.is_dir():
            found = (p for p in path.iterdir() if p.suffix.lower() in POINT_FILE_SUFFIXES)
            files.extend(sorted(found, key=_natural_key))
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


# --- command line ---------------------------------------------------------------------------


def _progress(items, total: int, enabled: bool):
    if not enabled:
        return items

    return tqdm(items, total=total, unit="frame", desc="writing", file=sys.stderr)


def _resolution(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)x(\d+)", text)
    if not match:
        raise argparse.ArgumentTypeError(f"resolution must be WIDTHxHEIGHT, e.g. 320x240, not {text!r}")
    return int(match[1]), int(match[2])


def _start_ns(text: str) -> int:
    if text == "now":
        return time.time_ns()
    try:
        return round(float(text) * NS_PER_S)
    except ValueError:
        raise argparse.ArgumentTypeError(f"start must be seconds since the epoch or 'now', not {text!r}") from None


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, not {text}")
    return value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="mask3d-ros-make-bag", description=__doc__.split("\n\n")[0].split(": ", 1)[1],
        epilog="Ground truth for scoring is written to OUT/ground_truth.npz (see mask3d_ros.tools.bag.GroundTruth).")
    parser.add_argument("out", type=Path, help="bag folder to create (rosbag2, mcap storage)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--synthetic", action="store_true", help="a camera circling a synthetic tabletop, with poses")
    source.add_argument("--files", nargs="+", metavar="PATH", help=".pcd/.ply files or folders of them")
    synthetic = parser.add_argument_group("synthetic sequence")
    synthetic.add_argument("--frames", type=int, default=24, help="number of frames (default 24)")
    synthetic.add_argument("--resolution", type=_resolution, default=(320, 240), help="WIDTHxHEIGHT (default 320x240)")
    synthetic.add_argument("--seed", type=int, default=0, help="scene and noise seed (default 0)")
    synthetic.add_argument("--arc-degrees", type=float, default=360.0, help="arc the camera travels (default 360)")
    synthetic.add_argument("--ideal", action="store_true", help="no Kinect noise: exact surface points")
    defaults = BagLayout()
    layout = parser.add_argument_group("topics, frames and timing")
    layout.add_argument("--rate", type=_positive, default=defaults.rate_hz,
                        help=f"frames per second (default {defaults.rate_hz:g})")
    layout.add_argument("--start", type=_start_ns, default=defaults.start_ns,
                        help="stamp of the first frame, seconds since the epoch or 'now' (default 1700000000)")
    layout.add_argument("--topic", default=defaults.points_topic, help=f"cloud topic (default {defaults.points_topic})")
    layout.add_argument("--frame-id", default=defaults.frame_id, help=f"cloud frame (default {defaults.frame_id})")
    layout.add_argument("--fixed-frame", default=defaults.fixed_frame,
                        help=f"world frame of the poses (default {defaults.fixed_frame})")
    layout.add_argument("--base-frame", default=defaults.base_frame,
                        help=f"moving body frame (default {defaults.base_frame})")
    layout.add_argument("--odom-topic", default=defaults.odom_topic,
                        help=f"odometry topic (default {defaults.odom_topic})")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it is an existing bag")
    return parser.parse_args(argv)


def _ros_arg(value) -> str:
    return "[" + ",".join(f"{v:g}" for v in value) + "]" if isinstance(value, list) else str(value)


def _clear_output(out: Path, overwrite: bool) -> None:
    if not out.exists():
        return
    if not overwrite:
        raise SystemExit(f"{out} exists; pass --overwrite to replace it")
    if not (out / "metadata.yaml").exists() and any(out.iterdir()):
        raise SystemExit(f"{out} exists and is not a rosbag2 folder (no metadata.yaml); not removing it")
    shutil.rmtree(out)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    _clear_output(args.out, args.overwrite)
    layout = BagLayout(args.topic, args.frame_id, args.fixed_frame, args.base_frame, args.odom_topic,
                       args.rate, args.start)
    started = time.monotonic()
    if args.synthetic:
        width, height = args.resolution
        print(f"rendering {args.frames} synthetic frames ({width}x{height}, seed {args.seed})", file=sys.stderr)
        truth = write_synthetic_bag(args.out, args.seed, args.frames, width, height, args.ideal, args.arc_degrees,
                                    layout, progress=True)
        print("node parameters for these poses: " + " ".join(
            f"-p {name}:={_ros_arg(value)}" for name, value in odometry_parameters(layout).items()), file=sys.stderr)
    else:
        truth = write_files_bag(args.out, args.files, layout, progress=True)
    labels = "ground truth in ground_truth.npz" if truth is not None else "no ground truth (not every file has labels)"
    print(f"wrote {args.out} in {time.monotonic() - started:.1f} s; {labels}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
