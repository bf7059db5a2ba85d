"""Helpers for the tests against the real ROS 2 packages of the test overlay (launch, launch_ros, the
ros2 CLI, tf2_ros, vision_msgs, sensor_msgs_py; scripts/build_ros_overlay.sh, conftest.require_overlay):
an ament prefix that makes this checkout the package ``mask3d_ros``, processes whose output is
collected as it comes, and the leftovers of a process tree."""
from __future__ import annotations

import configparser
import os
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path

import psutil
from rcl_interfaces.srv import GetParameters
from rclpy.parameter import parameter_value_to_python

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = REPO / ".venv" / "bin"
PACKAGE = "mask3d_ros"
STARTUP_TIMEOUT = 120.0  # importing torch and building the model on a shared 2-core machine


def console_scripts() -> list[str]:
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    entries = config["options.entry_points"]["console_scripts"].strip().splitlines()
    return [line.split("=")[0].strip() for line in entries if line.strip()]


def make_package_prefix(root: Path) -> Path:
    """An ament prefix where ``mask3d_ros`` is this checkout: share/mask3d_ros links to the repository's
    launch/, config/, model/ and package.xml (so the launch file under test is the one in the working
    tree, not an installed copy), lib/mask3d_ros/<executable> to the venv's console scripts."""
    share = root / "share" / PACKAGE
    share.mkdir(parents=True, exist_ok=True)
    for name in ("config", "model", "package.xml"):
        (share / name).symlink_to(REPO / name)
    (share / "launch").mkdir(exist_ok=True)  # ros2 launch finds launch files with os.walk: no directory links
    for path in (REPO / "launch").glob("*.py"):
        (share / "launch" / path.name).symlink_to(path)
    index = root / "share" / "ament_index" / "resource_index" / "packages"
    index.mkdir(parents=True, exist_ok=True)
    (index / PACKAGE).touch()
    lib = root / "lib" / PACKAGE
    lib.mkdir(parents=True, exist_ok=True)
    for script in console_scripts():
        if (VENV_BIN / script).exists():
            (lib / script).symlink_to(VENV_BIN / script)
    return root


def ros_environment(prefix: Path, extra: dict | None = None) -> dict:
    """This process's environment (the overlay active, ROS_DOMAIN_ID and discovery range from conftest)
    with ``prefix`` first on AMENT_PREFIX_PATH; prefixes outside the repository (a ROS install in
    /opt/ros) are dropped, so what is found is what this checkout and its overlay hold."""
    env = dict(os.environ)
    parts = [p for p in env.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p.startswith(str(REPO))]
    env["AMENT_PREFIX_PATH"] = os.pathsep.join([str(prefix), *parts])
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def unique_name(stem: str = "mask3d") -> str:
    return f"{stem}_{uuid.uuid4().hex[:8]}"


class Process:
    """A command in its own session, its stdout and stderr collected line by line in a thread."""

    def __init__(self, cmd: list[str], env: dict, cwd: Path | str = "/tmp"):
        self.cmd = cmd
        self.popen = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True, start_new_session=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.popen.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_output(self, text: str, timeout: float = STARTUP_TIMEOUT) -> str:
        """Wait until ``text`` appears in the output; AssertionError with the output if the process
        exits or the time runs out first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.output:
                return self.output
            if self.popen.poll() is not None:
                self._reader.join(5)
                if text in self.output:
                    return self.output
                raise AssertionError(f"exited with {self.popen.returncode} before printing {text!r}:\n{self.output}")
            time.sleep(0.05)
        raise AssertionError(f"no {text!r} within {timeout:g} s:\n{self.output}")

    def wait(self, timeout: float) -> int:
        try:
            code = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running after {timeout:g} s:\n{self.output}") from None
        self._reader.join(5)
        return code

    def interrupt(self, timeout: float) -> tuple[int, float]:
        """SIGINT (Ctrl-C) to the process only; (exit status, seconds until it exited)."""
        start = time.monotonic()
        self.popen.send_signal(signal.SIGINT)
        code = self.wait(timeout)
        return code, time.monotonic() - start

    def kill(self):
        """SIGKILL this process and whatever is left of its session (the test's own processes only)."""
        for process in session_processes(self.popen.pid):
            try:
                process.kill()
            except psutil.Error:
                pass
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(10)
        self._reader.join(5)


def session_processes(session_id: int) -> list[psutil.Process]:
    """Live processes of the session ``session_id`` (a Process's pid: it started one)."""
    found = []
    for process in psutil.process_iter(["pid"]):
        try:
            if os.getsid(process.pid) == session_id and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
        except (OSError, psutil.Error):
            continue
    return found


def processes_with(token: str) -> list[psutil.Process]:
    """Live processes whose command line contains ``token`` (a unique node name)."""
    found = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(token in part for part in process.info["cmdline"] or ()) and \
                    process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
        except psutil.Error:
            continue
    return found


def get_parameters(node, fqn: str, names: list[str], timeout: float = 20.0) -> dict:
    """Parameter values of the node ``fqn`` through its GetParameters service (``node`` spun elsewhere)."""
    client = node.create_client(GetParameters, f"{fqn}/get_parameters")
    try:
        assert client.wait_for_service(timeout_sec=timeout), f"{fqn}/get_parameters not available"
        future = client.call_async(GetParameters.Request(names=names))
        deadline = time.monotonic() + timeout
        while not future.done() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert future.done(), f"no answer from {fqn}/get_parameters"
        return {name: parameter_value_to_python(value) for name, value in zip(names, future.result().values)}
    finally:
        node.destroy_client(client)


def node_names(node) -> set[str]:
    return {ns.rstrip("/") + "/" + name for name, ns in node.get_node_names_and_namespaces()}
