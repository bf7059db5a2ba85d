#!/usr/bin/env python3
"""Benchmark the node's per-cloud and per-result work without ROS transport (median of N runs).

Per cloud (in the subscription callback): decode a real 640 x 480 Kinect frame from mOSD and merge
it into the rolling map, for two de-duplication voxel sizes. Per result (in the worker thread,
besides the model): instance selection, stable ids, boxes, labeled cloud, InstanceArray, markers.
Optionally the random-weight tabletop model on the map (--model). Prints a markdown table.

    python scripts/bench_node.py [--repeats 10] [--model] [--mosd ../shared/data/mosd]
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
from std_msgs.msg import Header

from mask3d_ros.accumulator import RollingMap
from mask3d_ros.cloud import create_cloud, xyz_rgb_from_cloud
from mask3d_ros.markers import MarkerBuilder, MarkerStyle
from mask3d_ros.outputs import (LABELED_CLOUD_DTYPE, InstanceSegmentation, InstanceTracker, add_boxes,
                                build_instance_array, labeled_records, select_instances)
from mask3d_ros.pointfile import read_pcd
from mask3d_ros.poses import matrix_from_pose

REPO = Path(__file__).resolve().parents[1]


def median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def grid_segmentation(xyz: np.ndarray, cell: float = 0.1) -> InstanceSegmentation:
    """A stand-in result: one instance per occupied cell with >= 20 points."""
    _, inverse, counts = np.unique(np.floor(xyz / cell).astype(np.int64), axis=0, return_inverse=True,
                                   return_counts=True)
    big = counts >= 20
    ids = np.full(len(counts), -1)
    ids[big] = np.arange(big.sum())
    n = int(big.sum())
    return InstanceSegmentation.from_point_instances(ids[inverse.reshape(-1)], np.arange(n) % 2,
                                                     np.full(n, 0.9, np.float32), ("table", "object"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--model", action="store_true", help="also time the random-weight tabletop model")
    parser.add_argument("--mosd", type=Path, default=REPO.parent / "shared" / "data" / "mosd")
    args = parser.parse_args()

    table = read_pcd(args.mosd / "val" / "test1.pcd")
    msg = create_cloud(Header(frame_id="camera"), table.points.dtype, table.grid())
    rows = []
    rows.append(("decode 640x480 cloud (finite xyz + rgb)", median_ms(lambda: xyz_rgb_from_cloud(msg), args.repeats)))
    for voxel in (0.005, 0.01):
        rolling = RollingMap(voxel, max_frames=0, max_points=300_000)
        step = iter(range(10**9))

        def add():
            i = next(step)
            xyz, rgb, _ = xyz_rgb_from_cloud(msg)
            rolling.add(xyz, rgb, matrix_from_pose((0.01 * i, 0, 0), (0, 0, 0, 1)), i * 10**8)

        rows.append((f"decode + accumulate, voxel {voxel} m", median_ms(add, args.repeats)))
        snap = rolling.snapshot()
    seg = grid_segmentation(snap.xyz)
    tracker, builder = InstanceTracker(0.05), MarkerBuilder()
    header = Header(frame_id="camera")

    def outputs():
        s = tracker.assign(snap.xyz, select_instances(seg, 0.5, 20, 100, []))
        add_boxes(snap.xyz, s)
        create_cloud(header, LABELED_CLOUD_DTYPE, labeled_records(snap.xyz, s, snap.rgb))
        build_instance_array(header, s)
        builder.build(header, s.instances, MarkerStyle())

    rows.append((f"outputs for {len(snap)} points, {len(seg.instances)} instances", median_ms(outputs, args.repeats)))
    if args.model:
        from mask3d_ros import params
        from mask3d_ros.inference import ModelRunner

        runner = ModelRunner.from_config(params.validate({"model.allow_random_weights": True, "model.device": "cpu"}))
        rows.append((f"tabletop model (random weights, cpu) on {len(snap)} points",
                     median_ms(lambda: runner.segment(snap.xyz, snap.rgb), max(1, args.repeats // 5))))
    print("| step | median ms |\n|---|---|")
    for name, ms in rows:
        print(f"| {name} | {ms:.1f} |")


if __name__ == "__main__":
    main()
