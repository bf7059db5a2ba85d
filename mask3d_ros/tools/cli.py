"""Command-line plumbing shared by the console scripts: argument types, ``-p name:=value`` read and
written as ROS does, ``--ros-args`` splitting, signal handling and progress lines.

Imports neither ROS nor torch, so that the tools without ROS (``mask3d-ros-eval``) can use it.
"""
from __future__ import annotations

import argparse
import re
import signal
import sys
from pathlib import Path
from typing import Callable, Sequence

import yaml


def say(tool: str, message: str) -> None:
    """A progress line on stderr, ``[tool] message``, shown at once."""
    print(f"[{tool}] {message}", file=sys.stderr, flush=True)


# --- argument types ---------------------------------------------------------------------------


def positive(text: str) -> float:
    """A finite number above 0 (rates, durations)."""
    value = float(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, not {text}")
    return value


def resolution(text: str) -> tuple[int, int]:
    """``WIDTHxHEIGHT`` -> (width, height)."""
    match = re.fullmatch(r"(\d+)x(\d+)", text)
    if not match:
        raise argparse.ArgumentTypeError(f"resolution must be WIDTHxHEIGHT, e.g. 320x240, not {text!r}")
    return int(match[1]), int(match[2])


def natural_key(path: str | Path) -> tuple:
    """Sort key of a file name in natural order: digit runs compare as numbers (``test2`` before
    ``test10``), the stem before the suffix (``a.pcd`` before ``a1.pcd``)."""
    path = Path(path)
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.stem)), path.name


# --- ROS parameters and arguments -------------------------------------------------------------


def ros_value(value) -> str:
    """A parameter value as ``-p name:=VALUE`` reads it (YAML); strings YAML would read otherwise are quoted."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(ros_value(item) for item in value) + "]"
    if isinstance(value, str):
        return value if value and yaml.safe_load(value) == value else "'" + value.replace("'", "''") + "'"
    return repr(value)


def parameter_override(text: str) -> tuple[str, object]:
    """``name:=value`` with the value read as YAML, as ``--ros-args -p`` reads it."""
    name, sep, value = text.partition(":=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected name:=value, not {text!r}")
    return name, yaml.safe_load(value) if value else ""


def split_ros_args(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(our arguments, ROS arguments): the ROS ones run from ``--ros-args`` to ``--`` or the end.

    rclpy's own ``remove_ros_args`` is not used: it also takes bare ``a:=b`` words (the deprecated
    remap syntax), which would swallow ``--remap``'s value.
    """
    own, ros, inside = [], [], False
    for word in argv:
        if word == "--ros-args":
            inside = True
        elif inside and word == "--":
            inside = False
            continue
        (ros if inside else own).append(word)
    return own, ros


def on_signals(callback: Callable[[], None]) -> None:
    """Call ``callback`` on SIGINT and SIGTERM: the tools finish what they do and stop cleanly (no
    exception in the middle of a write), also when a shell started them in the background, which
    makes them ignore SIGINT."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda _signum, _frame: callback())
