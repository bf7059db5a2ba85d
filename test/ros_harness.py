"""Helpers for tests that build real rclpy graphs: a node under test plus a client node spun in a
background thread (each harness in its own rclpy Context) by a SingleThreadedExecutor, as
``mask3d_node`` runs it (or another executor type: the node also runs under a
MultiThreadedExecutor), message inboxes, a deterministic fake model and cloud builders."""
from __future__ import annotations

import signal
import subprocess
import threading
import time

import numpy as np
import rclpy
from builtin_interfaces.msg import Time
from rclpy.context import Context
from rclpy.executors import MultiThreadedExecutor, SingleThreadedExecutor
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy
from std_msgs.msg import Header

from mask3d_ros.data.colors import pack_rgb
from mask3d_ros.model.results import PointSegmentation
from mask3d_ros.ros.cloud import create_cloud
from mask3d_ros.ros.node import Mask3DNode
from mask3d_ros.ros.poses import NS_PER_S
from mask3d_ros.tools.harness import Spinner

TIMEOUT = 20.0  # generous: the machine is shared; nothing asserts on speed



def wait_for(predicate, timeout: float = TIMEOUT, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def stamp(t_s: float):
    ns = int(round(t_s * NS_PER_S))

    return Time(sec=ns // NS_PER_S, nanosec=ns % NS_PER_S)


class Inbox:
    """Collects the messages of one subscription."""

    def __init__(self):
        self.messages = []
        self._lock = threading.Lock()

    def __call__(self, msg):
        with self._lock:
            self.messages.append(msg)

    def __len__(self):
        return len(self.messages)

    @property
    def last(self):
        return self.messages[-1]

    def wait(self, count: int = 1, timeout: float = TIMEOUT):
        wait_for(lambda: len(self.messages) >= count, timeout, f"{count} message(s)")
        return self.messages[count - 1]


class FakeModel:
    """Deterministic stand-in for the Segmenter: one instance per occupied 0.25 m cell (fixed frame).

    ``gate``: an Event that segment() waits on (to hold inference busy); ``fail_next`` raises once.
    """

    class_names = ("table", "object")
    device = "cpu"

    def __init__(self, cell: float = 0.25, min_points: int = 5, score: float = 0.9):
        self.cell, self.min_points, self.score = cell, min_points, score
        self.calls = 0
        self.sizes: list[int] = []
        self.inputs: list[tuple[np.ndarray, np.ndarray]] = []  # (xyz, rgb) of every call
        self.released = 0
        self.loaded = True
        self.gate: threading.Event | None = None
        self.started = threading.Event()
        self.fail_next = False

    def segment(self, xyz, rgb):
        assert xyz.dtype == np.float32 and rgb.dtype == np.uint8 and rgb.shape == xyz.shape
        self.calls += 1
        self.loaded = True
        self.sizes.append(len(xyz))
        self.inputs.append((xyz.copy(), rgb.copy()))
        self.started.set()
        if self.gate is not None:
            self.gate.wait(TIMEOUT)
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("simulated CUDA out of memory")
        cells = np.floor(xyz / self.cell).astype(np.int64)
        _, inverse, counts = np.unique(cells, axis=0, return_inverse=True, return_counts=True)
        inverse = inverse.reshape(-1)
        big = counts >= self.min_points
        instance_of_cell = np.full(len(counts), -1)
        instance_of_cell[big] = np.arange(big.sum())
        point_instance = instance_of_cell[inverse]
        classes = np.arange(big.sum()) % 2
        scores = np.full(big.sum(), self.score, np.float32)
        return PointSegmentation.from_point_instances(point_instance, classes, scores, self.class_names)

    def release(self):
        self.released += 1
        self.loaded = False


def cloud_msg(xyz, rgb=None, frame="camera", t_s=1.0, organized_shape=None, intensity=None):
    """PointCloud2 with x, y, z (+ packed float rgb, + intensity) from arrays."""
    xyz = np.asarray(xyz, np.float32)
    names, formats = ["x", "y", "z"], ["<f4"] * 3
    if rgb is not None:
        names.append("rgb")
        formats.append("<f4")
    if intensity is not None:
        names.append("intensity")
        formats.append(np.asarray(intensity).dtype.newbyteorder("<").str)
    records = np.zeros(len(xyz), np.dtype({"names": names, "formats": formats}))
    records["x"], records["y"], records["z"] = xyz.T
    if rgb is not None:
        records["rgb"] = pack_rgb(np.asarray(rgb, np.uint8))
    if intensity is not None:
        records["intensity"] = intensity
    if organized_shape is not None:
        records = records.reshape(organized_shape)
    return create_cloud(Header(frame_id=frame, stamp=stamp(t_s)), records.dtype, records)


class Harness:
    """A Mask3DNode (or ``node_class``) and a client node in one Context, spun in a background thread."""

    def __init__(self, params: dict | None = None, model=None, pose_source=None, cli_args=None,
                 name: str = "mask3d", namespace: str | None = None, executor_type=SingleThreadedExecutor,
                 node_class=Mask3DNode):
        self.context = Context()
        rclpy.init(context=self.context)
        overrides = [Parameter(k, value=v) for k, v in (params or {}).items()]
        self.model = model if model is not None else FakeModel()
        try:
            self.node = node_class(name, model=self.model, pose_source=pose_source, context=self.context,
                                   parameter_overrides=overrides, cli_args=cli_args, namespace=namespace)
        except BaseException:
            rclpy.shutdown(context=self.context)
            raise
        self.client = rclpy.create_node("test_client", context=self.context)
        self.executor = (MultiThreadedExecutor(num_threads=5, context=self.context)
                         if executor_type is MultiThreadedExecutor else executor_type(context=self.context))
        self.executor.add_node(self.node)
        self.executor.add_node(self.client)
        self.spinner = Spinner(self.executor)
        self._publishers = {}

    def subscribe(self, msg_type, topic: str, qos=None) -> Inbox:
        inbox = Inbox()
        self.client.create_subscription(msg_type, topic, inbox, qos or QoSProfile(depth=10))
        return inbox

    def publisher(self, msg_type, topic: str, reliability=ReliabilityPolicy.RELIABLE, depth: int = 10):
        key = (msg_type, topic, reliability)
        if key not in self._publishers:
            pub = self.client.create_publisher(msg_type, topic, QoSProfile(depth=depth, reliability=reliability))
            self._publishers[key] = pub
        return self._publishers[key]

    def publish(self, msg, topic: str = "points", wait_matched: bool = True, **kwargs):
        pub = self.publisher(type(msg), topic, **kwargs)
        if wait_matched:
            wait_for(lambda: pub.get_subscription_count() > 0, what=f"a subscriber on {topic}")
        pub.publish(msg)

    def publish_cloud_and_wait(self, msg, counter: str = "clouds_received"):
        """Publish one cloud and wait until the node has handled it (counter incremented)."""
        before = self.node.counters[counter]
        received = self.node.counters["clouds_received"]
        self.publish(msg)
        wait_for(lambda: self.node.counters["clouds_received"] > received, what="the cloud to arrive")
        wait_for(lambda: self.node.counters[counter] > before or counter == "clouds_received",
                 what=f"{counter} to increase")

    def call(self, srv_type, name: str, request, timeout: float = TIMEOUT):
        client = self.client.create_client(srv_type, name)
        assert client.wait_for_service(timeout_sec=timeout), f"service {name} not available"
        future = client.call_async(request)
        wait_for(future.done, timeout, f"the response of {name}")
        self.client.destroy_client(client)
        return future.result()

    def wait_idle(self):
        wait_for(lambda: self.node.worker.wait_idle(0.05), what="the inference worker to go idle")

    def close(self):
        """Shut everything down; RuntimeError if the executor stopped spinning before (see Spinner)."""
        self.node.shutdown(1.0)
        self.spinner.shutdown()
        self.node.destroy_node()
        self.client.destroy_node()
        rclpy.shutdown(context=self.context)
        self.spinner.join()


def close_all(harnesses: list[Harness]) -> None:
    """Close every harness (a fixture's teardown), then raise the first close() error."""
    errors = []
    for h in harnesses:
        try:
            h.close()
        except Exception as error:  # noqa: BLE001 - the rest are closed first, then it is raised
            errors.append(error)
    if errors:
        raise errors[0]


def interrupt(process, within_s: float = 2.0) -> tuple[float, str]:
    """Ctrl-C a node process started with ``stdout=PIPE, stderr=STDOUT, text=True``; (seconds until
    it exited, its output), or AssertionError with the output when it outlives ``within_s``."""
    start = time.monotonic()
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=within_s)
    except subprocess.TimeoutExpired:
        process.kill()
        output = process.communicate(timeout=10)[0]
        raise AssertionError(f"no exit within {within_s:g} s of SIGINT:\n{output}") from None
    elapsed = time.monotonic() - start
    return elapsed, process.communicate(timeout=10)[0]

