"""The node's own work around the model, without ROS transport (what the latency rows are made of).

Per cloud (the subscription callback): decode the Kinect frame and add it to the rolling map with
the tabletop parameters file's de-duplication grid and point bound (one frame), against a
field-by-field decode plus ``np.unique`` de-duplication. Per result (the worker thread, besides
the model): instance selection, stable ids, boxes, labeled cloud, InstanceArray and markers,
against the bundled model's forward on the same map (one thread, as the node runs it): the ratio
says how many times cheaper than the model the output side is.
"""
from __future__ import annotations

import numpy as np
import torch
import yaml
from std_msgs.msg import Header

from mask3d_ros.model.files import bundled_checkpoint
from mask3d_ros.model.segmenter import Segmenter
from mask3d_ros.ros.accumulator import RollingMap
from mask3d_ros.ros.cloud import create_cloud, xyz_rgb_from_cloud
from mask3d_ros.ros.markers import MarkerBuilder, MarkerStyle
from mask3d_ros.ros.model_runner import ModelRunner
from mask3d_ros.ros.outputs import (
    LABELED_CLOUD_DTYPE,
    InstanceTracker,
    add_boxes,
    build_instance_array,
    labeled_records,
    select_instances,
)
from mask3d_ros.tools.bench.clouds import DECODE_BASELINE, baseline_decode, baseline_voxelize
from mask3d_ros.tools.bench.core import Row, race
from mask3d_ros.tools.harness import PARAMS_FILE, package_root


def tabletop_accumulation() -> dict:
    """The ``accumulation`` parameters of config/mask3d_tabletop.yaml (installed or in the source tree)."""
    return yaml.safe_load((package_root() / PARAMS_FILE).read_text())["/**"]["ros__parameters"]["accumulation"]


def accumulate_closures(msg, voxel_size: float, max_points: int):
    """(ours, baseline, map): decode + RollingMap.add, and decode + np.unique de-duplication."""
    rolling = RollingMap(voxel_size, max_frames=1, max_points=max_points)
    pose, stamp = np.eye(4), iter(range(1, 10**9))

    def ours():
        xyz, rgb, _ = xyz_rgb_from_cloud(msg)
        rolling.add(xyz, rgb, pose, next(stamp) * 10**8)

    def baseline():
        xyz, rgb, _ = baseline_decode(msg)
        first = baseline_voxelize(xyz, voxel_size)[1]
        return xyz[first], rgb[first]

    return ours, baseline, rolling


def output_closure(snap, seg):
    """Everything the worker does with a result before publishing it."""
    tracker, builder, header = InstanceTracker(0.05), MarkerBuilder(), Header(frame_id="camera")

    def outputs():
        selected = tracker.assign(snap.xyz, select_instances(seg, 0.5, 50, 50, []))
        add_boxes(snap.xyz, selected)
        create_cloud(header, LABELED_CLOUD_DTYPE, labeled_records(snap.xyz, selected, snap.rgb))
        build_instance_array(header, selected)
        builder.build(header, selected.instances, MarkerStyle())
        return selected

    return outputs


def node_work_rows(frame, repeats: int) -> list[Row]:
    """Per-cloud and per-result rows for one Kinect frame."""
    accumulation = tabletop_accumulation()
    ours, baseline, rolling = accumulate_closures(frame.msg, accumulation["voxel_size"], accumulation["max_points"])
    times = race({"ours": ours, "baseline": baseline}, repeats)
    snap = rolling.snapshot()
    rows = [Row(f"per cloud: decode + accumulate ({accumulation['voxel_size'] * 1000:g} mm map, 1 frame): {frame.name}",
                min(times["ours"]), "ms",
                f"{DECODE_BASELINE} + np.unique de-duplication", min(times["baseline"]),
                f"{len(snap):,} map points; best of {repeats}", extra={"map_points": len(snap)})]
    runner = ModelRunner(lambda: Segmenter(None, bundled_checkpoint(), device="cpu"), "cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        seg = runner.segment(snap.xyz, snap.rgb)
        outputs = output_closure(snap, seg)
        times = race({"outputs": outputs, "model": lambda: runner.segment(snap.xyz, snap.rgb)}, repeats)
    finally:
        torch.set_num_threads(threads)
    kept = len(outputs().instances)
    rows.append(Row(f"per result: selection, ids, boxes, labeled cloud, InstanceArray, markers: {frame.name}",
                    min(times["outputs"]), "ms", "bundled model forward on the same map, 1 thread",
                    min(times["model"]), f"{len(snap):,} points, {kept} instances kept of {len(seg.instances)};"
                    f" best of {repeats}", extra={"points": len(snap), "instances": kept}))
    return rows
