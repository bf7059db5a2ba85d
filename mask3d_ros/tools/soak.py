"""``mask3d-ros-soak``: run the node for a long time at camera rate and check that it stays healthy.

    mask3d-ros-soak [--duration 600] [--rate 30] [--mosd DIR | --synthetic N] [--warmup S] [--window S]
        [--checkpoint W.ckpt | --random-weights] [--max-rss-growth 0.05] [--max-p99-ratio 1.5]
        [--json FILE] [--out DIR] [--domain-id N] [-p name:=value ...]

The node runs as its own process, exactly as users start it (``mask3d_node --ros-args --params-file
config/mask3d_tabletop.yaml ...``, the command is printed), with the bundled model. This process
publishes real Kinect frames (mOSD val, 640 x 480 organized clouds; synthetic frames when the data is
absent) on ``/points`` at ``--rate`` Hz, each stamped with the wall time at which it is published,
and records every ``~/labeled_cloud``, ``~/instances`` and ``~/markers`` plus ``/diagnostics``.
It samples the node's resident memory (``/proc/PID/status``) twice a second.

After ``--duration`` seconds it stops publishing, waits until the node has finished its last
inference and every output has arrived, stops the node with SIGINT and checks:

* memory: the node's peak RSS in the last window is at most ``--max-rss-growth`` above its peak in
  the first window after the warm-up (peaks, because RSS swings with every inference);
* latency (cloud stamp to labeled cloud received, p50 / p99 per window): the last window's p99 is
  at most ``--max-p99-ratio`` times the first post-warm-up window's (0 turns the check off);
* outputs: every cloud the node received is accounted for by the node's own counters: accepted
  clouds = inference requests = inferences + latest-wins drops (+ failures, which must be 0), and
  inferences = results published = labeled clouds and instances received here; every output
  carries the stamp of a published cloud. Clouds published but never received by the node were
  superseded in its depth-1 input queue (``input_qos.depth: 1``, by design); they are reported.

Exit status 0 when every check passes, 1 when one fails, 2 when the node could not run.
ROS isolation as in ``mask3d-ros-demo``: localhost discovery, a domain of its own, shared memory.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import threading
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Sequence

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.qos import QoSProfile
from sensor_msgs.msg import PointCloud2
from std_msgs.msg import Header
from visualization_msgs.msg import MarkerArray

from mask3d_ros.data.pointfile import read_pcd
from mask3d_ros.data.synthetic import generate_frame
from mask3d_ros.model.files import BUNDLED_CHECKPOINT, ModelError, bundled_checkpoint
from mask3d_ros.msg import InstanceArray
from mask3d_ros.ros.cloud import create_cloud
from mask3d_ros.tools.cli import parameter_override, positive, say
from mask3d_ros.tools.harness import (
    DIAGNOSTICS_TOPIC,
    INSTANCES_TOPIC,
    LABELED_CLOUD_TOPIC,
    MARKERS_TOPIC,
    PARAMS_FILE,
    STOP_TIMEOUT_S,
    NodeProcess,
    default_domain_id,
    exit_status,
    isolate_ros,
    node_command,
    node_parameters,
    package_root,
    pipeline_values,
    spun_graph,
)
from mask3d_ros.tools.scene_bags import synthetic_records

POINTS_TOPIC = "/points"
FRAME_ID = "kinect_rgb_optical_frame"
RSS_PERIOD_S = 0.5
DRAIN_TIMEOUT_S = 120.0
COUNTERS = ("clouds_received", "clouds_accumulated", "malformed_clouds", "empty_clouds", "clouds_outside_map",
            "pose_failures", "inference_requests", "inferences", "dropped_frames", "inference_failures",
            "inferences_skipped_small_map", "inferences_skipped_unchanged", "results_discarded_after_reset",
            "results_published")

_say = partial(say, "soak")


# --- input frames ---------------------------------------------------------------------------


def default_mosd_dir(root: Path) -> Path:
    return root.parent / "shared" / "data" / "mosd" / "val"


def mosd_frames(directory: Path) -> list[np.ndarray]:
    """The organized (height, width) point records of every .pcd in ``directory``."""
    paths = sorted(Path(directory).glob("*.pcd"))
    if not paths:
        raise SystemExit(f"mask3d-ros-soak: no .pcd files in {directory}")
    return [read_pcd(path).grid() for path in paths]


def synthetic_frames(count: int) -> list[np.ndarray]:
    """Organized x, y, z, rgb records of ``count`` rendered mOSD-like frames (no real data needed)."""
    return [synthetic_records(generate_frame(seed)) for seed in range(count)]


# --- measurements ---------------------------------------------------------------------------


def read_rss(pid: int) -> int | None:
    """Resident set size of ``pid`` in bytes (Linux /proc), None when it cannot be read."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


class RssSampler:
    """Samples a process's RSS in a thread: a list of (monotonic seconds, bytes)."""

    def __init__(self, pid: int, period_s: float = RSS_PERIOD_S):
        self.pid, self.period_s = pid, period_s
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            rss = read_rss(self.pid)
            if rss is not None:
                self.samples.append((time.monotonic(), rss))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2.0)


@dataclass
class Window:
    start_s: float  # seconds after the first publish
    end_s: float
    outputs: int = 0
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    rss_peak_mib: float | None = None


def window_edges(duration_s: float, warmup_s: float, window_s: float) -> list[tuple[float, float]]:
    """Consecutive windows from the end of the warm-up to ``duration_s``; a short rest joins the last."""
    edges, start = [], warmup_s
    while start + window_s <= duration_s + 1e-9:
        edges.append((start, start + window_s))
        start += window_s
    if not edges:
        return [(warmup_s, max(duration_s, warmup_s))]
    if duration_s - edges[-1][1] > 1e-9:
        edges[-1] = (edges[-1][0], duration_s)
    return edges


def summarize_windows(edges, latencies: Sequence[tuple[float, float]],
                      rss: Sequence[tuple[float, int]]) -> list[Window]:
    """Per window: latency percentiles of the clouds stamped in it and the node's peak RSS in it.

    ``latencies``: (seconds after start at which the cloud was published, latency ms);
    ``rss``: (seconds after start, bytes)."""
    lat = np.array(latencies, dtype=np.float64).reshape(-1, 2)
    mem = np.array(rss, dtype=np.float64).reshape(-1, 2)
    windows = []
    for start, end in edges:
        window = Window(start, end)
        inside = lat[(lat[:, 0] >= start) & (lat[:, 0] < end), 1]
        window.outputs = int(inside.size)
        if inside.size:
            window.latency_p50_ms, window.latency_p99_ms = (float(v) for v in np.percentile(inside, [50, 99]))
        peak = mem[(mem[:, 0] >= start) & (mem[:, 0] < end), 1]
        if peak.size:
            window.rss_peak_mib = float(peak.max()) / 2**20
        windows.append(window)
    return windows


def rss_slope_mib_per_min(rss: Sequence[tuple[float, int]], after_s: float) -> float | None:
    """Least-squares slope of RSS after the warm-up (MiB per minute): a trend the peaks may hide."""
    mem = np.array(rss, dtype=np.float64).reshape(-1, 2)
    mem = mem[mem[:, 0] >= after_s]
    if len(mem) < 3 or np.ptp(mem[:, 0]) == 0:
        return None
    return float(np.polyfit(mem[:, 0], mem[:, 1] / 2**20, 1)[0] * 60.0)


def account(published: int, counters: dict[str, int], labeled: int, instances: int, stray_stamps: int) -> list[str]:
    """Every way the outputs fail to add up; empty when each cloud is accounted for."""
    c = {key: int(counters.get(key, 0)) for key in COUNTERS}
    problems = []

    def expect(left: int, right: int, text: str) -> None:
        if left != right:
            problems.append(f"{text}: {left} != {right}")

    if c["clouds_received"] > published:
        problems.append(f"the node received {c['clouds_received']} clouds, more than the {published} published")
    for key in ("malformed_clouds", "empty_clouds", "clouds_outside_map", "pose_failures", "inference_failures",
                "results_discarded_after_reset"):
        if c[key]:
            problems.append(f"{key} = {c[key]} (expected 0 for valid frames)")
    expect(c["clouds_received"], c["clouds_accumulated"] + c["malformed_clouds"] + c["empty_clouds"]
           + c["pose_failures"], "clouds received vs accumulated + rejected")
    expect(c["inference_requests"], c["clouds_accumulated"], "inference requests vs accepted clouds (per_frame)")
    expect(c["inference_requests"], c["inferences"] + c["dropped_frames"] + c["inference_failures"],
           "inference requests vs inferences + latest-wins drops + failures")
    expect(c["inferences"], c["results_published"] + c["inferences_skipped_small_map"]
           + c["inferences_skipped_unchanged"] + c["results_discarded_after_reset"],
           "inferences vs results published + skipped")
    expect(labeled, c["results_published"], "labeled clouds received vs results published")
    expect(instances, c["results_published"], "instance arrays received vs results published")
    if stray_stamps:
        problems.append(f"{stray_stamps} output(s) carry a stamp that was never published")
    if c["results_published"] == 0:
        problems.append("no result was published at all")
    return problems


# --- the run --------------------------------------------------------------------------------


@dataclass
class SoakOptions:
    duration_s: float = 600.0
    rate_hz: float = 30.0
    warmup_s: float | None = None  # None: a quarter of the duration, at most 60 s
    window_s: float | None = None  # None: a tenth of the duration after the warm-up, 5 to 60 s
    frames_dir: Path | None = None  # None: synthetic frames
    synthetic: int = 8
    checkpoint: Path | None = None  # None: random weights
    max_rss_growth: float = 0.05
    max_p99_ratio: float = 1.5
    out: Path = Path("build/soak")
    extra_parameters: dict[str, object] = field(default_factory=dict)

    def warmup(self) -> float:
        return self.warmup_s if self.warmup_s is not None else min(60.0, self.duration_s / 4)

    def window(self) -> float:
        if self.window_s is not None:
            return self.window_s
        return float(np.clip((self.duration_s - self.warmup()) / 10, 5.0, 60.0))


@dataclass
class Recording:
    """What the graph side saw, filled by subscription callbacks (executor thread)."""

    published_ns: dict[int, float] = field(default_factory=dict)  # stamp -> seconds after start
    latencies: list[tuple[float, float]] = field(default_factory=list)  # (published at s, latency ms)
    labeled: int = 0
    instances: int = 0
    markers: int = 0
    stray: int = 0
    statuses: list[dict[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_labeled(self, msg) -> None:
        received = time.time_ns()
        stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        with self.lock:
            self.labeled += 1
            at = self.published_ns.get(stamp)
            if at is None:
                self.stray += 1
            else:
                self.latencies.append((at, (received - stamp) / 1e6))

    def on_instances(self, msg) -> None:
        with self.lock:
            self.instances += 1

    def on_markers(self, msg) -> None:
        with self.lock:
            self.markers += 1

    def on_diagnostics(self, msg) -> None:
        with self.lock:
            self.statuses.extend(pipeline_values(msg))

    def last_counters(self) -> dict[str, int]:
        with self.lock:
            values = self.statuses[-1] if self.statuses else {}
        out = {}
        for key in COUNTERS:
            try:
                out[key] = int(values[key])
            except (KeyError, ValueError):
                pass
        return out


def drained(rec: Recording) -> bool:
    """Two consecutive /diagnostics agree: nothing running or waiting, all results arrived here."""
    with rec.lock:
        last = rec.statuses[-2:]
        labeled, instances = rec.labeled, rec.instances
    if len(last) < 2 or any(s.get("inference_busy") != "False" for s in last):
        return False
    keys = ("clouds_received", "inference_requests", "inferences", "results_published")
    if any(last[0].get(k) != last[1].get(k) for k in keys):
        return False
    c = rec.last_counters()
    settled = c.get("inference_requests", -1) == (c.get("inferences", 0) + c.get("dropped_frames", 0)
                                                   + c.get("inference_failures", 0))
    return settled and labeled >= c.get("results_published", 0) and instances >= c.get("results_published", 0)


def publish_loop(publisher, messages, rate_hz: float, duration_s: float, rec: Recording, node: NodeProcess,
                 t0: float) -> tuple[int, int]:
    """Publish at ``rate_hz`` on an absolute schedule for ``duration_s``; (published, late ticks skipped)."""
    period = 1.0 / rate_hz
    published = skipped = 0
    next_tick = t0
    while True:
        now = time.monotonic()
        if now - t0 >= duration_s:
            return published, skipped
        if now < next_tick:
            time.sleep(min(next_tick - now, 0.05))
            continue
        msg = messages[published % len(messages)]
        stamp_ns = time.time_ns()
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
        with rec.lock:
            rec.published_ns[stamp_ns] = now - t0
        publisher.publish(msg)
        published += 1
        next_tick += period
        behind = int((time.monotonic() - next_tick) // period)
        if behind > 0:  # the publisher fell behind (CPU): skip ticks instead of bursting
            skipped += behind
            next_tick += behind * period
        if published % max(1, int(rate_hz * 10)) == 0:
            node.check_running("during the soak")


def run(options: SoakOptions, root: Path) -> dict:
    """Start the node, publish, measure, drain, stop; the report as plain values."""
    if options.frames_dir is not None:
        grids, source = mosd_frames(options.frames_dir), f"mOSD {options.frames_dir}"
    else:
        _say(f"rendering {options.synthetic} synthetic frames (no mOSD data)")
        grids, source = synthetic_frames(options.synthetic), f"{options.synthetic} synthetic frames"
    messages = [create_cloud(Header(frame_id=FRAME_ID), grid.dtype, grid) for grid in grids]
    cloud_mib = len(messages[0].data) / 2**20
    _say(f"{len(messages)} frames from {source}, {grids[0].shape[1]}x{grids[0].shape[0]}, {cloud_mib:.1f} MiB each")

    options.out.mkdir(parents=True, exist_ok=True)
    command = node_command(root / PARAMS_FILE, node_parameters(POINTS_TOPIC, options.checkpoint,
                                                                options.extra_parameters))
    _say("starting the node: " + shlex.join(command))
    with spun_graph("mask3d_soak") as graph:
        rec = Recording()
        qos = QoSProfile(depth=50)
        graph.create_subscription(PointCloud2, LABELED_CLOUD_TOPIC, rec.on_labeled, qos)
        graph.create_subscription(InstanceArray, INSTANCES_TOPIC, rec.on_instances, qos)
        graph.create_subscription(MarkerArray, MARKERS_TOPIC, rec.on_markers, qos)
        graph.create_subscription(DiagnosticArray, DIAGNOSTICS_TOPIC, rec.on_diagnostics, QoSProfile(depth=20))
        publisher = graph.create_publisher(PointCloud2, POINTS_TOPIC, 10)
        sampler = None
        try:
            with NodeProcess(command, options.out / "node.log") as node:
                waited = node.wait_ready(graph, [POINTS_TOPIC], [LABELED_CLOUD_TOPIC, INSTANCES_TOPIC, MARKERS_TOPIC])
                while publisher.get_subscription_count() == 0:
                    node.check_running("while connecting")
                    time.sleep(0.05)
                _say(f"node ready after {waited:.0f} s (pid {node.process.pid}); publishing at {options.rate_hz:g} Hz"
                     f" for {options.duration_s:g} s")
                t0 = time.monotonic()
                sampler = RssSampler(node.process.pid)
                sampler.samples.append((t0, read_rss(node.process.pid) or 0))
                published, skipped = publish_loop(publisher, messages, options.rate_hz, options.duration_s,
                                                  rec, node, t0)
                publish_s = time.monotonic() - t0
                _say(f"published {published} clouds in {publish_s:.1f} s; waiting for the last results")
                deadline = time.monotonic() + DRAIN_TIMEOUT_S
                while not drained(rec) and time.monotonic() < deadline:
                    node.check_running("while finishing")
                    time.sleep(0.1)
                is_drained = drained(rec)
                sampler.stop()
                stop_started = time.monotonic()
                exit_code = node.stop(STOP_TIMEOUT_S)
                stop_s = time.monotonic() - stop_started
        finally:
            if sampler is not None:
                sampler.stop()

    rss = [(t - t0, b) for t, b in sampler.samples]
    with rec.lock:
        latencies = list(rec.latencies)
        received = {"labeled": rec.labeled, "instances": rec.instances, "markers": rec.markers, "stray": rec.stray}
    return evaluate(options, {
        "command": command, "source": source, "frames": len(messages), "cloud_mib": round(cloud_mib, 2),
        "published": published, "publish_s": round(publish_s, 1), "publish_ticks_skipped": skipped,
        "drained": is_drained, "node_exit": exit_code, "node_stop_s": round(stop_s, 2),
        "counters": rec.last_counters(), "received": received, "startup_s": round(waited, 1),
    }, latencies, rss)


def evaluate(options: SoakOptions, facts: dict, latencies, rss) -> dict:
    """Windows, checks and verdict from the raw measurements."""
    duration = max(facts["publish_s"], options.duration_s)
    edges = window_edges(duration, options.warmup(), options.window())
    windows = summarize_windows(edges, latencies, rss)
    checks = []
    first, last = windows[0], windows[-1]
    if first.rss_peak_mib and last.rss_peak_mib:
        growth = last.rss_peak_mib / first.rss_peak_mib - 1
        checks.append({"name": "rss_growth", "ok": growth < options.max_rss_growth,
                       "detail": f"peak RSS {first.rss_peak_mib:.0f} MiB in the first window after warm-up,"
                                 f" {last.rss_peak_mib:.0f} MiB in the last: {growth:+.1%}"
                                 f" (limit {options.max_rss_growth:+.0%})"})
    else:
        checks.append({"name": "rss_growth", "ok": False, "detail": "no RSS samples (not Linux?)"})
    if options.max_p99_ratio > 0:
        if first.latency_p99_ms and last.latency_p99_ms:
            ratio = last.latency_p99_ms / first.latency_p99_ms
            checks.append({"name": "p99_flat", "ok": ratio <= options.max_p99_ratio,
                           "detail": f"p99 {first.latency_p99_ms:.0f} ms in the first window after warm-up,"
                                     f" {last.latency_p99_ms:.0f} ms in the last: x{ratio:.2f}"
                                     f" (limit x{options.max_p99_ratio:g})"})
        else:
            checks.append({"name": "p99_flat", "ok": False, "detail": "a window without any output"})
    problems = account(facts["published"], facts["counters"], facts["received"]["labeled"],
                       facts["received"]["instances"], facts["received"]["stray"])
    if not facts["drained"]:
        problems.append(f"the node had not finished {DRAIN_TIMEOUT_S:g} s after the last cloud")
    c = facts["counters"]
    checks.append({"name": "outputs_accounted", "ok": not problems,
                   "detail": "; ".join(problems) if problems else
                   f"{c.get('results_published', 0)} results = {facts['received']['labeled']} labeled clouds received;"
                   f" {c.get('dropped_frames', 0)} requests dropped by latest-wins (counted)"})
    checks.append({"name": "clean_exit", "ok": facts["node_exit"] == 0,
                   "detail": f"exit status {facts['node_exit']} {facts['node_stop_s']:.2f} s after SIGINT"})
    all_lat = np.array([v for _, v in latencies]) if latencies else np.zeros(0)
    return {
        **facts,
        "options": {"duration_s": options.duration_s, "rate_hz": options.rate_hz, "warmup_s": options.warmup(),
                    "window_s": options.window(), "max_rss_growth": options.max_rss_growth,
                    "max_p99_ratio": options.max_p99_ratio},
        "input_superseded": facts["published"] - c.get("clouds_received", 0),
        "latency_ms": None if not all_lat.size else {
            "p50": round(float(np.percentile(all_lat, 50)), 1), "p99": round(float(np.percentile(all_lat, 99)), 1),
            "max": round(float(all_lat.max()), 1)},
        "rss_slope_mib_per_min": rss_slope_mib_per_min(rss, options.warmup()),
        "rss_start_mib": round(rss[0][1] / 2**20, 1) if rss else None,
        "windows": [w.__dict__ for w in windows],
        "checks": checks,
        "ok": all(check["ok"] for check in checks),
    }


def _fmt(value, spec=".0f") -> str:
    return "-" if value is None else format(value, spec)


def format_report(report: dict) -> str:
    c, r, o = report["counters"], report["received"], report["options"]
    rate = report["published"] / report["publish_s"] if report["publish_s"] else 0.0
    lines = [
        f"soak: {report['source']}, {report['cloud_mib']} MiB per cloud, {o['rate_hz']:g} Hz for {o['duration_s']:g} s"
        f" (warm-up {o['warmup_s']:g} s, windows of {o['window_s']:g} s); node started in {report['startup_s']} s",
        f"published {report['published']} clouds ({rate:.1f} Hz achieved, {report['publish_ticks_skipped']} late"
        f" ticks skipped); node received {c.get('clouds_received', '?')}"
        f" ({report['input_superseded']} superseded in its depth-1 input queue)",
        f"node: {c.get('inference_requests', '?')} inference requests = {c.get('inferences', '?')} inferences +"
        f" {c.get('dropped_frames', '?')} latest-wins drops + {c.get('inference_failures', '?')} failures;"
        f" {c.get('results_published', '?')} results published",
        f"received: {r['labeled']} labeled clouds, {r['instances']} instance arrays, {r['markers']} marker arrays,"
        f" {r['stray']} with an unknown stamp",
    ]
    lat = report["latency_ms"]
    if lat:
        lines.append(f"latency (stamp -> labeled cloud received), all outputs: p50 {lat['p50']:.0f} ms,"
                     f" p99 {lat['p99']:.0f} ms, max {lat['max']:.0f} ms")
    slope = report["rss_slope_mib_per_min"]
    lines.append(f"node RSS at start {_fmt(report['rss_start_mib'])} MiB; trend after warm-up"
                 f" {_fmt(slope, '+.2f')} MiB/min")
    lines += ["", "window [s]      outputs  p50 [ms]  p99 [ms]  peak RSS [MiB]"]
    for w in report["windows"]:
        lines.append(f"{w['start_s']:>6.0f}-{w['end_s']:<6.0f}  {w['outputs']:>8}  {_fmt(w['latency_p50_ms']):>8}"
                     f"  {_fmt(w['latency_p99_ms']):>8}  {_fmt(w['rss_peak_mib'], '.1f'):>14}")
    lines.append("")
    for check in report["checks"]:
        lines.append(f"{'PASS' if check['ok'] else 'FAIL'}  {check['name']}: {check['detail']}")
    lines.append(f"verdict: {'PASS' if report['ok'] else 'FAIL'}")
    return "\n".join(lines)


# --- command line -------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="mask3d-ros-soak", formatter_class=argparse.RawDescriptionHelpFormatter,
                                     description=__doc__.split("\n\n", 1)[0], epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("--duration", type=positive, default=600.0, help="seconds of publishing (default 600)")
    parser.add_argument("--rate", type=positive, default=30.0, help="clouds per second (default 30)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--mosd", type=Path, help="folder of .pcd frames (default ../shared/data/mosd/val if present)")
    source.add_argument("--synthetic", type=int, metavar="N", help="publish N rendered synthetic frames instead")
    model = parser.add_mutually_exclusive_group()
    model.add_argument("--checkpoint", type=Path, help=f"model weights (default: the bundled {BUNDLED_CHECKPOINT})")
    model.add_argument("--random-weights", action="store_true", help="untrained weights (plumbing only)")
    parser.add_argument("--warmup", type=float, help="seconds excluded from the checks (default: duration/4, <= 60)")
    parser.add_argument("--window", type=positive, help="window length in seconds (default: 5 to 60)")
    parser.add_argument("--max-rss-growth", type=float, default=0.05, help="allowed peak RSS growth (default 0.05)")
    parser.add_argument("--max-p99-ratio", type=float, default=1.5,
                        help="allowed last/first window p99 ratio (default 1.5; 0: report only)")
    parser.add_argument("--json", type=Path, help="also write the report as JSON")
    parser.add_argument("--out", type=Path, default=Path("build/soak"), help="folder for node.log (default build/soak)")
    parser.add_argument("--domain-id", type=int, default=default_domain_id(),
                        help="ROS_DOMAIN_ID (default: one of 1..101 from the pid)")
    parser.add_argument("-p", dest="parameters", type=parameter_override, action="append", default=[],
                        metavar="NAME:=VALUE", help="extra node parameter (repeatable)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    root = package_root()
    if args.random_weights:
        checkpoint = None
    elif args.checkpoint is not None:
        checkpoint = args.checkpoint.resolve()
    else:
        try:
            checkpoint = bundled_checkpoint()
        except ModelError as error:
            print(f"mask3d-ros-soak: {error}; pass --checkpoint or --random-weights", file=sys.stderr)
            return 2
    frames_dir = args.mosd
    if frames_dir is None and args.synthetic is None and default_mosd_dir(root).is_dir():
        frames_dir = default_mosd_dir(root)
    options = SoakOptions(duration_s=args.duration, rate_hz=args.rate, warmup_s=args.warmup, window_s=args.window,
                          frames_dir=frames_dir, synthetic=args.synthetic or 8, checkpoint=checkpoint,
                          max_rss_growth=args.max_rss_growth, max_p99_ratio=args.max_p99_ratio, out=args.out,
                          extra_parameters=dict(args.parameters))
    if options.warmup() >= options.duration_s:
        print("mask3d-ros-soak: --warmup must be shorter than --duration", file=sys.stderr)
        return 2
    isolate_ros(args.domain_id, args.out.resolve() / "ros_log", root)

    def soak() -> int:
        report = run(options, root)
        print(format_report(report))
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(report, indent=1) + "\n")
        return 0 if report["ok"] else 1

    return exit_status("mask3d-ros-soak", soak, failed_status=2)


if __name__ == "__main__":
    sys.exit(main())
