#!/usr/bin/env bash
# The README's test command: set everything up, check the colcon workspace build, run the tests.
#   scripts/run_tests.sh [PYTEST ARGS...]
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
scripts/setup_env.sh
# colcon build + install check; with MASK3D_ROS_COLCON_TEST=1 (CI) also `colcon test`, which runs
# the same suite through ament_cmake_pytest. Then lint, then the suite from the venv.
MASK3D_ROS_COLCON_TEST="${MASK3D_ROS_COLCON_TEST:-0}" scripts/colcon_check.sh
.venv/bin/ruff check .
exec .venv/bin/python -m pytest "$@"
