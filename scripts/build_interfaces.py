#!/usr/bin/env python3
"""Generate and install this package's msg/ interfaces into a ROS 2 prefix built from PyPI wheels.

On a real ROS 2 install `colcon build` does this. In a virtual environment holding the
ros-jazzy-* wheels (no ROS install), three things differ (README, "Running without a ROS
install"): the wheels' exported CMake files hard-code the include paths of the image they were
built in, so they are rewritten to this interpreter's Python and numpy headers; CMake is pointed at
the venv as the ament prefix; and the installed `mask3d_ros/__init__.py` is made to extend its
package path so the generated `mask3d_ros.msg` and the Python sources (an editable checkout)
import as one package.

Idempotent: does nothing when the interfaces were built from the same msg/ and build files, and
share/mask3d_ros/{launch,config,model} already match the tree.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "mask3d_ros"
INIT_TEXT = (REPO / PACKAGE / "__init__.py").read_text()
# Include directories of the manylinux image the wheels were built in.
WHEEL_BUILD_INCLUDES = re.compile(r"/opt/python/cp3\d+-cp3\d+/"
                                  r"(include/python3\.\d+|lib/python3\.\d+/site-packages/numpy/_core/include)")


def fix_exported_cmake(prefix: Path) -> int:
    """Point the wheels' exported *rosidl_generator_py* targets at this interpreter's headers."""
    replacements = {
        "include": sysconfig.get_paths()["include"],
        "numpy": numpy.get_include(),
    }
    changed = 0
    for path in (prefix / "share").rglob("*.cmake"):
        text = path.read_text(errors="surrogateescape")
        if "/opt/python/" not in text:
            continue
        new = WHEEL_BUILD_INCLUDES.sub(
            lambda m: replacements["numpy"] if "numpy" in m.group(1) else replacements["include"], text)
        if new != text:
            path.write_text(new, errors="surrogateescape")
            changed += 1
    return changed


def sources_digest() -> str:
    """Digest of everything the generated interfaces depend on."""
    digest = hashlib.sha256()
    for path in [*sorted((REPO / "msg").glob("*.msg")), REPO / "CMakeLists.txt", REPO / "setup.cfg", Path(__file__)]:
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


def stamp_path(prefix: Path) -> Path:
    return prefix / "share" / PACKAGE / ".interfaces-digest"


def up_to_date(prefix: Path) -> bool:
    stamp = stamp_path(prefix)
    return stamp.exists() and stamp.read_text().strip() == sources_digest()


def build(prefix: Path, build_dir: Path) -> None:
    env = dict(os.environ, AMENT_PREFIX_PATH=str(prefix), CMAKE_PREFIX_PATH=str(prefix))
    python = Path(sys.executable)
    configure = [
        "cmake", "-S", str(REPO), "-B", str(build_dir),
        f"-DCMAKE_INSTALL_PREFIX={prefix}",
        f"-DPython3_EXECUTABLE={python}",
        "-DBUILD_TESTING=OFF",
        "-DCMAKE_BUILD_TYPE=Release",
    ]
    subprocess.run(configure, check=True, env=env, stdout=subprocess.DEVNULL)
    jobs = str(os.cpu_count() or 2)
    subprocess.run(["cmake", "--build", str(build_dir), "-j", jobs], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(["cmake", "--install", str(build_dir)], check=True, env=env, stdout=subprocess.DEVNULL)


def remove_installed_sources(prefix: Path) -> None:
    """Keep only generated code in the prefix: the Python sources come from the checkout.

    `ament_python_install_package` copies the package's .py files; in the venv the editable
    checkout provides them instead, so copies here would shadow edits. The generated `msg/`
    and the type-support extension modules stay.
    """
    site = prefix / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    installed = site / PACKAGE
    for entry in installed.iterdir():
        generated = entry.name == "msg" or entry.name.startswith(f"{PACKAGE}_s__") or entry.name == "_" + PACKAGE
        if entry.name == "__init__.py":
            entry.write_text(INIT_TEXT)
        elif entry.name == "__pycache__":
            shutil.rmtree(entry)
        elif not generated:
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    # The generator's egg-info would make pip treat the generated files as a distribution
    # of its own and delete them when the editable checkout is (re)installed.
    for egg in site.glob(f"{PACKAGE}-*.egg-info"):
        shutil.rmtree(egg) if egg.is_dir() else egg.unlink()


SHARED_DIRECTORIES = ("launch", "config", "model")
"""Installed to share/mask3d_ros with the interfaces (CMakeLists.txt); ros2 launch reads them there."""


def mirror_shared_files(prefix: Path) -> int:
    """Make share/mask3d_ros/{launch,config,model} the tree's: the CMake install copies them only
    when the interfaces are rebuilt, and a stale parameters file under the prefix is what
    ``ros2 launch`` would start the node with. Returns how many files were written or removed."""
    changed = 0
    for name in SHARED_DIRECTORIES:
        source, target = REPO / name, prefix / "share" / PACKAGE / name
        wanted = {path.relative_to(source) for path in source.rglob("*")
                  if path.is_file() and "__pycache__" not in path.parts}
        for relative in sorted(wanted):
            there = target / relative
            if not there.is_file() or there.read_bytes() != (source / relative).read_bytes():
                there.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source / relative, there)
                changed += 1
        if target.is_dir():
            for path in target.rglob("*"):
                if path.is_file() and "__pycache__" not in path.parts and path.relative_to(target) not in wanted:
                    path.unlink()
                    changed += 1
    return changed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prefix", type=Path, default=Path(sys.prefix), help="ROS prefix (default: this venv)")
    parser.add_argument("--build-dir", type=Path, default=REPO / "build" / "interfaces")
    parser.add_argument("--force", action="store_true", help="rebuild even when up to date")
    args = parser.parse_args()
    prefix = args.prefix.resolve()
    if not args.force and up_to_date(prefix):
        print(f"interfaces: up to date in {prefix}")
    else:
        fixed = fix_exported_cmake(prefix)
        build(prefix, args.build_dir)
        remove_installed_sources(prefix)
        stamp_path(prefix).write_text(sources_digest() + "\n")
        print(f"interfaces: built and installed into {prefix} ({fixed} CMake export files fixed)")
    mirrored = mirror_shared_files(prefix)
    if mirrored:
        print(f"launch/, config/, model/: {mirrored} files updated under {prefix / 'share' / PACKAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
