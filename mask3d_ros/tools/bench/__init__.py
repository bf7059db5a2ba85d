"""``mask3d-ros-bench``: the project's speed, each number beside a baseline measured in the same run.

    mask3d-ros-bench [--quick] [--json FILE] [--shared DIR] [--mosd DIR] [--only SECTION ...]

Sections (``--only`` picks some; all by default):

* ``codec``: PointCloud2 decode + voxelize of a 640x480 Kinect frame and a 64x2048 LiDAR scan,
  ``cloud.xyz_rgb_from_cloud`` + ``voxel.voxelize`` against a field-by-field decode + ``np.unique``
  (:mod:`.clouds`);
* ``node``: the node's work around the model without ROS transport: decode + rolling-map
  accumulation per cloud against a field-by-field decode + ``np.unique`` de-duplication, and the
  output side per result (selection, ids, boxes, labeled cloud, InstanceArray, markers) against
  the model forward on the same map (:mod:`.pipeline`);
* ``model``: the whole Segmenter forward at about 10k, 50k and 150k voxels for the bundled model
  and the ScanNet Res16UNet34C configuration on CPU, all torch threads against one thread, with peak
  memory per configuration from a child process; on CUDA also half precision against float32; with
  MinkowskiEngine importable also both models and a single sparse convolution on the torch
  backend against the same on MinkowskiEngine (:mod:`.models`, :mod:`.conv`);
* ``latency``: stamp-to-labeled-cloud latency through the running node at 1, 10 and 30 Hz with
  drop counts, against the node's own inference time (:mod:`.latency`).

Prints the machine, one markdown table and notes on what was skipped; ``--json`` writes the same.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from mask3d_ros.model import backends
from mask3d_ros.tools.bench import latency, models
from mask3d_ros.tools.bench.clouds import cloud_rows, kinect_frame, load_frames
from mask3d_ros.tools.bench.conv import conv_rows, surface_cloud, uniform_cloud
from mask3d_ros.tools.bench.core import Row, describe_machine, machine_description, markdown_table, write_json
from mask3d_ros.tools.bench.models import child_main
from mask3d_ros.tools.bench.pipeline import node_work_rows
from mask3d_ros.tools.harness import default_domain_id, isolate_ros

SECTIONS = ("codec", "node", "model", "latency")
REPO = Path(__file__).resolve().parents[3]


@dataclass(frozen=True)
class Plan:
    """How much to measure: ``--quick`` fits in about two minutes on a loaded 2-core machine."""

    codec_repeats: int
    node_repeats: int
    model_sizes: tuple[tuple[str, int, int], ...]  # (model, voxels, repeats)
    minkowski_sizes: tuple[tuple[str, int, int], ...]  # (model, voxels, repeats)
    rates: tuple[float, ...]
    rate_seconds: float
    min_frames: int
    latency_frames: int


FULL = Plan(
    codec_repeats=15, node_repeats=5,
    model_sizes=tuple((model, voxels, repeats) for model in ("tabletop", "scannet")   # post-stage medians:
                      for voxels, repeats in ((10_000, 15), (50_000, 5), (150_000, 2))),   # enough runs
    minkowski_sizes=tuple((model, voxels, repeats) for model in ("tabletop", "scannet")
                          for voxels, repeats in ((10_000, 3), (50_000, 2), (150_000, 1))),
    rates=(1.0, 10.0, 30.0), rate_seconds=15.0, min_frames=15, latency_frames=22)
QUICK = Plan(
    codec_repeats=3, node_repeats=2, model_sizes=(("tabletop", 10_000, 2), ("scannet", 10_000, 1)),
    minkowski_sizes=(("tabletop", 10_000, 2),),
    rates=(1.0, 10.0, 30.0), rate_seconds=1.0, min_frames=2, latency_frames=3)


def default_shared() -> Path:
    return Path(os.environ.get("MASK3D_ROS_SHARED", REPO.parent / "shared"))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="mask3d-ros-bench", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a reduced set (about two minutes)")
    parser.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    parser.add_argument("--shared", type=Path, default=default_shared(),
                        help="the ../shared data directory (real frames; generated ones when absent)")
    parser.add_argument("--mosd", type=Path, help="mOSD directory for the latency frames (default SHARED/data/mosd)")
    parser.add_argument("--only", action="append", choices=SECTIONS, help="run only this section (repeatable)")
    parser.add_argument("--voxel-size", type=float, default=0.02, help="voxel size of the codec rows (m)")
    parser.add_argument("--domain-id", type=int, default=default_domain_id(), help="private ROS_DOMAIN_ID")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def codec_section(args, plan: Plan, notes: list[str]) -> list[Row]:
    frames = load_frames(args.shared if args.shared.is_dir() else None)
    if any(frame.source == "synthetic" for frame in frames):
        notes.append(f"codec: {args.shared} has no real frames; generated frames of the same layout were used")
    return cloud_rows(frames, args.voxel_size, plan.codec_repeats)


def node_section(args, plan: Plan, notes: list[str]) -> list[Row]:
    return node_work_rows(kinect_frame(args.shared if args.shared.is_dir() else None), plan.node_repeats)


def model_section(plan: Plan, notes: list[str]) -> list[Row]:
    rows = []
    for model, voxels, repeats in plan.model_sizes:
        rows += models.cpu_model_rows(model, voxels, repeats)
    if torch.cuda.is_available():
        for model, voxels, repeats in plan.model_sizes:
            rows += models.cuda_model_rows(model, voxels, repeats)
    else:
        notes.append("CUDA is not available to torch here: the CUDA float32 / half-precision rows were skipped")
    if backends.minkowski_version() is not None:
        rows += conv_rows("surface", surface_cloud(), plan.codec_repeats)
        rows += conv_rows("uniform", uniform_cloud(), plan.codec_repeats)
        for model, voxels, repeats in plan.minkowski_sizes:
            rows += models.minkowski_rows(model, voxels, repeats)
    else:
        notes.append("MinkowskiEngine is not importable: no MinkowskiEngine rows; the model rows compare all"
                     " torch threads with one thread instead (MASK3D_ROS_MINKOWSKI=1 scripts/setup_env.sh builds it)")
    return rows


def latency_section(args, plan: Plan, notes: list[str]) -> list[Row]:
    mosd = args.mosd or (args.shared / "data" / "mosd")
    frames, source = latency.latency_frames(mosd if mosd.is_dir() else None, plan.latency_frames)
    log = Path(tempfile.gettempdir()) / f"mask3d_ros_bench_node_{os.getpid()}.log"
    results = latency.run_latency(frames, plan.rates, plan.rate_seconds, plan.min_frames, log)
    for result in results:
        if not result["latencies_ms"]:
            notes.append(f"latency at {result['rate_hz']:g} Hz: no labeled cloud arrived (node log: {log})")
    notes.append(f"latency: the node ran as its own process with OMP_NUM_THREADS="
                 f"{os.environ.get('OMP_NUM_THREADS', '1')} (as the demo starts it); log {log}")
    return latency.latency_rows([r for r in results if r["latencies_ms"]], source)


def run(args) -> tuple[dict, list[Row], list[str]]:
    """Every selected section; (machine, rows, notes)."""
    plan = QUICK if args.quick else FULL
    sections = args.only or list(SECTIONS)
    if "latency" in sections:  # before rclpy loads anywhere
        isolate_ros(args.domain_id, Path(tempfile.gettempdir()) / "mask3d_ros_bench_logs")
    machine = machine_description()
    rows: list[Row] = []
    notes: list[str] = []
    steps = {"codec": lambda: codec_section(args, plan, notes), "node": lambda: node_section(args, plan, notes),
             "model": lambda: model_section(plan, notes),
             "latency": lambda: latency_section(args, plan, notes)}
    for name in SECTIONS:
        if name in sections:
            try:
                rows += steps[name]()
            except Exception as error:  # noqa: BLE001 - one failing section must not lose the others
                notes.append(f"{name} section FAILED: {type(error).__name__}: {error}")
    return machine, rows, notes


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        return child_main(args.child)
    started = time.monotonic()
    machine, rows, notes = run(args)
    print(describe_machine(machine))
    print()
    print(markdown_table(rows))
    print()
    for note in notes:
        print(f"- {note}")
    elapsed = time.monotonic() - started
    print(f"\n{'quick' if args.quick else 'full'} benchmark: {elapsed:.0f} s wall time")
    if args.json:
        write_json(args.json, machine, rows, notes, {"quick": args.quick, "wall_time_s": elapsed,
                                                     "voxel_size": args.voxel_size,
                                                     "sections": args.only or list(SECTIONS)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
