#!/usr/bin/env bash
# Build the ROS 2 Jazzy packages that PyPI lacks (launch, launch_ros, ros2cli, tf2, tf2_py, tf2_msgs,
# tf2_ros_py, composition_interfaces, vision_msgs, sensor_msgs_py) from the source archives in
# ../shared/ros2-src into a test overlay, .ros-overlay/ beside .venv/ (see ../shared/ros2-src/README.md):
#   - rosidl and C++ packages with colcon, the venv as the only underlay    -> .ros-overlay/install
#   - pure-Python packages with pip --no-deps --target                      -> .ros-overlay/python
# Activate it with `source scripts/overlay_env.sh`; the real-package tests use it.
#
# Cached: nothing is done when the archives (their sha256) and this script are those of the last
# build (.ros-overlay/stamp). Without ../shared/ros2-src (a user's clone) there is no overlay and
# this exits 0 (those tests skip with the reason); with CI=true that is an error.
#   MASK3D_ROS_SHARED=/path  where shared/ is (default: ../shared beside the repository)
#   scripts/build_ros_overlay.sh [--force]
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO/.venv"
OVERLAY="$REPO/.ros-overlay"
SRC_ARCHIVES="${MASK3D_ROS_SHARED:-$REPO/../shared}/ros2-src"
log() { printf '[overlay] %s\n' "$*" >&2; }
ARCHIVES=(launch launch_ros ros2cli rcl_interfaces geometry2 vision_msgs common_interfaces)
# colcon (compiled / rosidl), in the workspace made of the unpacked archives.
COLCON_PACKAGES=(tf2 tf2_msgs tf2_py composition_interfaces vision_msgs)
# pip --target (pure Python): folders inside the unpacked archives.
PYTHON_PACKAGES=(launch/launch launch/launch_xml launch/launch_yaml launch_ros/launch_ros launch_ros/ros2launch
                 ros2cli/ros2cli ros2cli/ros2node ros2cli/ros2param ros2cli/ros2topic ros2cli/ros2pkg ros2cli/ros2run
                 ros2cli/ros2service ros2cli/ros2interface geometry2/tf2_ros_py common_interfaces/sensor_msgs_py)

if [ ! -d "$SRC_ARCHIVES" ]; then
  if [[ "${CI:-}" =~ ^(1|true|yes)$ ]]; then
    log "CI run without $SRC_ARCHIVES: the real-package tests cannot run"; exit 1
  fi
  log "no $SRC_ARCHIVES: no ROS overlay (tests that need launch, tf2_ros, vision_msgs or the ros2 CLI skip)"
  exit 0
fi
[ -x "$VENV/bin/python" ] || { log "no $VENV: run scripts/setup_env.sh first"; exit 1; }

want="$( { for a in "${ARCHIVES[@]}"; do sha256sum "$SRC_ARCHIVES/$a.tar.gz" | cut -d' ' -f1; done
           sha256sum "${BASH_SOURCE[0]}" | cut -d' ' -f1; echo "$VENV"; } | sha256sum | cut -d' ' -f1)"
stamp="$OVERLAY/stamp"
if [ "${1:-}" != "--force" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  exit 0
fi

# One build at a time (two test runs in one checkout); the second waits and then finds it done.
mkdir -p "$OVERLAY"
exec 9>"$OVERLAY.lock"
flock 9
if [ "${1:-}" != "--force" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  exit 0
fi

start=$(date +%s)
log "building the ROS 2 test overlay in $OVERLAY (a few minutes, once)"
rm -rf "$OVERLAY"
mkdir -p "$OVERLAY/src" "$OVERLAY/python"
for a in "${ARCHIVES[@]}"; do tar -xzf "$SRC_ARCHIVES/$a.tar.gz" -C "$OVERLAY/src"; done

# The venv's exported CMake files must carry this interpreter's include paths (setup_env.sh does
# this for msg/ already; idempotent).
(cd "$REPO" && "$VENV/bin/python" -c "
import sys; sys.path.insert(0, 'scripts')
from pathlib import Path
import build_interfaces
build_interfaces.fix_exported_cmake(Path('$VENV'))
")

base_paths=()
for p in "${COLCON_PACKAGES[@]}"; do
  found="$(find "$OVERLAY/src" -mindepth 2 -maxdepth 2 -type d -name "$p" | head -1)"
  [ -n "$found" ] || { log "package $p not found in the archives"; exit 1; }
  base_paths+=("$found")
done
(
  cd "$OVERLAY"
  export PATH="$VENV/bin:$PATH" AMENT_PREFIX_PATH="$VENV" CMAKE_PREFIX_PATH="$VENV"
  unset COLCON_PREFIX_PATH PYTHONPATH
  touch src/COLCON_IGNORE
  colcon --log-base "$OVERLAY/log" build --base-paths "${base_paths[@]}" --merge-install \
    --build-base "$OVERLAY/build" --install-base "$OVERLAY/install" \
    --cmake-args -DPython3_EXECUTABLE="$VENV/bin/python" -DBUILD_TESTING=OFF -DCMAKE_BUILD_TYPE=Release \
      --no-warn-unused-cli \
    --event-handlers console_cohesion- status- summary+ >&2
)
colcon_done=$(date +%s)

targets=()
for p in "${PYTHON_PACKAGES[@]}"; do targets+=("$OVERLAY/src/$p"); done
"$VENV/bin/python" -m pip --disable-pip-version-check -q install --no-deps --no-build-isolation --no-compile \
  --target "$OVERLAY/python" "${targets[@]}" 2>&1 | grep -v "is ignored" >&2 || true
# ros2cli finds its verbs through entry points: every package must have landed.
for m in launch launch_xml launch_yaml launch_ros ros2launch ros2cli ros2param ros2node tf2_ros sensor_msgs_py; do
  [ -d "$OVERLAY/python/$m" ] || { log "pip --target did not install $m"; exit 1; }
done
[ -x "$OVERLAY/python/bin/ros2" ] || { log "no ros2 executable in $OVERLAY/python/bin"; exit 1; }
rm -rf "$OVERLAY/build" "$OVERLAY/src"  # keep install/, python/ and the colcon log
touch "$OVERLAY/COLCON_IGNORE"  # its install/share/*/package.xml are not packages of a workspace around it

# Smoke test in the activated environment.
(
  set +u; source "$REPO/scripts/overlay_env.sh"; set -u
  cd /tmp && "$VENV/bin/python" -c "
import launch, launch_ros.actions, tf2_ros, tf2_msgs.msg, vision_msgs.msg, sensor_msgs_py.point_cloud2
import composition_interfaces.srv
vision_msgs.msg.Detection3DArray(); tf2_ros.Buffer()
"
) || { log "the overlay does not import; see above"; exit 1; }
echo "$want" > "$stamp"
end=$(date +%s)
log "ROS 2 overlay ready in $((end - start)) s (colcon $((colcon_done - start)) s, pip $((end - colcon_done)) s)"
