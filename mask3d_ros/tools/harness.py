"""The node as its own process, started as users start it, and this process's side of its ROS graph.

Shared by ``mask3d-ros-demo``, ``mask3d-ros-soak``, the latency rows of ``mask3d-ros-bench`` and
the end-to-end tests: ROS isolation (:func:`isolate_ros`), the node's command line
(:func:`node_command`, :func:`node_parameters`) and process (:class:`NodeProcess`), its output
topics and pipeline diagnostics, and a spun node of our own (:func:`spun_graph`, through
:class:`Spinner`, which reports an executor that stopped early).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.signals import SignalHandlerOptions

from mask3d_ros.model.files import share_directory
from mask3d_ros.ros.node import NODE_NAME
from mask3d_ros.tools.cli import ros_value

LABELED_CLOUD_TOPIC = f"/{NODE_NAME}/labeled_cloud"
INSTANCES_TOPIC = f"/{NODE_NAME}/instances"
MARKERS_TOPIC = f"/{NODE_NAME}/markers"
DIAGNOSTICS_TOPIC = "/diagnostics"
PIPELINE_STATUS = f"{NODE_NAME}: pipeline"
"""Name of the node's own status in its /diagnostics."""
PARAMS_FILE = Path("config/mask3d_tabletop.yaml")
FASTDDS_PROFILE = Path("config/fastdds_large_clouds.xml")
READY_TIMEOUT_S = 180.0  # importing torch and loading the model on a busy 2-core machine
STOP_TIMEOUT_S = 15.0


def package_root() -> Path:
    """Where ``config/`` lies: the package's share directory (or its source tree), else the working directory."""
    return share_directory() or Path.cwd()


# --- ROS environment --------------------------------------------------------------------------


def default_domain_id() -> int:
    """A ROS_DOMAIN_ID of this process's own, 1..101 from its process id (Fast DDS's ports stay below
    Linux's ephemeral range)."""
    return 1 + os.getpid() % 101


def isolate_ros(domain_id: int, log_dir: Path, root: Path | None = None) -> None:
    """Keep DDS on this machine, in a domain of our own, over shared memory; set before rclpy or
    the node start (every process started here inherits it).

    Shared memory (``config/fastdds_large_clouds.xml`` under ``root``, by default
    :func:`package_root`, when it is there) because with Fast DDS's default transports the small
    /odom sample published just before each large cloud often loses its first delivery and arrives
    with the next heartbeat, seconds later, so the node skips the cloud for lack of a pose. A
    profile the user already set is kept.
    """
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    os.environ["ROS_DOMAIN_ID"] = str(domain_id)
    os.environ.setdefault("ROS_LOG_DIR", str(log_dir))
    profile = (root or package_root()) / FASTDDS_PROFILE
    user_profile = os.environ.get("FASTRTPS_DEFAULT_PROFILES_FILE") or os.environ.get("FASTDDS_DEFAULT_PROFILES_FILE")
    if not user_profile and profile.is_file():
        os.environ["FASTRTPS_DEFAULT_PROFILES_FILE"] = str(profile)


def fastdds_profile() -> str | None:
    """The Fast DDS profile file the processes started here use (None: Fast DDS's defaults)."""
    return os.environ.get("FASTRTPS_DEFAULT_PROFILES_FILE") or os.environ.get("FASTDDS_DEFAULT_PROFILES_FILE")


class Spinner:
    """Spins ``executor`` in a daemon thread. An exception that ends ``spin()`` before
    :meth:`shutdown` (one escaping a callback or the executor itself stops it for good) is kept,
    and :meth:`join` raises it, so a graph that stopped answering says why."""

    def __init__(self, executor):
        self.executor = executor
        self.error: str | None = None
        self._stopping = False
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        try:
            self.executor.spin()
        except Exception as error:  # noqa: BLE001 - join() reports it, unless shutdown raced it
            if not self._stopping:
                self.error = "".join(traceback.format_exception(error))

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def shutdown(self) -> None:
        self._stopping = True
        self.executor.shutdown(timeout_sec=2.0)

    def join(self) -> None:
        """Wait for the thread (2 s at most); RuntimeError if spinning ended early."""
        self._thread.join(2.0)
        if self.error is not None:
            raise RuntimeError(f"the executor stopped spinning early:\n{self.error}")


@contextmanager
def spun_graph(name: str, executor_type: type = SingleThreadedExecutor) -> Iterator:
    """A node of this process named ``name``, in an rclpy context of its own, spun by an
    ``executor_type`` executor in a background thread; shut down on exit. rclpy's signal handlers
    stay off: Ctrl-C raises KeyboardInterrupt in the caller.

    Single-threaded by default, as the node's own executor and for the same reason: rclpy's
    ``MultiThreadedExecutor`` busy-loops while large messages arrive, and a tool that shares the
    cores with the node it measures must not take them from it (the callbacks here only record).
    """
    context = rclpy.Context()
    rclpy.init(context=context, signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node(name, context=context)
    executor = executor_type(context=context)
    executor.add_node(node)
    spinner = Spinner(executor)
    try:
        yield node
    finally:
        spinner.shutdown()
        node.destroy_node()
        rclpy.try_shutdown(context=context)
        spinner.join()


# --- the node's command line --------------------------------------------------------------------


def console_script(name: str, module: str) -> list[str]:
    """The installed console script beside this interpreter, else ``python -m module``."""
    script = Path(sys.executable).with_name(name)
    return [str(script)] if script.is_file() else [sys.executable, "-m", module]


def node_command(params_file: Path, parameters: Mapping[str, object]) -> list[str]:
    """``mask3d_node --ros-args --params-file FILE -p name:=value ...``, as a user types it."""
    overrides = [item for name, value in parameters.items() for item in ("-p", f"{name}:={ros_value(value)}")]
    return [*console_script("mask3d_node", "mask3d_ros.node"), "--ros-args", "--params-file", str(params_file),
            *overrides]


def node_parameters(points_topic: str, checkpoint: Path | None,
                    overrides: Mapping[str, object] | None = None) -> dict[str, object]:
    """Overrides of the parameters file: the input topic, the model (``checkpoint``; None: random
    weights), then ``overrides`` (a tool's own settings, or the user's ``-p``)."""
    parameters: dict[str, object] = {"points_topic": points_topic}
    if checkpoint is None:
        parameters.update({"model.checkpoint": "", "model.allow_random_weights": True})
    else:
        parameters["model.checkpoint"] = str(checkpoint)
    parameters.update(overrides or {})
    return parameters


def process_environment() -> dict[str, str]:
    """The environment for the processes started here: this one's, with unbuffered Python output (the
    log is read while they run) and one OpenMP thread, because the node shares the cores with this
    process's publishing and recording, where spinning torch threads slow inference down many
    times over. ``OMP_NUM_THREADS`` already set is kept."""
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}


# --- the node process -----------------------------------------------------------------------------


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


def exit_status(prog: str, job: Callable[[], int], failed_status: int) -> int:
    """Run ``job`` (a tool's work around the node, returning its exit status). When the node fails,
    the error goes to stderr and the status is ``failed_status``; Ctrl-C gives 130."""
    try:
        return job()
    except NodeFailed as error:
        print(f"{prog}: the node failed: {error}", file=sys.stderr)
        return failed_status
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


# --- the node's diagnostics -------------------------------------------------------------------------


def pipeline_values(array) -> list[dict[str, str]]:
    """Key/values of the node's pipeline status in a diagnostic_msgs/DiagnosticArray."""
    return [{item.key: item.value for item in status.values} for status in array.status
            if status.name == PIPELINE_STATUS]


def node_finished(recent: Sequence[Mapping[str, str]], clouds: int) -> bool:
    """Two consecutive /diagnostics of the node agree that it has ``clouds`` clouds and no inference
    running or waiting (two, so that a cloud still waiting for its pose is not missed)."""
    def idle(values: Mapping[str, str]) -> tuple[int, ...] | None:
        try:
            received, requests, done, dropped, failed = (int(values[key]) for key in (
                "clouds_received", "inference_requests", "inferences", "dropped_frames", "inference_failures"))
        except (KeyError, ValueError):
            return None
        finished = (received >= clouds and values.get("inference_busy") == "False"
                    and requests == done + dropped + failed)
        return (received, requests) if finished else None

    return len(recent) == 2 and idle(recent[0]) is not None and idle(recent[0]) == idle(recent[1])
