"""PointCloud2 decode + voxelize: the project's codec and voxelizer against a plain baseline.

Frames: a 640x480 organized Kinect frame (NaN where no return, packed float ``rgb``) and a
64x2048 Ouster OS1-64 scan (x, y, z, intensity, t, reflectivity, ring, noise, range). Real ones
from ``../shared`` when present (mOSD val, the Ouster rosbag2), else generated ones of the same
layout, so the command runs on a user's clone. The baseline decodes field by field, one
``np.frombuffer`` per field over that field's bytes (as sensor_msgs_py and hand-written code do),
and voxelizes with ``np.unique(axis=0)``; both must give identical results before anything is timed.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rclpy.serialization import deserialize_message
from rosbags.highlevel import AnyReader
from sensor_msgs.msg import PointCloud2
from std_msgs.msg import Header

from mask3d_ros.data.colors import pack_rgb
from mask3d_ros.data.pointfile import read_pcd
from mask3d_ros.data.synthetic import generate_frame
from mask3d_ros.model.voxel import voxelize
from mask3d_ros.ros.cloud import create_cloud, xyz_rgb_from_cloud
from mask3d_ros.tools.bench.core import Row, race

DECODE_BASELINE = "field-by-field np.frombuffer decode"
VOXELIZE_BASELINE = "np.unique(axis=0) voxelize"
NUMPY_TYPES = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 8: "f8"}
KINECT_DTYPE = np.dtype({"names": ["x", "y", "z", "rgb"], "formats": ["<f4"] * 4})
OUSTER_DTYPE = np.dtype({
    "names": ["x", "y", "z", "intensity", "t", "reflectivity", "ring", "noise", "range"],
    "formats": ["<f4", "<f4", "<f4", "<f4", "<u4", "<u2", "<u2", "<u2", "<u4"],
    "offsets": [0, 4, 8, 16, 20, 24, 26, 28, 32], "itemsize": 48})


@dataclass
class Frame:
    name: str
    msg: object  # sensor_msgs/PointCloud2
    source: str


# --- baseline --------------------------------------------------------------------------------


def baseline_decode(msg):
    """Field-by-field decode as commonly hand-written: copy each field's bytes, frombuffer them."""
    endian = ">" if msg.is_bigendian else "<"
    rows = np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height, msg.row_step)
    records = rows[:, :msg.width * msg.point_step].reshape(-1, msg.point_step)
    columns = {}
    for spec in msg.fields:
        if spec.name in ("x", "y", "z", "rgb", "rgba"):
            dtype = np.dtype(endian + NUMPY_TYPES[spec.datatype])
            chunk = records[:, spec.offset:spec.offset + dtype.itemsize].tobytes()
            columns[spec.name] = np.frombuffer(chunk, dtype)
    xyz = np.column_stack([columns["x"], columns["y"], columns["z"]]).astype(np.float32)
    finite = np.isfinite(xyz).all(axis=1)
    packed = columns.get("rgb", columns.get("rgba"))
    rgb = None
    if packed is not None:
        bits = packed.view(packed.dtype.str.replace("f", "u"))
        rgb = np.column_stack([(bits >> 16) & 255, (bits >> 8) & 255, bits & 255]).astype(np.uint8)[finite]
    return xyz[finite], rgb, np.flatnonzero(finite)


def baseline_voxelize(xyz, voxel_size):
    """np.unique(axis=0), then voxels reordered by first occurrence (Mask3D's order)."""
    coords = np.floor(xyz / np.float32(voxel_size)).astype(np.int32)
    unique, first, inverse = np.unique(coords, axis=0, return_index=True, return_inverse=True)
    order = np.argsort(first)
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return unique[order], first[order].astype(np.int64), rank[inverse.reshape(-1)].astype(np.int64)


# --- frames ----------------------------------------------------------------------------------


def kinect_cloud(xyz: np.ndarray, rgb: np.ndarray, frame_id: str = "camera_rgb_optical_frame"):
    """An organized driver-style cloud (x, y, z, packed float rgb) from [H, W, 3] arrays."""
    records = np.zeros(xyz.shape[:2], KINECT_DTYPE)
    records["x"], records["y"], records["z"] = np.moveaxis(xyz.astype(np.float32), -1, 0)
    records["rgb"] = pack_rgb(rgb.astype(np.uint8))
    return create_cloud(Header(frame_id=frame_id), KINECT_DTYPE, records)


def mosd_cloud(path: Path):
    """A mOSD PCD (label, x, y, z, rgba) as the camera driver would have published it."""
    grid = read_pcd(path).grid()
    bits = grid["rgba"].astype(np.uint32)
    rgb = np.stack([(bits >> 16) & 255, (bits >> 8) & 255, bits & 255], axis=-1)
    xyz = np.stack([grid["x"], grid["y"], grid["z"]], axis=-1)
    return kinect_cloud(xyz, rgb)


def synthetic_kinect_cloud(seed: int = 0):
    """A 640x480 frame of the project's simulated Kinect (open3d ray casting, about 1 s)."""
    frame = generate_frame(seed)
    return kinect_cloud(frame.xyz, frame.rgb)


def ouster_cloud(bag_dir: Path):
    """The first PointCloud2 of the Ouster rosbag2, as the node receives it."""
    with AnyReader([bag_dir]) as reader:
        connections = [c for c in reader.connections if c.msgtype == "sensor_msgs/msg/PointCloud2"]
        _, _, raw = next(reader.messages(connections=connections))
    return deserialize_message(raw, PointCloud2)


def synthetic_lidar_cloud(rows: int = 64, columns: int = 2048, seed: int = 0):
    """An OS1-64-layout scan from the middle of a 12 x 8 x 3 m box room (every beam returns)."""
    rng = np.random.default_rng(seed)
    elevation = np.radians(np.linspace(16.6, -16.6, rows))[:, None]
    azimuth = np.radians(np.linspace(0, 360, columns, endpoint=False))[None, :]
    direction = np.stack(np.broadcast_arrays(np.cos(elevation) * np.cos(azimuth),
                                             np.cos(elevation) * np.sin(azimuth), np.sin(elevation)), -1)
    half = np.array([6.0, 4.0, 1.5])  # the sensor 1.5 m above the floor
    with np.errstate(divide="ignore"):
        distance = np.min(np.where(direction != 0, half / np.abs(direction), np.inf), axis=-1)
    distance += rng.normal(0, 0.01, distance.shape)
    records = np.zeros((rows, columns), OUSTER_DTYPE)
    xyz = (direction * distance[..., None]).astype(np.float32)
    records["x"], records["y"], records["z"] = np.moveaxis(xyz, -1, 0)
    records["intensity"] = rng.uniform(0, 1000, distance.shape)
    records["ring"] = np.arange(rows)[:, None]
    records["range"] = (distance * 1000).astype(np.uint32)
    return create_cloud(Header(frame_id="os1_lidar"), OUSTER_DTYPE, records)


def kinect_frame(shared: Path | None) -> Frame:
    """mOSD val/test1 when ``shared`` holds it, else a simulated frame."""
    mosd = None if shared is None else shared / "data" / "mosd" / "val" / "test1.pcd"
    if mosd is not None and mosd.is_file():
        return Frame("Kinect 640x480 (mOSD val/test1)", mosd_cloud(mosd), "real")
    return Frame("Kinect 640x480 (synthetic)", synthetic_kinect_cloud(), "synthetic")


def load_frames(shared: Path | None) -> list[Frame]:
    """The Kinect and LiDAR frames: real ones from ``shared`` when there, else generated."""
    bag = None if shared is None else shared / "data" / "ouster_os1_64" / "ouster_os1_rosbag2_mcap"
    frames = [kinect_frame(shared)]
    if bag is not None and bag.is_dir():
        frames.append(Frame("Ouster OS1-64 64x2048 (rosbag2)", ouster_cloud(bag), "real"))
    else:
        frames.append(Frame("LiDAR 64x2048 (synthetic)", synthetic_lidar_cloud(), "synthetic"))
    return frames


# --- rows --------------------------------------------------------------------------------------


def check_same(msg, voxel_size: float) -> tuple[int, int]:
    """Both paths must agree exactly; returns (finite points, voxels)."""
    ours, theirs = xyz_rgb_from_cloud(msg), baseline_decode(msg)
    for mine, reference in zip(ours, theirs):
        if not ((mine is None and reference is None) or np.array_equal(mine, reference)):
            raise AssertionError("the codec and the baseline decode differ")
    voxels = voxelize(ours[0], voxel_size)
    for mine, reference in zip(voxels, baseline_voxelize(theirs[0], voxel_size)):
        if not np.array_equal(mine, reference):
            raise AssertionError("the voxelizer and np.unique differ")
    return len(ours[0]), len(voxels[0])


def cloud_rows(frames: list[Frame], voxel_size: float, repeats: int) -> list[Row]:
    """Best-of-``repeats`` ms for decode, voxelize and both, ours against the baseline."""
    rows = []
    for frame in frames:
        msg = frame.msg
        kept, voxels = check_same(msg, voxel_size)
        xyz = xyz_rgb_from_cloud(msg)[0]
        steps = {
            "decode": (lambda: xyz_rgb_from_cloud(msg), lambda: baseline_decode(msg), DECODE_BASELINE),
            "voxelize": (lambda: voxelize(xyz, voxel_size), lambda: baseline_voxelize(xyz, voxel_size),
                         VOXELIZE_BASELINE),
            "decode + voxelize": (lambda: voxelize(xyz_rgb_from_cloud(msg)[0], voxel_size),
                                  lambda: baseline_voxelize(baseline_decode(msg)[0], voxel_size),
                                  f"{DECODE_BASELINE} + {VOXELIZE_BASELINE}"),
        }
        points = msg.width * msg.height
        for step, (ours, baseline, baseline_name) in steps.items():
            times = race({"ours": ours, "baseline": baseline}, repeats)
            rows.append(Row(
                f"{step}: {frame.name}", min(times["ours"]), "ms",
                baseline_name, min(times["baseline"]),
                f"{points:,} points, {kept:,} finite, {voxels:,} voxels at {voxel_size:g} m; best of {repeats}",
                extra={"points": points, "finite": kept, "voxels": voxels, "source": frame.source}))
    return rows
