#!/usr/bin/env bash
# The README's test command: set everything up (with the ROS 2 test overlay), check the colcon
# workspace build, run the tests.
#   scripts/run_tests.sh [PYTEST ARGS...]
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
scripts/setup_env.sh
# colcon build + install check; with MASK3D_ROS_COLCON_TEST=1 (CI) also `colcon test`, which runs
# the same suite through ament_cmake_pytest. Then lint, then the suite from the venv.
MASK3D_ROS_COLCON_TEST="${MASK3D_ROS_COLCON_TEST:-0}" scripts/colcon_check.sh
.venv/bin/ruff check .
# The ROS 2 test overlay that setup built (launch, ros2 CLI, tf2_ros, vision_msgs, sensor_msgs_py):
# active for the suite, so the real-package tests run (without ../shared they skip with the reason).
set +u; source scripts/overlay_env.sh; set -u
exec .venv/bin/python -m pytest "$@"
