# Source this (bash) to use the ROS 2 test overlay that scripts/build_ros_overlay.sh built in
# .ros-overlay/: `ros2`, launch, launch_ros, tf2_ros, vision_msgs and sensor_msgs_py on top of .venv.
#   source scripts/overlay_env.sh
# Does nothing (and says so) when the overlay is not built.
_m3d_repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_m3d_overlay="$_m3d_repo/.ros-overlay"
if [ -x "$_m3d_overlay/python/bin/ros2" ]; then
  _m3d_prepend() {  # _m3d_prepend VAR DIR: DIR first in VAR, once
    local current="${!1:-}"
    case ":$current:" in *":$2:"*) ;; *) export "$1=$2${current:+:$current}" ;; esac
  }
  _m3d_prepend AMENT_PREFIX_PATH "$_m3d_repo/.venv"
  _m3d_prepend AMENT_PREFIX_PATH "$_m3d_overlay/install"
  _m3d_prepend CMAKE_PREFIX_PATH "$_m3d_overlay/install"
  _m3d_prepend LD_LIBRARY_PATH "$_m3d_overlay/install/lib"
  _m3d_prepend PYTHONPATH "$_m3d_overlay/install/lib/python3.11/site-packages"
  _m3d_prepend PYTHONPATH "$_m3d_overlay/python"
  _m3d_prepend PATH "$_m3d_overlay/install/bin"
  _m3d_prepend PATH "$_m3d_overlay/python/bin"
  _m3d_prepend PATH "$_m3d_repo/.venv/bin"
  export MASK3D_ROS_OVERLAY="$_m3d_overlay"
  unset -f _m3d_prepend
else
  echo "[overlay] $_m3d_overlay is not built (scripts/build_ros_overlay.sh): environment unchanged" >&2
fi
unset _m3d_repo _m3d_overlay
