"""The console scripts' shared command-line helpers (``mask3d_ros.tools.cli``), and the rule that a
console script is a command line over library modules: no tools module imports another's script."""
from __future__ import annotations

import argparse
import ast
import configparser
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mask3d_ros.tools.cli import (
    natural_key,
    on_signals,
    parameter_override,
    positive,
    resolution,
    ros_value,
    say,
    split_ros_args,
)

REPO = Path(__file__).resolve().parents[2]
TOOLS = REPO / "mask3d_ros" / "tools"


def console_script_modules() -> set[str]:
    """The modules behind setup.cfg's console scripts (``mask3d_ros.tools.X``)."""
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    entries = config["options.entry_points"]["console_scripts"].strip().splitlines()
    return {entry.split("=", 1)[1].strip().split(":")[0] for entry in entries}


def tools_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mask3d_ros.tools"):
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("mask3d_ros.tools"))
    return found


def test_no_tools_module_imports_a_console_script():
    scripts = {module for module in console_script_modules() if module.startswith("mask3d_ros.tools")}
    assert "mask3d_ros.tools.demo" in scripts and "mask3d_ros.tools.bench" in scripts
    wrong = []
    for path in TOOLS.rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] in ("__init__", "__main__") else parts)
        for target in tools_imports(path) & scripts:
            if not (module == target or module.startswith(target + ".")):  # a package's own submodules
                wrong.append(f"{module} imports {target}")
    assert not wrong, "\n".join(wrong)


def test_cli_imports_neither_ros_nor_torch():
    """``mask3d-ros-eval`` uses it and runs without ROS."""
    script = ("import sys, mask3d_ros.tools.cli; "
              "print(sorted(m for m in ('rclpy', 'torch', 'mask3d_ros.ros') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr


def test_positive_takes_finite_numbers_above_zero():
    assert positive("0.25") == 0.25 and positive("3") == 3.0
    for text in ("0", "-1", "inf", "nan"):
        with pytest.raises(argparse.ArgumentTypeError, match="positive"):
            positive(text)
    with pytest.raises(ValueError):
        positive("fast")


def test_resolution_is_width_x_height():
    assert resolution("320x240") == (320, 240)
    for text in ("320", "320x", "x240", "320X240", "-1x2"):
        with pytest.raises(argparse.ArgumentTypeError, match="WIDTHxHEIGHT"):
            resolution(text)


def test_natural_key_orders_numbers_by_value():
    names = ["test10.pcd", "test2.pcd", "learn1.pcd", "test1.pcd", "test1a.pcd", "test.pcd", "a10b1.ply", "a2b1.ply"]
    assert sorted(names, key=natural_key) == [
        "a2b1.ply", "a10b1.ply", "learn1.pcd", "test.pcd", "test1.pcd", "test1a.pcd", "test2.pcd", "test10.pcd"]
    assert natural_key(Path("dir/scene7.npz")) == natural_key("scene7.npz")


@pytest.mark.parametrize("value", [True, False, 0, 3, -2.5, 0.0, 0.005, "odom", "", "true", "1.5", "it's",
                                   "a: b", [0.1, 0.0, 0.05], ["a", "b"], [True, False]])
def test_ros_value_reads_back_as_yaml_and_as_a_parameter_override(value):
    written = ros_value(value)
    assert yaml.safe_load(written) == value
    assert parameter_override(f"name:={written}") == ("name", value)


def test_ros_value_writes_float_lists_as_floats():
    """rcl refuses a list that mixes integers and floats: ``[0.1,0,0.05]`` is not a double array."""
    assert ros_value([0.1, 0.0, 0.05]) == "[0.1,0.0,0.05]"


def test_parameter_override_needs_a_name_and_the_separator():
    assert parameter_override("model.device:=cpu") == ("model.device", "cpu")
    assert parameter_override("x:=") == ("x", "")
    for text in ("model.device=cpu", ":=cpu", "cpu"):
        with pytest.raises(argparse.ArgumentTypeError, match="name:=value"):
            parameter_override(text)


def test_split_ros_args_keeps_remap_values_as_ours():
    argv = ["bag", "--remap", "/a:=/b", "--ros-args", "-r", "__node:=player", "--", "--rate", "2"]
    assert split_ros_args(argv) == (["bag", "--remap", "/a:=/b", "--rate", "2"], ["--ros-args", "-r", "__node:=player"])
    assert split_ros_args(["x", "--ros-args", "-p", "use_sim_time:=true"]) == (
        ["x"], ["--ros-args", "-p", "use_sim_time:=true"])


def test_on_signals_calls_back_on_sigint_and_sigterm():
    calls = []
    before = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        on_signals(lambda: calls.append(1))
        for signum in before:
            signal.raise_signal(signum)
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)
    assert calls == [1, 1]


def test_say_prefixes_the_tool(capsys):
    say("demo", "replaying")
    assert capsys.readouterr().err == "[demo] replaying\n"
