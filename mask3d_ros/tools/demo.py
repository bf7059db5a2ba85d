"""``mask3d-ros-demo``: the README's main job, the node on a generated bag, end to end and offline.

    mask3d-ros-demo [--checkpoint W.ckpt | --random-weights] [--frames 16] [--resolution 320x240]
        [--seed 5] [--rate 0.5] [--out build/demo] [--pose-source odometry|tf] [--window N]
        [--score-threshold S] [--domain-id N] [--no-progress]

As a robot team tests perception by replaying a bag, the demo

1. renders a synthetic tabletop sequence (a Kinect-like camera circling a table) and writes it as a
   rosbag2 with the camera poses (/odom, /tf) and the ground truth (``OUT/input_bag``);
2. starts the node as its own process exactly as a user would, ``mask3d_node --ros-args
   --params-file config/mask3d_tabletop.yaml -p use_sim_time:=true -p pose_source:=odometry ...``
   (the command is printed), accumulating every frame (``--window N``: the last N) in ``odom`` with
   poses from the bag;
3. replays the bag with /clock (``mask3d_ros.tools.replay.BagPlayer``), records ``~/labeled_cloud``,
   ``~/instances``, ``~/markers`` and ``/diagnostics`` into ``OUT/output_bag``, then stops the node
   with SIGINT, as Ctrl-C does;
4. prints a per-frame table and AP / AP50 / AP25 of the recorded outputs against the generator's
   ground truth, and draws the last labeled map with its instance boxes (``OUT/*.png``).

The model: ``--checkpoint``, else the bundled ``model/mask3d_tabletop.ckpt``; random weights only with
``--random-weights``.

Scoring. A labeled cloud is the voxel-de-duplicated accumulated map in the fixed frame: each of its
points is an input point moved by the odometry pose. A map point takes the labels of the nearest
point of the accumulated ground-truth cloud (every finite input point of the frames up to the
output's stamp, moved by the generator's exact camera pose) when one lies within the map's voxel
size (5 mm), and counts as unlabelled (void) otherwise. Each output is one evaluation frame (its
``~/instances`` point masks, classes and scores against the objects in its map), accumulated over
all outputs as the ScanNet evaluator does (``mask3d_ros.evaluation.ap``).

Latency is wall time, from the player publishing a cloud to the recorder receiving the labeled
cloud with the same stamp (one process, one clock). A frame without an output of its own was either
dropped by the node's latest-wins worker while it was busy (its points still entered the map) or
skipped (no pose); the node's /diagnostics counts say how many of each.

ROS isolation: the demo sets ``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST``, a ``ROS_DOMAIN_ID`` of its
own and the shared-memory Fast DDS profile ``config/fastdds_large_clouds.xml`` before anything
starts, so it never talks to a robot on the network or to local ROS processes of another domain;
the node inherits all three.
"""
from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Sequence

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.qos import QoSProfile
from tqdm import tqdm

from mask3d_ros.data.colors import unpack_rgb
from mask3d_ros.model.files import BUNDLED_CHECKPOINT, ModelError, bundled_checkpoint
from mask3d_ros.msg import InstanceArray
from mask3d_ros.ros.outputs import instance_colour
from mask3d_ros.tools.bag import stamp_ns
from mask3d_ros.tools.cli import positive, resolution, say
from mask3d_ros.tools.harness import (
    DIAGNOSTICS_TOPIC,
    INSTANCES_TOPIC,
    LABELED_CLOUD_TOPIC,
    MARKERS_TOPIC,
    PARAMS_FILE,
    NodeProcess,
    default_domain_id,
    exit_status,
    fastdds_profile,
    isolate_ros,
    node_command,
    node_failed,
    node_finished,
    node_parameters,
    package_root,
    pipeline_values,
    spun_graph,
)
from mask3d_ros.tools.recorded import (
    LabelledPoints,
    NodeOutput,
    Score,
    last_diagnostics,
    read_outputs,
    score,
    truth_points,
)
from mask3d_ros.tools.replay import BagPlayer, BagRecorder
from mask3d_ros.tools.scene_bags import BagLayout, odometry_parameters, write_synthetic_bag

REPLAY_POSE_TIMEOUT_S = 1.0
"""pose_timeout for the replay: the player, the recorder and the node share the CPU cores, so the
/odom sample logged just before a cloud can reach the node's buffer later than the live default
allows. Frames are >= 1 s apart."""
REPLAY_INPUT_DEPTH = 4
"""input_qos.depth for the replay: every cloud adds to the map and the cloud callback is cheap
(inference runs in the latest-wins worker), so a few queued clouds cost no growing latency, while
with depth 1 a cloud arriving during an executor stall is replaced by the next one and lost to the map."""
BAG_RATE_HZ = 2.0
CLOCK_HZ = 40.0
MAP_VOXEL_SIZE = 0.005
"""accumulation.voxel_size given to the node; also the distance bound of the ground-truth lookup."""
MAP_DBSCAN_EPS = 0.05
"""model.dbscan_eps for the accumulated map: a query's mask that spans two separate objects of the
map is split. Smaller than the model's own radius, which is tuned for single views, where 5 cm
splits objects seen on both sides of a nearer one; chosen on the held-out synthetic maps."""
RESULT_TIMEOUT_S = 120.0

_say = partial(say, "demo")


# --- the node and the replay ------------------------------------------------------------------


def demo_parameters(layout: BagLayout, checkpoint: Path | None, pose_source: str = "odometry",
                    window: int = 0, score_threshold: float | None = None) -> dict[str, object]:
    """Overrides of the tabletop parameters file for a bag made by ``write_synthetic_bag``: sim time,
    the bag's topics and poses, the last ``window`` frames in the map (0: all), the model."""
    overrides: dict[str, object] = {
        "use_sim_time": True, "accumulation.max_frames": window, "accumulation.voxel_size": MAP_VOXEL_SIZE,
        "pose_timeout": REPLAY_POSE_TIMEOUT_S, "input_qos.depth": REPLAY_INPUT_DEPTH}
    if pose_source == "odometry":
        overrides.update(odometry_parameters(layout))
    else:
        overrides.update({"pose_source": "tf", "fixed_frame": layout.fixed_frame})
    if checkpoint is not None:
        overrides["model.dbscan_eps"] = MAP_DBSCAN_EPS
    if score_threshold is not None:
        overrides["model.score_threshold"] = float(score_threshold)
    return node_parameters(layout.points_topic, checkpoint, overrides)



@dataclass(frozen=True)
class Replay:
    published_ns: dict[int, int]  # cloud stamp -> wall time (ns) it was published
    node_exit: int


def replay_through_node(command: Sequence[str], input_bag: Path, output_bag: Path, node_log: Path,
                        layout: BagLayout, pose_source: str, rate: float, progress: bool = True) -> Replay:
    """Start the node, replay ``input_bag`` into it with /clock, record its outputs, stop it (SIGINT)."""
    pose_inputs = [layout.odom_topic] if pose_source == "odometry" else ["/tf", "/tf_static"]
    with spun_graph("mask3d_demo") as graph:  # Ctrl-C: KeyboardInterrupt here
        answered: set[int] = set()
        graph.create_subscription(InstanceArray, INSTANCES_TOPIC, lambda msg: answered.add(stamp_ns(msg.header.stamp)),
                                  QoSProfile(depth=100))
        statuses: list[dict[str, str]] = []
        graph.create_subscription(DiagnosticArray, DIAGNOSTICS_TOPIC, lambda msg: statuses.extend(
            pipeline_values(msg)), QoSProfile(depth=10))
        recorder = None
        try:
            with NodeProcess(command, node_log) as node:
                recorder = BagRecorder(graph, output_bag, [LABELED_CLOUD_TOPIC, INSTANCES_TOPIC, MARKERS_TOPIC,
                                                           DIAGNOSTICS_TOPIC])
                player = BagPlayer(graph, input_bag, rate=rate, clock_hz=CLOCK_HZ,
                                   topics=[layout.points_topic, *pose_inputs])
                _say("waiting for the node to load the model and subscribe")
                waited = node.wait_ready(graph, [layout.points_topic, "/clock", pose_inputs[0]],
                                         [LABELED_CLOUD_TOPIC, INSTANCES_TOPIC, MARKERS_TOPIC])
                if not recorder.wait_until_subscribed(10.0) or not player.wait_for_subscribers(
                        1, 10.0, [layout.points_topic, pose_inputs[0]]):
                    raise node.fail("the recorder or the player did not connect to the node")
                _say(f"node ready after {waited:.0f} s; replaying at {rate:g}x with /clock")
                published: dict[int, int] = {}
                frames = player.info.topics[layout.points_topic].message_count
                with tqdm(total=frames, unit="frame", desc="replaying", file=sys.stderr, disable=not progress) as bar:
                    def on_message(message) -> None:
                        if message.topic == layout.points_topic:
                            published[message.log_time_ns] = time.time_ns()  # logged at its stamp (make_bag)
                            bar.set_postfix(answered=len(answered))
                            bar.update()
                        if node.process.poll() is not None:
                            player.stop()

                    player.play(on_message)
                node.check_running("during the replay")
                deadline = time.monotonic() + RESULT_TIMEOUT_S
                while not node_finished(statuses[-2:], len(published)) and time.monotonic() < deadline:
                    node.check_running("before finishing the last inference")
                    time.sleep(0.1)
                if not node_finished(statuses[-2:], len(published)):
                    _say(f"the node was still busy {RESULT_TIMEOUT_S:g} s after the replay; scoring what it answered")
                published_results = int(statuses[-1].get("results_published", 0)) if statuses else 0
                deadline = time.monotonic() + 10.0  # markers come last: let the recorder catch up
                while (len(answered) < published_results or recorder.counts.get(MARKERS_TOPIC, 0) < len(answered)) \
                        and time.monotonic() < deadline:
                    time.sleep(0.05)
                _say("stopping the node (SIGINT)")
                node_exit = node.stop()
        finally:
            if recorder is not None:
                recorder.close()
    return Replay(published, node_exit)


# --- pictures ---------------------------------------------------------------------------------

_BOX_EDGES = [(a, b) for a in range(8) for b in range(a + 1, 8) if bin(a ^ b).count("1") == 1]
PLOT_POINTS = 60_000  # points drawn in the 3D view (a random subset of the map)


def _box_corners(center: np.ndarray, size: np.ndarray) -> np.ndarray:
    signs = np.array([[(i >> 2) & 1, (i >> 1) & 1, i & 1] for i in range(8)]) - 0.5
    return center + signs * size


def draw_pictures(output: NodeOutput, labels: LabelledPoints, top_path: Path, view_path: Path) -> None:
    """Top view (the node's instances beside the ground truth) and a perspective view, with boxes."""
    import matplotlib  # noqa: PLC0415 - optional: only --plot draws, and pyplot needs its backend chosen first

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 - after the backend choice

    xyz, colours = output.xyz, unpack_rgb(output.points["rgb"]) / 255.0
    truth_colours = np.full((len(xyz), 3), 0.75)
    for obj in np.unique(labels.instance[labels.instance > 0]):
        truth_colours[labels.instance == obj] = np.array(instance_colour(int(obj))) / 255.0
    stamp = f"{output.stamp_ns / 1e9:.3f}"

    figure, (ours, theirs) = plt.subplots(1, 2, figsize=(15, 7.5), constrained_layout=True)
    for axes, point_colours, title in ((ours, colours, f"node output at {stamp}: {len(output.instances)} instances"),
                                       (theirs, truth_colours, "ground truth (colour per object)")):
        axes.scatter(xyz[:, 0], xyz[:, 1], c=point_colours, s=1.0, linewidths=0)
        axes.set(aspect="equal", title=title, xlabel=f"x [m] ({output.frame_id})", ylabel="y [m]")
    for instance in output.instances:
        (x, y, _z), (dx, dy, _dz) = instance.center, instance.size
        edge = np.array(instance_colour(instance.id)) / 255.0
        ours.add_patch(plt.Rectangle((x - dx / 2, y - dy / 2), dx, dy, fill=False, edgecolor=edge, linewidth=1.5))
        ours.annotate(f"#{instance.id} {instance.class_name} {instance.score:.2f}", (x - dx / 2, y + dy / 2),
                      fontsize=8, color=edge, va="bottom")
    figure.savefig(top_path, dpi=110)
    plt.close(figure)

    rows = np.random.default_rng(0).permutation(len(xyz))[:PLOT_POINTS]
    figure = plt.figure(figsize=(10, 8), constrained_layout=True)
    axes = figure.add_subplot(projection="3d")
    axes.scatter(*xyz[rows].T, c=colours[rows], s=0.8, linewidths=0, depthshade=False)
    for instance in output.instances:
        corners = _box_corners(instance.center, instance.size)
        edge = np.array(instance_colour(instance.id)) / 255.0
        for a, b in _BOX_EDGES:
            axes.plot(*corners[[a, b]].T, color=edge, linewidth=1.2)
        axes.text(*(instance.center + [0, 0, instance.size[2] / 2 + 0.02]), f"#{instance.id} {instance.score:.2f}",
                  fontsize=7, color=edge)
    axes.set_box_aspect(np.ptp(xyz, axis=0) + 1e-3)
    axes.view_init(elev=35, azim=-60)
    axes.set(title=f"labeled map at {stamp} ({len(xyz)} points, boxes = ~/instances)", xlabel="x [m]",
             ylabel="y [m]", zlabel="z [m]")
    figure.savefig(view_path, dpi=110)
    plt.close(figure)


# --- the demo ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoOptions:
    out: Path = Path("build/demo")
    checkpoint: Path | None = None  # None: random weights
    frames: int = 16
    width: int = 320
    height: int = 240
    seed: int = 5  # a table with 7 objects
    rate: float = 0.5  # playback speed factor of the 2 Hz bag
    pose_source: str = "odometry"
    window: int = 0  # accumulation.max_frames: 0 keeps every frame
    score_threshold: float | None = None  # None: the parameters file's
    progress: bool = True


@dataclass(frozen=True)
class DemoResult:
    score: Score
    node_stats: dict[str, str]
    node_exit: int
    node_command: list[str]
    paths: dict[str, Path]


def demo_paths(out: Path) -> dict[str, Path]:
    names = {"input_bag": "input_bag", "output_bag": "output_bag", "node_log": "node.log",
             "top_view": "instances_top.png", "perspective": "instances_3d.png", "summary": "summary.json"}
    return {key: out / name for key, name in names.items()}


def run(options: DemoOptions, root: Path | None = None) -> DemoResult:
    """Everything but argument parsing and the ROS environment (see the module docstring)."""
    root = root or package_root()
    paths = demo_paths(options.out)
    options.out.mkdir(parents=True, exist_ok=True)
    for bag in (paths["input_bag"], paths["output_bag"]):
        shutil.rmtree(bag, ignore_errors=True)
    layout = BagLayout(rate_hz=BAG_RATE_HZ)

    _say(f"rendering {options.frames} frames ({options.width}x{options.height}, seed {options.seed}) into"
         f" {paths['input_bag']}")
    truth = write_synthetic_bag(paths["input_bag"], options.seed, options.frames, options.width, options.height,
                                layout=layout, progress=options.progress)
    command = node_command(root / PARAMS_FILE, demo_parameters(layout, options.checkpoint, options.pose_source,
                                                                options.window, options.score_threshold))
    _say("starting the node: " + shlex.join(command))
    replay = replay_through_node(command, paths["input_bag"], paths["output_bag"], paths["node_log"], layout,
                                 options.pose_source, options.rate, options.progress)

    outputs = read_outputs(paths["output_bag"])
    if not outputs:
        raise node_failed(f"the node published no result for {options.frames} frames", paths["node_log"])
    _say(f"scoring {len(outputs)} recorded outputs against the ground truth")
    outcome = score(outputs, truth, truth_points(paths["input_bag"], truth), replay.published_ns, MAP_VOXEL_SIZE)
    draw_pictures(outcome.outputs[-1], outcome.labels[-1], paths["top_view"], paths["perspective"])
    result = DemoResult(outcome, last_diagnostics(paths["output_bag"]), replay.node_exit, command, paths)
    paths["summary"].write_text(json.dumps(summary_json(result), indent=1) + "\n")
    return result


def summary_json(result: DemoResult) -> dict:
    outcome = result.score
    return {
        "frames": [row.__dict__ for row in outcome.rows],
        "ap_all_outputs": outcome.ap_all.to_json(), "ap_final_map": outcome.ap_last.to_json(),
        "kept_ids": {"kept": outcome.kept_ids[0], "followed": outcome.kept_ids[1]},
        "truth_coverage": outcome.truth_coverage,
        "node_diagnostics": result.node_stats, "node_exit": result.node_exit, "node_command": result.node_command,
        "paths": {key: str(path) for key, path in result.paths.items()},
    }


def _cell(value, spec: str = ",") -> str:
    return "" if value is None else format(value, spec)


def format_report(result: DemoResult) -> str:
    """The per-frame table, AP, id stability, the node's own counters and where everything is."""
    outcome, stats = result.score, result.node_stats
    lines = ["", "frame  stamp [s]        input pts  map pts  instances  GT objects  latency [ms]"]
    for row in outcome.rows:
        if row.map_points is None:
            answer = "no output of its own (dropped while busy or skipped: see the node's counts)"
        else:
            answer = (f"{_cell(row.map_points):>7}  {_cell(row.instances):>9}  {_cell(row.objects):>10}"
                      f"  {_cell(row.latency_ms, ',.0f'):>12}")
        lines.append(f"{row.index:>5}  {row.stamp_ns / 1e9:<15.3f}  {row.input_points:>9,}  {answer}")
    answered = sum(row.map_points is not None for row in outcome.rows)
    lines += ["",
              "latency: wall time from publishing a cloud to receiving the labeled cloud with its stamp.",
              f"outputs: {answered} of {len(outcome.rows)} frames answered"
              + (f"; node /diagnostics: {stats.get('inferences', '?')} inferences, mean"
                 f" {float(stats.get('mean_inference_ms', 'nan')):.0f} ms, {stats.get('dropped_frames', '?')} requests"
                 f" dropped while busy, {stats.get('pose_failures', '?')} clouds without a pose" if stats else ""),
              "",
              "AP / AP50 / AP25 against the generator's ground truth (class 'object'; map points labelled by the"
              f" nearest ground-truth point within {MAP_VOXEL_SIZE * 1000:g} mm, found for"
              f" {outcome.truth_coverage:.1%} of them; far fewer would mean wrong poses):"]
    for name, ap in ((f"all {len(outcome.outputs)} outputs", outcome.ap_all), ("final map", outcome.ap_last)):
        lines.append(f"  {name:<16} {ap.AP:.3f} / {ap.AP50:.3f} / {ap.AP25:.3f}")
    kept, followed = outcome.kept_ids
    lines += [f"instance ids: {kept} of {followed} object matches (IoU > 0.5) in consecutive outputs kept their id",
              ""]
    lines += [f"{label:<13}{result.paths[key]}" for label, key in (
        ("top view:", "top_view"), ("3D view:", "perspective"), ("input bag:", "input_bag"),
        ("output bag:", "output_bag"), ("node log:", "node_log"), ("summary:", "summary"))]
    return "\n".join(lines)


# --- command line -------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    defaults = DemoOptions()
    parser = argparse.ArgumentParser(
        prog="mask3d-ros-demo", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Generate a tabletop bag, replay it through the node (its own process, sim time, odometry"
                    " poses, accumulation), record the outputs, print per-frame results and AP, draw pictures.",
        epilog=__doc__.split("\n\n", 2)[2])
    model = parser.add_mutually_exclusive_group()
    model.add_argument("--checkpoint", type=Path, help=f"model weights (default: the bundled {BUNDLED_CHECKPOINT})")
    model.add_argument("--random-weights", action="store_true", help="run untrained weights (plumbing only)")
    parser.add_argument("--frames", type=int, default=defaults.frames, help=f"frames (default {defaults.frames})")
    parser.add_argument("--resolution", type=resolution, default=(defaults.width, defaults.height),
                        help=f"WIDTHxHEIGHT (default {defaults.width}x{defaults.height})")
    parser.add_argument("--seed", type=int, default=defaults.seed,
                        help=f"scene seed (default {defaults.seed}: a table with 7 objects)")
    parser.add_argument("--rate", type=positive, default=defaults.rate,
                        help=f"playback speed of the {BAG_RATE_HZ:g} Hz bag (default {defaults.rate:g})")
    parser.add_argument("--out", type=Path, default=defaults.out, help=f"output folder (default {defaults.out})")
    parser.add_argument("--pose-source", choices=("odometry", "tf"), default=defaults.pose_source,
                        help="poses from the bag's /odom (default) or /tf (needs tf2_ros)")
    parser.add_argument("--window", type=int, default=defaults.window, metavar="N",
                        help="accumulate the last N frames (accumulation.max_frames; default 0: all)")
    parser.add_argument("--score-threshold", type=float,
                        help="model.score_threshold (default: the parameters file's)")
    parser.add_argument("--domain-id", type=int, default=default_domain_id(),
                        help="ROS_DOMAIN_ID of the demo's graph (default: one of 1..101 from the process id)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.frames < 2:
        parser.error("--frames must be at least 2")
    if args.window < 0:
        parser.error("--window must be 0 (all frames) or more")
    return args


def choose_checkpoint(args: argparse.Namespace) -> Path | None:
    """The weights to run (None: random weights); SystemExit with advice when there are none."""
    if args.random_weights:
        _say("RANDOM WEIGHTS (--random-weights): the plumbing runs, the results mean nothing")
        return None
    if args.checkpoint is not None:
        if not args.checkpoint.is_file():
            raise SystemExit(f"mask3d-ros-demo: no checkpoint {args.checkpoint}")
        return args.checkpoint.resolve()
    try:
        return bundled_checkpoint()
    except ModelError as error:
        raise SystemExit(f"mask3d-ros-demo: {error}. Pass --checkpoint W.ckpt, or --random-weights to run the"
                         " plumbing on untrained weights.") from None


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    root = package_root()
    checkpoint = choose_checkpoint(args)
    isolate_ros(args.domain_id, args.out.resolve() / "ros_log", root)
    _say(f"ROS graph: this machine only (ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST), ROS_DOMAIN_ID={args.domain_id},"
         f" Fast DDS profile {fastdds_profile()}")
    width, height = args.resolution
    options = DemoOptions(out=args.out, checkpoint=checkpoint, frames=args.frames, width=width, height=height,
                          seed=args.seed, rate=args.rate, pose_source=args.pose_source, window=args.window,
                          score_threshold=args.score_threshold, progress=not args.no_progress)
    started = time.monotonic()

    def demo() -> int:
        result = run(options, root)
        print(format_report(result))
        print(f"\ndone in {time.monotonic() - started:.0f} s")
        if result.node_exit != 0:
            print(f"mask3d-ros-demo: the node exited with status {result.node_exit} after SIGINT; see"
                  f" {result.paths['node_log']}", file=sys.stderr)
            return 1
        return 0

    return exit_status("mask3d-ros-demo", demo, failed_status=1)


if __name__ == "__main__":
    sys.exit(main())
