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
3. replays the bag with /clock (``mask3d_ros.tools.play_bag.BagPlayer``), records ``~/labeled_cloud``,
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
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import rclpy
import yaml
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import MultiThreadedExecutor
from rclpy.qos import QoSProfile
from rclpy.signals import SignalHandlerOptions
from scipy.spatial import cKDTree
from tqdm import tqdm

from mask3d_ros.data.colors import unpack_rgb
from mask3d_ros.evaluation.ap import MIN_REGION_SIZE, APResult, evaluate
from mask3d_ros.evaluation.predictions import InstancePredictions, from_instances
from mask3d_ros.model.files import BUNDLED_CHECKPOINT, ModelError, bundled_checkpoint, share_directory
from mask3d_ros.model.results import Instance
from mask3d_ros.msg import InstanceArray
from mask3d_ros.ros.cloud import read_points, xyz_rgb_from_cloud
from mask3d_ros.ros.outputs import instance_colour
from mask3d_ros.ros.poses import transform_points
from mask3d_ros.tools.bag import GroundTruth, deserialize_rclpy, read_messages, stamp_ns
from mask3d_ros.tools.make_bag import BagLayout, odometry_parameters, write_synthetic_bag
from mask3d_ros.tools.play_bag import BagPlayer
from mask3d_ros.tools.record_bag import BagRecorder

NODE_NAME = "mask3d"
LABELED_CLOUD_TOPIC = f"/{NODE_NAME}/labeled_cloud"
INSTANCES_TOPIC = f"/{NODE_NAME}/instances"
MARKERS_TOPIC = f"/{NODE_NAME}/markers"
DIAGNOSTICS_TOPIC = "/diagnostics"
PARAMS_FILE = Path("config/mask3d_tabletop.yaml")
FASTDDS_PROFILE = Path("config/fastdds_large_clouds.xml")
REPLAY_POSE_TIMEOUT_S = 1.0  # see node_parameters
REPLAY_INPUT_DEPTH = 4
BAG_RATE_HZ = 2.0
CLOCK_HZ = 40.0
MAP_VOXEL_SIZE = 0.005
"""accumulation.voxel_size given to the node; also the distance bound of the ground-truth lookup."""
MAP_DBSCAN_EPS = 0.05
"""model.dbscan_eps for the accumulated map: a query's mask that spans two separate objects of the
map is split. Chosen on the held-out synthetic maps, where it beats the model's own 0.12 m (tuned for
single views, where 5 cm splits objects seen on both sides of a nearer one)."""
READY_TIMEOUT_S = 180.0  # importing torch and loading the model on a busy 2-core machine
RESULT_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 15.0


def _say(message: str) -> None:
    print(f"[demo] {message}", file=sys.stderr, flush=True)


# --- ROS environment and the node process --------------------------------------------------


def isolate_ros(domain_id: int, log_dir: Path, root: Path) -> None:
    """Keep DDS on this machine, in a domain of our own, over shared memory; set before rclpy or
    the node start (every process inherits it).

    Shared memory (``config/fastdds_large_clouds.xml``) because with Fast DDS's default transports
    the small /odom sample published just before each ~1 MB cloud often loses its first delivery
    and arrives with the next heartbeat, about 3 s later (measured here: 5 to 9 of 10 clouds), so
    the node skips the cloud for lack of a pose. A profile the user already set is kept.
    """
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    os.environ["ROS_DOMAIN_ID"] = str(domain_id)
    os.environ.setdefault("ROS_LOG_DIR", str(log_dir))
    if not (os.environ.get("FASTRTPS_DEFAULT_PROFILES_FILE") or os.environ.get("FASTDDS_DEFAULT_PROFILES_FILE")):
        os.environ["FASTRTPS_DEFAULT_PROFILES_FILE"] = str(root / FASTDDS_PROFILE)


def console_script(name: str, module: str) -> list[str]:
    """The installed console script beside this interpreter, else ``python -m module``."""
    script = Path(sys.executable).with_name(name)
    return [str(script)] if script.is_file() else [sys.executable, "-m", module]


def ros_value(value) -> str:
    """A parameter value as ``-p name:=VALUE`` reads it (YAML); strings YAML would read otherwise are quoted."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(ros_value(item) for item in value) + "]"
    if isinstance(value, str):
        return value if value and yaml.safe_load(value) == value else "'" + value.replace("'", "''") + "'"
    return repr(value)


def node_command(params_file: Path, parameters: Mapping[str, object]) -> list[str]:
    """``mask3d_node --ros-args --params-file FILE -p name:=value ...``, as a user types it."""
    overrides = [item for name, value in parameters.items() for item in ("-p", f"{name}:={ros_value(value)}")]
    return [*console_script("mask3d_node", "mask3d_ros.node"), "--ros-args", "--params-file", str(params_file),
            *overrides]


def node_parameters(layout: BagLayout, checkpoint: Path | None, pose_source: str = "odometry",
                    window: int = 0, score_threshold: float | None = None) -> dict[str, object]:
    """Overrides of the tabletop parameters file for a bag made by ``write_synthetic_bag``: sim time,
    the bag's topics and poses, the last ``window`` frames in the map (0: all), the model."""
    parameters: dict[str, object] = {
        "use_sim_time": True, "points_topic": layout.points_topic,
        "accumulation.max_frames": window, "accumulation.voxel_size": MAP_VOXEL_SIZE,
        # The replay, the recorder and the node share the CPU cores; on a loaded 2-core machine the
        # /odom sample logged just before a cloud was seen to reach the node's buffer more than the
        # live default of 0.1 s after the cloud (CI: 1 cloud of 8 skipped). Frames are >= 1 s apart.
        "pose_timeout": REPLAY_POSE_TIMEOUT_S,
        # Every cloud adds to the map, and the cloud callback is cheap (decode + accumulate, ~15 ms)
        # while inference is decoupled by the latest-wins worker, so a few queued clouds cost no
        # growing latency. With depth 1, a cloud that arrived while the executor stalled (CI: a
        # 2.5 s stall on a loaded 2-core machine) was replaced by the next one and lost to the map.
        "input_qos.depth": REPLAY_INPUT_DEPTH}
    if pose_source == "odometry":
        parameters.update(odometry_parameters(layout))
    else:
        parameters.update({"pose_source": "tf", "fixed_frame": layout.fixed_frame})
    if checkpoint is None:
        parameters.update({"model.checkpoint": "", "model.allow_random_weights": True})
    else:
        parameters.update({"model.checkpoint": str(checkpoint), "model.dbscan_eps": MAP_DBSCAN_EPS})
    if score_threshold is not None:
        parameters["model.score_threshold"] = float(score_threshold)
    return parameters


def process_environment() -> dict[str, str]:
    """The environment for the processes started here: this one's, with unbuffered Python output (the
    log is read while they run) and one OpenMP thread. The demo's own process replays and records
    beside the node, and two spinning torch threads on 2 shared cores made an inference 20 to 40
    times slower (30 to 50 s instead of 1 s); sleeping threads (OMP_WAIT_POLICY=PASSIVE) cured that
    but cost 7x on an idle machine (mOSD frame: 800 ms vs 116 ms), one thread costs nothing
    (86 ms). ``OMP_NUM_THREADS`` already set is kept."""
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}


class NodeFailed(RuntimeError):
    """The node process exited or never became ready; the message ends with its log."""


def node_failed(what: str, log_path: Path, lines: int = 30) -> NodeFailed:
    tail = "\n".join(Path(log_path).read_text(errors="replace").splitlines()[-lines:])
    return NodeFailed(f"{what}; the end of its log ({log_path}):\n{tail}")


class NodeProcess:
    """A command (the node) as a child process logging to a file; :meth:`stop` is Ctrl-C."""

    def __init__(self, command: Sequence[str], log_path: Path):
        self.command, self.log_path = list(command), Path(log_path)
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=self._log,
                                        stderr=subprocess.STDOUT, env=process_environment())

    def fail(self, what: str) -> NodeFailed:
        return node_failed(what, self.log_path)

    def check_running(self, doing: str) -> None:
        code = self.process.poll()
        if code is not None:
            raise self.fail(f"the node exited with status {code} {doing}")

    def wait_ready(self, graph_node, inputs: Sequence[str], outputs: Sequence[str],
                   timeout_s: float = READY_TIMEOUT_S) -> float:
        """Wait until the node subscribes to every input and publishes every output; seconds waited."""
        started = time.monotonic()
        while not (all(graph_node.count_subscribers(topic) for topic in inputs)
                   and all(graph_node.count_publishers(topic) for topic in outputs)):
            self.check_running("while starting")
            if time.monotonic() - started > timeout_s:
                raise self.fail(f"the node did not subscribe to {', '.join(inputs)} within {timeout_s:g} s")
            time.sleep(0.1)
        return time.monotonic() - started

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """SIGINT, as Ctrl-C; killed after ``timeout_s``. Returns the exit status (negative: killed)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode

    def __enter__(self) -> "NodeProcess":
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


def pipeline_values(array) -> list[dict[str, str]]:
    """Key/values of the node's pipeline status in a diagnostic_msgs/DiagnosticArray."""
    return [{item.key: item.value for item in status.values} for status in array.status
            if status.name == f"{NODE_NAME}: pipeline"]


def node_finished(recent: Sequence[Mapping[str, str]], clouds: int) -> bool:
    """Two consecutive /diagnostics of the node agree that it has ``clouds`` clouds and no inference
    running or waiting (two, so that a cloud still waiting for its pose is not missed)."""
    def idle(values: Mapping[str, str]) -> tuple[int, ...] | None:
        try:
            received, requests, done, dropped, failed = (int(values[key]) for key in (
                "clouds_received", "inference_requests", "inferences", "dropped_frames", "inference_failures"))
        except (KeyError, ValueError):
            return None
        finished = received >= clouds and values.get("inference_busy") == "False" and requests == done + dropped + failed
        return (received, requests) if finished else None

    return len(recent) == 2 and idle(recent[0]) is not None and idle(recent[0]) == idle(recent[1])


@dataclass(frozen=True)
class Replay:
    published_ns: dict[int, int]  # cloud stamp -> wall time (ns) it was published
    node_exit: int


def replay_through_node(command: Sequence[str], input_bag: Path, output_bag: Path, node_log: Path,
                        layout: BagLayout, pose_source: str, rate: float, progress: bool = True) -> Replay:
    """Start the node, replay ``input_bag`` into it with /clock, record its outputs, stop it (SIGINT)."""
    pose_inputs = [layout.odom_topic] if pose_source == "odometry" else ["/tf", "/tf_static"]
    context = rclpy.Context()
    rclpy.init(context=context, signal_handler_options=SignalHandlerOptions.NO)  # Ctrl-C: KeyboardInterrupt here
    graph = rclpy.create_node("mask3d_demo", context=context)
    executor = MultiThreadedExecutor(context=context)
    executor.add_node(graph)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
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
        executor.shutdown(timeout_sec=2.0)
        graph.destroy_node()
        rclpy.try_shutdown(context=context)
        spinner.join(2.0)
    return Replay(published, node_exit)


# --- reading and scoring what the node answered ---------------------------------------------


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
              max_distance: float = MAP_VOXEL_SIZE) -> list[LabelledPoints]:
    """Ground truth of every output's map points, from the accumulated ground truth up to its stamp."""
    return [label_by_nearest(LabelledPoints.concatenate([frames[key] for key in sorted(frames) if key <= output.stamp_ns]),
                             output.xyz, max_distance) for output in outputs]


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
    pairs = [(first[obj], second[obj]) for first, second in zip(matches, matches[1:]) for obj in first.keys() & second.keys()]
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
          published_ns: Mapping[int, int]) -> Score:
    """Per-frame rows, AP and id stability of the node's outputs (see the module docstring)."""
    labels = map_truth(outputs, frames)
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
    root = root or share_directory() or Path.cwd()
    paths = demo_paths(options.out)
    options.out.mkdir(parents=True, exist_ok=True)
    for bag in (paths["input_bag"], paths["output_bag"]):
        shutil.rmtree(bag, ignore_errors=True)
    layout = BagLayout(rate_hz=BAG_RATE_HZ)

    _say(f"rendering {options.frames} frames ({options.width}x{options.height}, seed {options.seed}) into"
         f" {paths['input_bag']}")
    truth = write_synthetic_bag(paths["input_bag"], options.seed, options.frames, options.width, options.height,
                                layout=layout, progress=options.progress)
    command = node_command(root / PARAMS_FILE, node_parameters(layout, options.checkpoint, options.pose_source,
                                                                options.window, options.score_threshold))
    _say("starting the node: " + shlex.join(command))
    replay = replay_through_node(command, paths["input_bag"], paths["output_bag"], paths["node_log"], layout,
                                 options.pose_source, options.rate, options.progress)

    outputs = read_outputs(paths["output_bag"])
    if not outputs:
        raise node_failed(f"the node published no result for {options.frames} frames", paths["node_log"])
    _say(f"scoring {len(outputs)} recorded outputs against the ground truth")
    outcome = score(outputs, truth, truth_points(paths["input_bag"], truth),
                    replay.published_ns)
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


def _resolution(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)x(\d+)", text)
    if not match:
        raise argparse.ArgumentTypeError(f"resolution must be WIDTHxHEIGHT, e.g. 320x240, not {text!r}")
    return int(match[1]), int(match[2])


def _positive(text: str) -> float:
    value = float(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, not {text}")
    return value


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
    parser.add_argument("--resolution", type=_resolution, default=(defaults.width, defaults.height),
                        help=f"WIDTHxHEIGHT (default {defaults.width}x{defaults.height})")
    parser.add_argument("--seed", type=int, default=defaults.seed,
                        help=f"scene seed (default {defaults.seed}: a table with 7 objects)")
    parser.add_argument("--rate", type=_positive, default=defaults.rate,
                        help=f"playback speed of the {BAG_RATE_HZ:g} Hz bag (default {defaults.rate:g})")
    parser.add_argument("--out", type=Path, default=defaults.out, help=f"output folder (default {defaults.out})")
    parser.add_argument("--pose-source", choices=("odometry", "tf"), default=defaults.pose_source,
                        help="poses from the bag's /odom (default) or /tf (needs tf2_ros)")
    parser.add_argument("--window", type=int, default=defaults.window, metavar="N",
                        help="accumulate the last N frames (accumulation.max_frames; default 0: all)")
    parser.add_argument("--score-threshold", type=float,
                        help="model.score_threshold (default: the parameters file's)")
    parser.add_argument("--domain-id", type=int, default=1 + os.getpid() % 101,
                        help="ROS_DOMAIN_ID of the demo's graph (default: one of 1..101 from the process id)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.frames < 2:
        parser.error("--frames must be at least 2")
    if args.window < 0:
        parser.error("--window must be 0 (all frames) or more")
    return args


def choose_checkpoint(args: argparse.Namespace, root: Path) -> Path | None:
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
    root = share_directory() or Path.cwd()
    checkpoint = choose_checkpoint(args, root)
    isolate_ros(args.domain_id, args.out.resolve() / "ros_log", root)
    _say(f"ROS graph: this machine only (ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST), ROS_DOMAIN_ID={args.domain_id},"
         f" Fast DDS profile {os.environ.get('FASTRTPS_DEFAULT_PROFILES_FILE') or os.environ.get('FASTDDS_DEFAULT_PROFILES_FILE')}")
    width, height = args.resolution
    options = DemoOptions(out=args.out, checkpoint=checkpoint, frames=args.frames, width=width, height=height,
                          seed=args.seed, rate=args.rate, pose_source=args.pose_source, window=args.window,
                          score_threshold=args.score_threshold, progress=not args.no_progress)
    started = time.monotonic()
    try:
        result = run(options, root)
    except NodeFailed as error:
        print(f"mask3d-ros-demo: the node failed: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("mask3d-ros-demo: interrupted", file=sys.stderr)
        return 130
    print(format_report(result))
    print(f"\ndone in {time.monotonic() - started:.0f} s")
    if result.node_exit != 0:
        print(f"mask3d-ros-demo: the node exited with status {result.node_exit} after SIGINT; see"
              f" {result.paths['node_log']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
