#!/usr/bin/env bash
# Build this repository in a colcon workspace with the venv as the ROS underlay, as a user with a
# ROS 2 install would (`colcon build`, `colcon test`), and check what it installs.
#   scripts/colcon_check.sh [WORKSPACE]   (default: build/colcon_ws)
# Extra arguments for pytest under `colcon test` go in MASK3D_ROS_COLCON_PYTEST_ARGS.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO/.venv"
WS="${1:-$REPO/build/colcon_ws}"
mkdir -p "$WS/src"
ln -sfn "$REPO" "$WS/src/mask3d_ros"
cd "$WS"
export PATH="$VENV/bin:$PATH" AMENT_PREFIX_PATH="$VENV" CMAKE_PREFIX_PATH="$VENV"
# colcon must not descend into the checkout's own build outputs or venv.
for d in "$REPO/.venv" "$REPO/build" "$REPO/install" "$REPO/log"; do [ -d "$d" ] && touch "$d/COLCON_IGNORE"; done
colcon --log-base "$WS/log" build --symlink-install --build-base "$WS/build" --install-base "$WS/install" \
  --cmake-args -DPython3_EXECUTABLE="$VENV/bin/python" -DBUILD_TESTING=ON --no-warn-unused-cli \
  --event-handlers console_cohesion- status- summary+
# What `source install/setup.bash` gives a user: the node executable and the interfaces.
test -x "$WS/install/mask3d_ros/lib/mask3d_ros/mask3d_node"
test -f "$WS/install/mask3d_ros/share/mask3d_ros/msg/InstanceArray.msg"
(
  set +u; source "$WS/install/setup.bash"; set -u
  cd /tmp && python -c "import mask3d_ros.msg as m; m.InstanceArray(); print('colcon install: mask3d_ros.msg imports')"
)
if [ "${MASK3D_ROS_COLCON_TEST:-1}" = "1" ]; then
  colcon --log-base "$WS/log" test --build-base "$WS/build" --install-base "$WS/install" \
    --event-handlers console_direct+ ${MASK3D_ROS_COLCON_PYTEST_ARGS:+--pytest-args $MASK3D_ROS_COLCON_PYTEST_ARGS}
  colcon --log-base "$WS/log" test-result --test-result-base "$WS/build" --verbose
fi
