#!/usr/bin/env bash
# The README's first command: set everything up, then run the main job, the node on a generated
# tabletop bag (mask3d-ros-demo: arguments pass through, see --help). Prints per-frame results and
# AP, writes pictures and bags to build/demo/.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
scripts/setup_env.sh
exec .venv/bin/python -m mask3d_ros.tools.demo "$@"
