"""The tools' node harness (``mask3d_ros.tools.harness``) without the node: command lines, parameters,
ROS isolation, a child process stopped as Ctrl-C stops it, the pipeline diagnostics; and the pure
scoring helpers of ``mask3d_ros.tools.recorded``."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.executors import SingleThreadedExecutor

from mask3d_ros.ros.node import NODE_NAME
from mask3d_ros.tools import harness
from mask3d_ros.tools.recorded import LabelledPoints, kept_ids, label_by_nearest

ISOLATION = ("ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_DOMAIN_ID", "ROS_LOG_DIR", "FASTRTPS_DEFAULT_PROFILES_FILE",
             "FASTDDS_DEFAULT_PROFILES_FILE")


def test_topics_follow_the_node_name():
    assert harness.LABELED_CLOUD_TOPIC == f"/{NODE_NAME}/labeled_cloud"
    assert (harness.INSTANCES_TOPIC, harness.MARKERS_TOPIC) == (f"/{NODE_NAME}/instances", f"/{NODE_NAME}/markers")
    assert (harness.package_root() / harness.PARAMS_FILE).is_file()
    assert (harness.package_root() / harness.FASTDDS_PROFILE).is_file()


def test_node_parameters_put_the_tools_own_last():
    assert harness.node_parameters("/points", None) == {
        "points_topic": "/points", "model.checkpoint": "", "model.allow_random_weights": True}
    parameters = harness.node_parameters("/points", Path("/w.ckpt"), {"model.checkpoint": "other", "pose_timeout": 1.0})
    assert parameters == {"points_topic": "/points", "model.checkpoint": "other", "pose_timeout": 1.0}


def test_node_command_is_the_console_script_with_overrides():
    command = harness.node_command(Path("config/x.yaml"), {"use_sim_time": True, "odometry.body_to_sensor": [0.1, 0.0],
                                                           "fixed_frame": "odom"})
    assert Path(command[0]).name in ("mask3d_node", Path(sys.executable).name)
    start = command.index("--ros-args")
    assert command[start:] == ["--ros-args", "--params-file", "config/x.yaml", "-p", "use_sim_time:=true",
                               "-p", "odometry.body_to_sensor:=[0.1,0.0]", "-p", "fixed_frame:=odom"]
    assert harness.console_script("no-such-script", "mask3d_ros.tools.demo") == [
        sys.executable, "-m", "mask3d_ros.tools.demo"]


@pytest.fixture
def clean_isolation(monkeypatch):
    for name in ISOLATION:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_isolate_ros_keeps_dds_local_with_the_shared_memory_profile(clean_isolation, tmp_path):
    harness.isolate_ros(42, tmp_path / "logs")
    assert os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST" and os.environ["ROS_DOMAIN_ID"] == "42"
    assert os.environ["ROS_LOG_DIR"] == str(tmp_path / "logs")
    assert harness.fastdds_profile() == str(harness.package_root() / harness.FASTDDS_PROFILE)


def test_isolate_ros_keeps_the_users_profile_and_sets_none_that_is_missing(clean_isolation, tmp_path):
    clean_isolation.setenv("FASTDDS_DEFAULT_PROFILES_FILE", "/users/profile.xml")
    harness.isolate_ros(7, tmp_path)
    assert harness.fastdds_profile() == "/users/profile.xml" and "FASTRTPS_DEFAULT_PROFILES_FILE" not in os.environ
    clean_isolation.delenv("FASTDDS_DEFAULT_PROFILES_FILE")
    harness.isolate_ros(7, tmp_path, root=tmp_path)  # no config/ there
    assert harness.fastdds_profile() is None


def test_process_environment_gives_one_openmp_thread_unless_set(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert harness.process_environment()["OMP_NUM_THREADS"] == "1"
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    environment = harness.process_environment()
    assert environment["OMP_NUM_THREADS"] == "4" and environment["PYTHONUNBUFFERED"] == "1"


def test_node_process_stops_with_sigint_and_reports_its_log(tmp_path):
    waits_for_ctrl_c = ("import sys, time\nprint('ready', flush=True)\ntry:\n    time.sleep(60)\n"
                        "except KeyboardInterrupt:\n    print('bye')\n    sys.exit(3)\n")
    with harness.NodeProcess([sys.executable, "-c", waits_for_ctrl_c], tmp_path / "node.log") as node:
        deadline = time.monotonic() + 60
        while "ready" not in node.log_path.read_text():  # its SIGINT handler is in place
            node.check_running("while starting")
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert node.stop(10.0) == 3
    assert (tmp_path / "node.log").read_text().split() == ["ready", "bye"]

    failing = harness.NodeProcess([sys.executable, "-c", "print('no model'); raise SystemExit(2)"], tmp_path / "f.log")
    failing.process.wait(30)
    with pytest.raises(harness.NodeFailed, match=r"(?s)status 2 while starting.*no model"):
        failing.check_running("while starting")
    assert failing.stop() == 2


def test_exit_status_turns_a_failed_node_and_ctrl_c_into_statuses(capsys, tmp_path):
    (tmp_path / "node.log").write_text("line\n")

    def fails() -> int:
        raise harness.node_failed("it broke", tmp_path / "node.log")

    def interrupted() -> int:
        raise KeyboardInterrupt

    assert harness.exit_status("tool", lambda: 0, failed_status=2) == 0
    assert harness.exit_status("tool", fails, failed_status=2) == 2
    assert "tool: the node failed: it broke" in capsys.readouterr().err
    assert harness.exit_status("tool", interrupted, failed_status=2) == 130
    assert capsys.readouterr().err == "tool: interrupted\n"


def diagnostics(**values: str) -> DiagnosticArray:
    ours = DiagnosticStatus(name=harness.PIPELINE_STATUS,
                            values=[KeyValue(key=key, value=value) for key, value in values.items()])
    return DiagnosticArray(status=[DiagnosticStatus(name="other"), ours])


def test_node_finished_needs_two_idle_statuses_with_every_cloud():
    idle = {"clouds_received": "3", "inference_requests": "3", "inferences": "2", "dropped_frames": "1",
            "inference_failures": "0", "inference_busy": "False"}
    (values,) = harness.pipeline_values(diagnostics(**idle))
    assert values == idle
    assert harness.node_finished([values, values], 3)
    assert not harness.node_finished([values], 3), "one status could miss a cloud waiting for its pose"
    assert not harness.node_finished([values, values], 4)
    assert not harness.node_finished([values, {**values, "inference_busy": "True"}], 3)
    assert not harness.node_finished([values, {**values, "clouds_received": "x"}], 3)


def test_map_points_take_the_nearest_label_within_the_bound():
    reference = LabelledPoints(np.array([[0.0, 0, 0], [1.0, 0, 0]]), np.array([1, 2]), np.array([5, 6]))
    labelled = label_by_nearest(reference, np.array([[0.001, 0, 0], [1.2, 0, 0], [0.999, 0, 0]]), 0.005)
    assert labelled.semantic.tolist() == [1, -1, 2] and labelled.instance.tolist() == [5, 0, 6]
    both = LabelledPoints.concatenate([reference, labelled])
    assert len(both.xyz) == 5 and both.instance.tolist() == [5, 6, 5, 0, 6]


def test_kept_ids_counts_objects_that_kept_their_instance_id():
    assert kept_ids([{1: 10, 2: 20}, {1: 10, 2: 21, 3: 30}, {3: 30}]) == (2, 3)
    assert kept_ids([]) == (0, 0)


def test_default_domain_id_is_in_the_safe_range():
    assert 1 <= harness.default_domain_id() <= 101


def test_spinner_reports_the_exception_that_stopped_spinning():
    """A callback's exception ends rclpy's spin() for good; the Spinner keeps it and join() raises
    it, where a bare spinning thread would leave a graph that silently stopped answering."""
    def fail():
        raise ValueError("boom in a callback")

    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node("spinner_test", context=context)
    try:
        node.create_timer(0.01, fail)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        spinner = harness.Spinner(executor)
        deadline = time.monotonic() + 10.0
        while spinner.alive and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not spinner.alive
        spinner.shutdown()
        with pytest.raises(RuntimeError, match="(?s)stopped spinning early.*boom in a callback"):
            spinner.join()
    finally:
        node.destroy_node()
        rclpy.shutdown(context=context)


def test_spinner_shut_down_normally_raises_nothing():
    with harness.spun_graph("spinner_quiet") as node:
        node.create_timer(0.01, lambda: None)
        time.sleep(0.05)
