"""End-to-end latency through the running node: cloud stamp to labeled cloud received.

The node runs as its own process, as a user starts it (``mask3d_node --ros-args --params-file
config/mask3d_tabletop.yaml ...``: bundled model on CPU, one OpenMP thread as the demo gives it,
latest-wins inference, input depth 1), isolated like the demo (localhost discovery, a private
domain, the shared-memory Fast DDS profile). This process publishes real Kinect frames (mOSD val)
or simulated ones at a fixed rate, stamped with the wall clock at publishing, and takes the time
each labeled cloud arrives. Counts come from the node's /diagnostics counters: clouds received
(the rest were lost before the node, e.g. overwritten in the depth-1 queue), inferences, frames
dropped by the latest-wins worker. Baseline: the node's own mean inference time over the same
frames, so the ratio is the share of the latency spent in the model and the rest is transport,
decode, queueing and output building.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import PointCloud2

from mask3d_ros.model.files import bundled_checkpoint
from mask3d_ros.tools.bench.clouds import mosd_cloud, synthetic_kinect_cloud
from mask3d_ros.tools.bench.core import Row, percentile
from mask3d_ros.tools.harness import (
    DIAGNOSTICS_TOPIC,
    LABELED_CLOUD_TOPIC,
    PARAMS_FILE,
    NodeProcess,
    node_command,
    node_parameters,
    package_root,
    pipeline_values,
    spun_graph,
)

POINTS_TOPIC = "/bench/points"
DRAIN_TIMEOUT_S = 180.0
DIAGNOSTICS_PERIOD_S = 0.5


def latency_frames(mosd: Path | None, count: int) -> tuple[list, str]:
    """Up to ``count`` Kinect clouds: mOSD val frames when there, else simulated ones."""
    if mosd is not None:
        folder = mosd / "val" if (mosd / "val").is_dir() else mosd
        paths = sorted(folder.glob("*.pcd"))[:count]
        if paths:
            return [mosd_cloud(path) for path in paths], f"{len(paths)} real mOSD frames from {folder}"
    count = max(1, min(count, 3))  # ray casting costs about 1 s a frame
    return [synthetic_kinect_cloud(seed) for seed in range(count)], f"{count} simulated Kinect frames"


def bench_parameters() -> dict[str, object]:
    """Overrides of config/mask3d_tabletop.yaml: our topic, the bundled model on CPU, frequent diagnostics."""
    return node_parameters(POINTS_TOPIC, bundled_checkpoint(),
                           {"model.device": "cpu", "diagnostics.period": DIAGNOSTICS_PERIOD_S})


@dataclass
class Probe:
    """The benchmark's side of the graph: publishes clouds, times labeled clouds, keeps /diagnostics."""

    node: object
    publisher: object
    received: list = field(default_factory=list)  # (stamp ns, receive wall time ns) per labeled cloud
    statuses: list = field(default_factory=list)  # (wall time s, pipeline key/values)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_labeled(self, msg) -> None:
        now = time.time_ns()
        with self.lock:
            self.received.append((msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec, now))

    def on_diagnostics(self, msg) -> None:
        for values in pipeline_values(msg):
            with self.lock:
                self.statuses.append((time.time(), values))


def make_probe(node) -> Probe:
    """The cloud publisher and the two subscriptions on ``node``."""
    # Reliable depth 1, as a camera driver and the node's input_qos: the latest cloud only.
    probe = Probe(node, node.create_publisher(PointCloud2, POINTS_TOPIC,
                                              QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)))
    node.create_subscription(PointCloud2, LABELED_CLOUD_TOPIC, probe.on_labeled, QoSProfile(depth=10))
    node.create_subscription(DiagnosticArray, DIAGNOSTICS_TOPIC, probe.on_diagnostics, QoSProfile(depth=10))
    return probe


def _counts(values: dict) -> dict[str, float] | None:
    keys = ("clouds_received", "inference_requests", "inferences", "dropped_frames", "inference_failures",
            "results_published", "mean_inference_ms")
    try:
        return {key: float(values[key]) for key in keys} | {"busy": values.get("inference_busy") == "True"}
    except (KeyError, ValueError):
        return None


def _drained(probe: Probe, after_s: float) -> dict | None:
    """The node's counts once two statuses sent after ``after_s`` agree it is idle, else None."""
    with probe.lock:
        recent = [c for t, v in probe.statuses if t > after_s and (c := _counts(v)) is not None][-2:]
    if len(recent) < 2 or recent[0] != recent[1]:
        return None
    last = recent[1]
    finished = last["inferences"] + last["dropped_frames"] + last["inference_failures"] >= last["inference_requests"]
    return last if finished and not last["busy"] else None


def wait_drained(probe: Probe, after_s: float, process, timeout_s: float = DRAIN_TIMEOUT_S) -> dict:
    """Block until the node is idle (see :func:`_drained`); raises if it died or never settles."""
    deadline = time.monotonic() + timeout_s
    while (counts := _drained(probe, after_s)) is None:
        if process is not None:
            process.check_running("during the latency benchmark")
        if time.monotonic() > deadline:
            raise TimeoutError(f"the node did not go idle within {timeout_s:g} s")
        time.sleep(0.05)
    return counts


def wait_received(probe: Probe, count: float, timeout_s: float = 5.0) -> None:
    """The last labeled clouds may still be on their way when the node reports itself idle."""
    deadline = time.monotonic() + timeout_s
    while len(probe.received) < count and time.monotonic() < deadline:
        time.sleep(0.02)


def publish_at(probe: Probe, frames: list, rate_hz: float, count: int) -> tuple[list[int], float]:
    """Publish ``count`` clouds at ``rate_hz`` (as fast as possible when behind); their stamps, achieved Hz."""
    stamps = []
    start = time.monotonic()
    for index in range(count):
        delay = start + index / rate_hz - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        msg = frames[index % len(frames)]
        now = time.time_ns()
        msg.header.stamp = Time(sec=now // 1_000_000_000, nanosec=now % 1_000_000_000)
        probe.publisher.publish(msg)
        stamps.append(now)
    elapsed = time.monotonic() - start
    return stamps, (count - 1) / elapsed if count > 1 and elapsed > 0 else rate_hz


def measure_rate(probe: Probe, frames: list, rate_hz: float, count: int, process) -> dict:
    """One rate: latencies of the answered frames and the node's counter deltas."""
    before = wait_drained(probe, time.time(), process)
    with probe.lock:
        probe.received.clear()
    stamps, achieved = publish_at(probe, frames, rate_hz, count)
    after = wait_drained(probe, time.time() + 0.1, process)
    wait_received(probe, after["results_published"] - before["results_published"])
    sent = set(stamps)
    with probe.lock:
        latencies = [(received - stamp) / 1e6 for stamp, received in probe.received if stamp in sent]
        distinct = len({stamp for stamp, _ in probe.received if stamp in sent})
    delta = {key: after[key] - before[key] for key in ("clouds_received", "inferences", "dropped_frames",
                                                      "inference_failures", "results_published")}
    runs = delta["inferences"] + delta["inference_failures"]
    total_ms = after["mean_inference_ms"] * (after["inferences"] + after["inference_failures"]) \
        - before["mean_inference_ms"] * (before["inferences"] + before["inference_failures"])
    return {"rate_hz": rate_hz, "achieved_hz": achieved, "published": count, "answered": len(latencies),
            "distinct_stamps": distinct,
            "latencies_ms": latencies, "mean_inference_ms": total_ms / runs if runs else None,
            **{key: int(value) for key, value in delta.items()}}


def start_node(log_path: Path) -> NodeProcess:
    """The node process, started with the tabletop parameters file and :func:`bench_parameters`."""
    params_file = package_root() / PARAMS_FILE
    if not params_file.is_file():
        raise FileNotFoundError(f"{PARAMS_FILE} not found (package share directory, source tree or working directory)")
    return NodeProcess(node_command(params_file, bench_parameters()), log_path)


def run_latency(frames: list, rates: tuple[float, ...], seconds: float, min_frames: int, log_path: Path,
                warmup: int = 2) -> list[dict]:
    """Start the node, warm it up on ``warmup`` frames, then measure each rate; one dict per rate."""
    with spun_graph("mask3d_bench") as graph:
        probe = make_probe(graph)
        with start_node(log_path) as node:
            node.wait_ready(graph, [POINTS_TOPIC], [LABELED_CLOUD_TOPIC])
            deadline = time.monotonic() + 30
            while probe.publisher.get_subscription_count() == 0 or graph.count_subscribers(LABELED_CLOUD_TOPIC) == 0:
                if time.monotonic() > deadline:
                    raise node.fail("the node and the benchmark did not connect")
                time.sleep(0.05)
            measure_rate(probe, frames, 1.0, warmup, node)  # first inferences: allocator, lazy imports
            return [measure_rate(probe, frames, rate, max(min_frames, int(round(rate * seconds))), node)
                    for rate in rates]


def latency_rows(results: list[dict], source: str) -> list[Row]:
    """p50 and p99 per rate, beside the node's mean inference time."""
    rows = []
    for result in results:
        lost = result["published"] - result["clouds_received"]
        counts = (f"{result['published']} published ({result['achieved_hz']:.1f} Hz achieved), "
                  f"{result['clouds_received']} received by the node ({lost} lost before it), "
                  f"{result['dropped_frames']} dropped by latest-wins, {result['inferences']} inferences, "
                  f"{result['answered']} labeled clouds timed ({result['distinct_stamps']} distinct stamps)")
        extra = {key: value for key, value in result.items() if key != "latencies_ms"}
        for q in (50, 99):
            rows.append(Row(
                f"end-to-end latency p{q} at {result['rate_hz']:g} Hz (stamp to labeled cloud received)",
                percentile(result["latencies_ms"], q), "ms", "node's own mean inference time (same frames)",
                result["mean_inference_ms"], (f"{source}; " + counts) if q == 50 else "same run",
                extra=extra | {"percentile": q}))
    return rows

