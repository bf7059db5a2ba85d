"""Health of the node as a diagnostic_msgs/DiagnosticStatus: rates, counters, levels.

:class:`RateMeter` measures the input rate over a sliding window of arrival times; :func:`status`
turns a plain dict of counters into a DiagnosticStatus with a level and a message that says what is
wrong. No rclpy here.
"""
from __future__ import annotations

import collections
import time
from typing import Any, Mapping

import torch
from diagnostic_msgs.msg import DiagnosticStatus, KeyValue


class RateMeter:
    """Events per second over the last ``window_s`` seconds (monotonic clock), and the time since the
    last event however long ago it was."""

    def __init__(self, window_s: float = 5.0, clock=time.monotonic):
        self.window_s = window_s
        self._clock = clock
        self._times: collections.deque[float] = collections.deque(maxlen=10_000)
        self._last: float | None = None  # kept apart: rate() forgets ticks older than the window

    def tick(self) -> None:
        self._last = self._clock()
        self._times.append(self._last)

    def rate(self) -> float:
        now = self._clock()
        while self._times and self._times[0] < now - self.window_s:
            self._times.popleft()
        if len(self._times) < 2:
            return 0.0
        span = now - self._times[0]
        return (len(self._times) - 1) / span if span > 0 else 0.0

    def since_last(self) -> float | None:
        """Seconds since the last tick; None before the first."""
        return None if self._last is None else self._clock() - self._last


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def level_and_message(stats: Mapping[str, Any], previous: Mapping[str, Any] | None,
                      input_timeout_s: float) -> tuple[int, str]:
    """Worst level over the checks, and the message of every check that is not OK."""
    level, problems = DiagnosticStatus.OK, []
    previous = previous or {}

    def worse(new_level: int, text: str) -> None:
        nonlocal level
        level = max(level, new_level)
        problems.append(text)

    since = stats.get("seconds_since_last_cloud")
    if since is None:
        worse(DiagnosticStatus.WARN, f"no cloud received on {stats.get('input_topic', 'the input')} yet"
              " (check the topic name, remapping and QoS)")
    elif since > input_timeout_s:
        worse(DiagnosticStatus.WARN, f"no cloud for {since:.1f} s")
    for key, text in (("pose_failures", "clouds skipped: no pose"),
                      ("malformed_clouds", "malformed clouds"),
                      ("clouds_outside_map", "clouds with no point inside the roi / map range"),
                      ("cloud_errors", "clouds lost to an internal error"),
                      ("inference_failures", "inference failed")):
        delta = stats.get(key, 0) - previous.get(key, 0)
        if delta > 0:
            worse(DiagnosticStatus.ERROR if key == "inference_failures" else DiagnosticStatus.WARN,
                  f"{text} ({delta} since last report)")
    if not stats.get("enabled", True):
        worse(DiagnosticStatus.OK, "inference disabled (~/enable)")
    return level, "; ".join(problems) if problems else "ok"


def status(name: str, hardware_id: str, stats: Mapping[str, Any], previous: Mapping[str, Any] | None,
           input_timeout_s: float) -> DiagnosticStatus:
    level, message = level_and_message(stats, previous, input_timeout_s)
    values = [KeyValue(key=key, value=_format(value)) for key, value in stats.items()]
    return DiagnosticStatus(level=level, name=name, message=message, hardware_id=hardware_id,
                            values=values)


def device_memory(device: str) -> str:
    """Allocated / reserved memory of a CUDA device, or 'n/a' on CPU."""
    if not device.startswith("cuda"):
        return "n/a (cpu)"
    try:
        allocated = torch.cuda.memory_allocated(device) / 2**20
        reserved = torch.cuda.memory_reserved(device) / 2**20
        return f"{allocated:.0f} MiB allocated, {reserved:.0f} MiB reserved"
    except Exception as error:  # noqa: BLE001
        return f"unknown ({error})"
