"""End to end: bags replayed through the node running as its own process, as users run it
(``mask3d_node --ros-args --params-file config/mask3d_tabletop.yaml ...``), its outputs recorded and
scored.

* The 22 mOSD val frames as a bag, published one at a time (the next frame only after the answer to
  the previous one, so no frame is dropped for being early): every frame answered, stamps and frame
  kept, AP50 of the recorded outputs within 0.01 of the offline evaluation of the same model on the
  same points with disjoint instances, as the node publishes them.
* The demo (``python -m mask3d_ros.tools.demo``) on a synthetic moving-camera sequence: accumulation
  with odometry poses (and /tf where tf2_ros exists), every frame answered or counted, instance
  ids kept, AP50 above a floor.
* The real Ouster bag played by the replay tool in its own process (``mask3d-ros-play --clock``)
  into the node with ``use_sim_time``: every input point is in the labeled cloud or dropped by a
  documented filter, no error.

The model: the bundled ``model/mask3d_tabletop.ckpt``. DDS stays on this machine in the test's own domain
(conftest), which every process started here inherits.
"""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import MultiThreadedExecutor
from rclpy.qos import QoSProfile
from sensor_msgs.msg import PointCloud2

from mask3d_ros.evaluation.ap import evaluate
from mask3d_ros.evaluation.predictions import InstancePredictions
from mask3d_ros.model.files import bundled_checkpoint
from mask3d_ros.model.voxel import first_per_key, grid_keys
from mask3d_ros.msg import InstanceArray
from mask3d_ros.ros.cloud import read_points
from mask3d_ros.tools import harness, recorded
from mask3d_ros.tools.bag import GroundTruth, deserialize_rclpy, read_messages, stamp_ns
from mask3d_ros.tools.evaluate import expand_frames
from mask3d_ros.tools.replay import BagRecorder
from mask3d_ros.tools.scene_bags import BagLayout, write_files_bag

pytestmark = [pytest.mark.ros, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
PARAMS_FILE = REPO / harness.PARAMS_FILE
PARAMS = yaml.safe_load(PARAMS_FILE.read_text())["/**"]["ros__parameters"]
MAP_VOXEL = PARAMS["accumulation"]["voxel_size"]  # the node's de-duplication grid (2 mm)
OUTPUT_TOPICS = [harness.LABELED_CLOUD_TOPIC, harness.INSTANCES_TOPIC]
FRAME_TIMEOUT_S = 180.0  # one 640 x 480 inference on a busy 2-core machine, with a wide margin

EXACT_MAP = {"accumulation.voxel_size": 0.0005, "roi.min_range": 0.0, "roi.max_range": 0.0}
"""Overrides for the mOSD check, so that the node segments exactly the points the offline evaluation
does: no range crop, and a 0.5 mm grid, finer than any two Kinect points. With the parameters
file's own 2 mm grid and crop the small model moves by up to 0.03 AP50 either way (node 0.662 vs
offline 0.629 with the bundled model; 0.598 vs 0.641 with stage 8 and a 5 mm grid)."""

AP50_TOLERANCE = 0.01
"""Node vs offline AP50 on the 22 mOSD val frames, both with each point in at most one instance
(``mask3d-ros-eval --disjoint``), on the same points."""

SYNTHETIC_FRAMES = 8
MIN_FINAL_MAP_AP50 = 0.42
MIN_ALL_OUTPUTS_AP50 = 0.40
"""AP50 floors for the demo's accumulated maps (seed 5: 7 objects). Measured with the bundled model
(stage 9: mask smoothing, and DBSCAN at 0.05 m, which the demo sets for maps): final map 0.571
(AP25 0.688), all 8 outputs 0.541 (AP25 0.665); stage 6 scored 0.714 and 0.686 here, though lower
on every held-out set; the stage 5 model without smoothing or DBSCAN 0.519 and 0.492; the stage 2
model, trained on single camera views only, scored ~0 on both. With all 8 clouds (asserted first)
the final map is the same whatever the timing; AP50 moves in steps of about 1/7 (one of 7 objects),
and a lost cloud cost one object once (with the stage 3 model), hence a floor one object below.
Which earlier maps are segmented depends on the machine's load (latest-wins drops), hence the
lower floor over all outputs."""

OUSTER_TOPIC = "/os1_cloud_node/points"


@pytest.fixture(scope="session")
def model_checkpoint() -> Path:
    """The bundled model, which the node and the offline evaluation both run."""
    return bundled_checkpoint()


@pytest.fixture
def graph():
    """A node of this process in the test's ROS domain, spun in a background thread."""
    with harness.spun_graph("e2e_test", MultiThreadedExecutor) as node:
        yield node


def answered_stamps(graph) -> set[int]:
    """Stamps of the node's ~/instances, filled as they arrive."""
    stamps: set[int] = set()
    graph.create_subscription(InstanceArray, harness.INSTANCES_TOPIC,
                              lambda msg: stamps.add(stamp_ns(msg.header.stamp)), QoSProfile(depth=50))
    return stamps


def recorded_all(recorder, results: int) -> bool:
    """Every output topic recorded at least ``results`` times."""
    counts = recorder.counts
    return all(counts.get(topic, 0) >= results for topic in OUTPUT_TOPICS)


def pipeline_statuses(graph) -> list[dict[str, str]]:
    """The node's /diagnostics pipeline key/values, filled as they arrive."""
    statuses: list[dict[str, str]] = []
    graph.create_subscription(DiagnosticArray, harness.DIAGNOSTICS_TOPIC,
                              lambda msg: statuses.extend(harness.pipeline_values(msg)), 10)
    return statuses


def wait_while_running(node: harness.NodeProcess, condition, timeout_s: float, doing: str) -> bool:
    """Poll ``condition`` until it holds (True) or the timeout (False); a node that exits fails the test."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        node.check_running(doing)
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def predictions_on_inputs(output: recorded.NodeOutput, input_xyz: np.ndarray, class_names,
                          map_voxel: float) -> InstancePredictions:
    """The node's instances carried to every input point. The map keeps one point per ``map_voxel``
    voxel (with pose_source none, an input point unchanged), so an input point takes the prediction of
    the map point in its voxel; points the node's range crop dropped take none."""
    on_map = recorded.output_predictions(output, class_names)
    map_keys, _ = grid_keys(output.xyz, map_voxel)
    input_keys, _ = grid_keys(input_xyz, map_voxel)
    order = np.argsort(map_keys)
    row = order[np.clip(np.searchsorted(map_keys[order], input_keys), 0, len(order) - 1)]
    found = map_keys[row] == input_keys
    return InstancePredictions(on_map.masks[:, row] & found, on_map.classes, on_map.scores)


# --- mOSD frames through the node against the offline evaluation ---------------------------------


def test_mosd_frames_through_the_node_score_as_offline(tmp_path, graph, mosd_dir, model_checkpoint):
    frames = expand_frames([mosd_dir / "val"], "mosd")
    layout = BagLayout()
    bag = tmp_path / "mosd_bag"
    truth = write_files_bag(bag, frames, layout)
    assert truth is not None, "mOSD frames carry labels"
    # Everything the model finds is reported, as the offline evaluation counts it (AP needs the
    # whole precision/recall curve), on exactly the offline points (EXACT_MAP); the rest is the
    # parameters file, pose_source none.
    command = harness.node_command(PARAMS_FILE, {"points_topic": layout.points_topic,
                                                 "model.checkpoint": str(model_checkpoint),
                                                 "model.score_threshold": 0.0, "model.min_instance_points": 1,
                                                 **EXACT_MAP})
    answered, statuses = answered_stamps(graph), pipeline_statuses(graph)
    recorder = BagRecorder(graph, tmp_path / "outputs", OUTPUT_TOPICS)
    publisher = graph.create_publisher(PointCloud2, layout.points_topic, QoSProfile(depth=1))
    unanswered = []
    try:
        with harness.NodeProcess(command, tmp_path / "node.log") as node:
            node.wait_ready(graph, [layout.points_topic], OUTPUT_TOPICS)
            assert recorder.wait_until_subscribed(10.0)
            assert wait_while_running(node, lambda: publisher.get_subscription_count() > 0, 10.0, "while matching")
            for message in read_messages(bag, [layout.points_topic]):
                publisher.publish(message.data)  # the bag's bytes; make_bag logs each cloud at its stamp
                if not wait_while_running(node, lambda: message.log_time_ns in answered, FRAME_TIMEOUT_S,
                                          "while segmenting"):
                    unanswered.append(message.log_time_ns)
                # the next result only once this one is recorded: a full-size labeled cloud (~3 MB) still
                # in flight would otherwise be replaced in the node's depth-1 publisher history
                assert wait_while_running(node, lambda: recorded_all(recorder, len(answered)), 30.0,
                                          "while recording"), f"recorded {recorder.counts} of {len(answered)} answers"
            assert wait_while_running(node, lambda: harness.node_finished(statuses[-2:], len(frames)), 10.0,
                                      "while finishing"), statuses[-1:]
            assert node.stop() == 0, node.log_path.read_text()
    finally:
        recorder.close()

    outputs, stats = recorded.read_outputs(tmp_path / "outputs"), statuses[-1]
    stamps = truth.stamps.tolist()
    assert sorted([output.stamp_ns for output in outputs] + unanswered) == stamps  # stamps kept, none invented
    assert not unanswered, f"frames without an answer within {FRAME_TIMEOUT_S:g} s: {unanswered}; node: {stats}"
    assert stats["dropped_frames"] == "0" and stats["inference_failures"] == "0", stats
    assert {output.frame_id for output in outputs} == {layout.frame_id}

    inputs = recorded.truth_points(bag, truth)  # finite points of each cloud, in the cloud frame, with labels
    node_ap = evaluate([(inputs[o.stamp_ns].semantic, inputs[o.stamp_ns].instance,
                         predictions_on_inputs(o, inputs[o.stamp_ns].xyz, truth.class_names,
                                               EXACT_MAP["accumulation.voxel_size"])) for o in outputs],
                       truth.class_names, truth.instance_classes)
    # offline: the evaluation CLI (tools/evaluate.py's evaluate_scenes and SegmenterPredictor) on the same frames
    offline_json = tmp_path / "offline.json"
    evaluated = subprocess.run([*harness.console_script("mask3d-ros-eval", "mask3d_ros.tools.evaluate"),
                                "--checkpoint", str(model_checkpoint), "--disjoint", "--dataset", "mosd",
                                *map(str, frames), "--json", str(offline_json)],
                               env=harness.process_environment(), capture_output=True, text=True, timeout=600)
    assert evaluated.returncode == 0, evaluated.stdout + evaluated.stderr
    offline = json.loads(offline_json.read_text())
    print(f"\n{len(frames)} mOSD val frames, {model_checkpoint.name}: AP / AP50 / AP25 node"
          f" {node_ap.AP:.3f} / {node_ap.AP50:.3f} / {node_ap.AP25:.3f}, offline (disjoint)"
          f" {offline['AP']:.3f} / {offline['AP50']:.3f} / {offline['AP25']:.3f}")
    assert abs(node_ap.AP50 - offline["AP50"]) <= AP50_TOLERANCE


# --- the demo: a moving camera, accumulation with poses from the bag --------------------------------


@pytest.mark.parametrize("pose_source", ["odometry", "tf"])
def test_demo_accumulates_a_moving_camera(tmp_path, model_checkpoint, pose_source):
    if pose_source == "tf":
        pytest.importorskip("tf2_ros", reason="tf2_ros (and tf2_msgs for /tf replay) exist only in a ROS 2"
                                              " install, not on PyPI")
    command = [*harness.console_script("mask3d-ros-demo", "mask3d_ros.tools.demo"), "--checkpoint",
               str(model_checkpoint), "--frames", str(SYNTHETIC_FRAMES), "--rate", "0.25", "--out", str(tmp_path),
               "--pose-source", pose_source, "--domain-id", os.environ["ROS_DOMAIN_ID"], "--no-progress"]
    finished = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    print(finished.stdout)
    summary = json.loads((tmp_path / "summary.json").read_text())

    truth = GroundTruth.load(tmp_path / "input_bag")
    rows, stats = summary["frames"], summary["node_diagnostics"]
    assert [row["stamp_ns"] for row in rows] == truth.stamps.tolist()
    answered = sum(row["map_points"] is not None for row in rows)
    warnings = [line for line in (tmp_path / "node.log").read_text().splitlines() if "WARN" in line]
    assert int(stats["clouds_received"]) == SYNTHETIC_FRAMES, (stats, warnings)  # none lost before the node
    assert int(stats["pose_failures"]) == 0, (stats, warnings)  # every cloud found its odometry / tf pose
    # a frame without an output of its own was dropped while busy, or its cloud was already in the
    # map the previous inference segmented (that output carries the newer stamp)
    unanswered = int(stats["dropped_frames"]) + int(stats["inferences_skipped_unchanged"])
    assert answered + unanswered == SYNTHETIC_FRAMES, (rows, stats, warnings)
    assert rows[-1]["map_points"] is not None, "the last frame is never dropped (latest wins)"
    map_sizes = [row["map_points"] for row in rows if row["map_points"] is not None]
    assert map_sizes == sorted(map_sizes) and map_sizes[-1] > 1.5 * rows[0]["input_points"], "the map accumulates"

    assert summary["truth_coverage"] > 0.99, "map points lie on the ground truth: the poses are right"
    kept = summary["kept_ids"]
    assert kept["kept"] == kept["followed"], f"objects matched in consecutive outputs changed id: {kept}"
    assert summary["ap_final_map"]["AP50"] >= MIN_FINAL_MAP_AP50, summary["ap_final_map"]
    assert summary["ap_all_outputs"]["AP50"] >= MIN_ALL_OUTPUTS_AP50, summary["ap_all_outputs"]
    for picture in ("instances_top.png", "instances_3d.png"):
        assert (tmp_path / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- the real Ouster bag, replay tool and node in their own processes ------------------------------


def test_ouster_bag_replayed_by_the_play_tool_into_the_node(tmp_path, graph, ouster_bag_dir):
    """Every input point ends in the labeled cloud or is dropped by a documented filter: the
    ``roi.min_range`` of the parameters file (0.2 m) drops the Ouster's no-return points, which it
    marks (0, 0, 0) with range 0 (65 % of this bag's points; its nearest real return is 0.64 m), and
    the de-duplication grid merges points of one voxel. The tabletop model runs with random weights:
    the point is the plumbing (a LiDAR cloud without colour, grey from intensity)."""
    min_range = PARAMS["roi"]["min_range"]
    assert min_range > 0
    command = harness.node_command(PARAMS_FILE, {
        "use_sim_time": True, "points_topic": OUSTER_TOPIC, "model.checkpoint": "",
        "model.allow_random_weights": True, "roi.max_range": 0.0, "model.score_threshold": 0.0,
        "model.min_instance_points": 1})
    assert Path(command[0]).name == "mask3d_node", "the console script, as users run it"
    clouds = [deserialize_rclpy(m.data, m.msgtype) for m in read_messages(ouster_bag_dir, [OUSTER_TOPIC])]
    stamps = {stamp_ns(cloud.header.stamp) for cloud in clouds}
    answered, statuses = answered_stamps(graph), pipeline_statuses(graph)
    recorder = BagRecorder(graph, tmp_path / "outputs", OUTPUT_TOPICS)
    try:
        with harness.NodeProcess(command, tmp_path / "node.log") as node:
            node.wait_ready(graph, [OUSTER_TOPIC, "/clock"], OUTPUT_TOPICS)
            assert recorder.wait_until_subscribed(10.0)
            # 0.1 s between the two clouds becomes 2 s: each is segmented on its own
            player = subprocess.run(
                [*harness.console_script("mask3d-ros-play", "mask3d_ros.tools.play_bag"), str(ouster_bag_dir),
                 "--clock", "--rate", "0.05", "--wait-for-subscribers", "1", "--wait-topics", OUSTER_TOPIC,
                 "--no-progress"],
                capture_output=True, text=True, timeout=120)
            assert player.returncode == 0, player.stdout + player.stderr
            assert wait_while_running(node, lambda: stamps <= answered, FRAME_TIMEOUT_S, "while segmenting"), \
                f"answered {answered} of {stamps}"
            assert wait_while_running(node, lambda: harness.node_finished(statuses[-2:], len(clouds)), 10.0,
                                      "while finishing"), statuses[-1:]
            assert wait_while_running(node, lambda: recorded_all(recorder, len(stamps)), 30.0,
                                      "while recording"), f"recorded {recorder.counts} of {len(stamps)} answers"
            assert node.stop() == 0, node.log_path.read_text()
    finally:
        recorder.close()
    log = (tmp_path / "node.log").read_text()
    assert "[ERROR]" not in log, log

    outputs = {output.stamp_ns: output for output in recorded.read_outputs(tmp_path / "outputs")}
    assert set(outputs) == stamps
    for cloud in clouds:
        output = outputs[stamp_ns(cloud.header.stamp)]
        assert output.frame_id == cloud.header.frame_id
        points = read_points(cloud)
        xyz = np.stack([points[axis] for axis in "xyz"], axis=1)
        assert np.isfinite(xyz).all()
        no_return = (xyz == 0).all(axis=1)
        assert no_return.mean() > 0.6 and (points["range"][no_return] == 0).all()
        in_range = np.einsum("ij,ij->i", xyz, xyz) >= min_range ** 2  # the node's crop, in float32 like it
        assert not (no_return & in_range).any() and (in_range | no_return).all()  # no real return is dropped
        keys, _ = grid_keys(xyz[in_range], MAP_VOXEL)
        first = first_per_key(keys)  # the map keeps the first point of each voxel
        output_keys, _ = grid_keys(output.xyz, MAP_VOXEL)
        np.testing.assert_array_equal(np.sort(output_keys), np.sort(keys[first]))
        np.testing.assert_array_equal(output.xyz[np.argsort(output_keys)],
                                      xyz[in_range][first][np.argsort(keys[first])])
        print(f"\n{len(xyz)} points: {no_return.sum()} no-return (roi.min_range), {in_range.sum() - len(first)}"
              f" merged into another point's {MAP_VOXEL * 1000:g} mm voxel, {len(output.points)} in the labeled cloud,"
              f" {len(output.instances)} instances")
    stats = statuses[-1]
    assert (stats["clouds_received"], stats["malformed_clouds"], stats["inference_failures"]) == ("2", "0", "0"), stats
