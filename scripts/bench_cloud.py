#!/usr/bin/env python3
"""Benchmark: decode + voxelise a PointCloud2 with mask3d_ros against a straightforward baseline.

Frames: a 307,200-point mOSD Kinect frame (a PointCloud2 built from its PCD) and a 131,072-point
Ouster OS1-64 scan from the rosbag2. The baseline decodes field by field (one ``np.frombuffer``
per field over that field's bytes) and voxelises with ``np.unique(axis=0)``; both paths must give
identical results before anything is timed. Prints a markdown table of best-of-N timings.

    python scripts/bench_cloud.py [--shared ../shared] [--repeat 15] [--voxel-size 0.02]
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # runnable from a plain checkout

from mask3d_ros.cloud import create_cloud, xyz_rgb_from_cloud  # noqa: E402
from mask3d_ros.pointfile import read_pcd  # noqa: E402
from mask3d_ros.voxel import voxelize  # noqa: E402

NUMPY_TYPES = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 8: "f8"}


def baseline_decode(msg):
    """Field-by-field decode as commonly hand-written: copy each field's bytes, frombuffer them."""
    endian = ">" if msg.is_bigendian else "<"
    rows = np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height, msg.row_step)
    records = rows[:, :msg.width * msg.point_step].reshape(-1, msg.point_step)
    columns = {}
    for field in msg.fields:
        if field.name in ("x", "y", "z", "rgb", "rgba"):
            dtype = np.dtype(endian + NUMPY_TYPES[field.datatype])
            chunk = records[:, field.offset:field.offset + dtype.itemsize].tobytes()
            columns[field.name] = np.frombuffer(chunk, dtype)
    xyz = np.column_stack([columns["x"], columns["y"], columns["z"]]).astype(np.float32)
    finite = np.isfinite(xyz).all(axis=1)
    packed = columns.get("rgb", columns.get("rgba"))
    rgb = None
    if packed is not None:
        bits = packed.view(packed.dtype.str.replace("f", "u"))
        rgb = np.column_stack([(bits >> 16) & 255, (bits >> 8) & 255, bits & 255]).astype(np.uint8)[finite]
    return xyz[finite], rgb, np.flatnonzero(finite)


def baseline_voxelize(xyz, voxel_size):
    """np.unique(axis=0) then reorder voxels by first occurrence (Mask3D's order)."""
    coords = np.floor(xyz / np.float32(voxel_size)).astype(np.int32)
    unique, first, inverse = np.unique(coords, axis=0, return_index=True, return_inverse=True)
    order = np.argsort(first)
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return unique[order], first[order].astype(np.int64), rank[inverse.reshape(-1)].astype(np.int64)


def best_ms(function, repeat):
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def load_frames(shared: Path):
    mosd = read_pcd(shared / "data" / "mosd" / "val" / "test1.pcd")
    yield "mOSD Kinect 640x480", create_cloud(None, None, mosd.grid())

    from rclpy.serialization import deserialize_message
    from rosbags.highlevel import AnyReader
    from sensor_msgs.msg import PointCloud2

    with AnyReader([shared / "data" / "ouster_os1_64" / "ouster_os1_rosbag2_mcap"]) as reader:
        connections = [c for c in reader.connections if c.msgtype == "sensor_msgs/msg/PointCloud2"]
        _, _, raw = next(reader.messages(connections=connections))
    yield "Ouster OS1-64 64x2048", deserialize_message(raw, PointCloud2)


def check_same(msg, voxel_size):
    ours = xyz_rgb_from_cloud(msg)
    theirs = baseline_decode(msg)
    for mine, reference in zip(ours, theirs):
        assert (mine is None and reference is None) or np.array_equal(mine, reference)
    for mine, reference in zip(voxelize(ours[0], voxel_size), baseline_voxelize(theirs[0], voxel_size)):
        assert np.array_equal(mine, reference)
    return len(ours[0]), len(voxelize(ours[0], voxel_size)[0])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared", help="the ../shared data directory")
    parser.add_argument("--repeat", type=int, default=15, help="best of this many runs")
    parser.add_argument("--voxel-size", type=float, default=0.02)
    args = parser.parse_args()

    print("| frame | points (kept / voxels) | step | baseline ms | mask3d_ros ms | speed-up |")
    print("|---|---|---|---:|---:|---:|")
    for name, msg in load_frames(args.shared):
        kept, voxels = check_same(msg, args.voxel_size)
        xyz = xyz_rgb_from_cloud(msg)[0]
        steps = {
            "decode": (lambda: baseline_decode(msg), lambda: xyz_rgb_from_cloud(msg)),
            "voxelize": (lambda: baseline_voxelize(xyz, args.voxel_size), lambda: voxelize(xyz, args.voxel_size)),
            "decode + voxelize": (lambda: baseline_voxelize(baseline_decode(msg)[0], args.voxel_size),
                                  lambda: voxelize(xyz_rgb_from_cloud(msg)[0], args.voxel_size)),
        }
        for step, (baseline, ours) in steps.items():
            baseline_ms, ours_ms = best_ms(baseline, args.repeat), best_ms(ours, args.repeat)
            print(f"| {name} | {msg.width * msg.height:,} ({kept:,} / {voxels:,}) | {step} | {baseline_ms:.1f}"
                  f" | {ours_ms:.1f} | {baseline_ms / ours_ms:.1f}x |")


if __name__ == "__main__":
    main()
