"""Launch the mask3d_ros node (and optionally RViz).

    ros2 launch mask3d_ros mask3d.launch.py points:=/camera/depth/color/points rviz:=true
    ros2 launch mask3d_ros mask3d.launch.py params_file:=/path/to/my.yaml checkpoint:=/path/to/model.ckpt \
        device:=cuda fixed_frame:=map pose_source:=tf use_sim_time:=true

    ros2 launch mask3d_ros mask3d.launch.py lifecycle:=true   # the managed (lifecycle) node, starts unconfigured

Arguments left empty keep the value from the parameters file. Every argument is checked before
anything starts: a bad boolean, or rviz:=true without rviz2 installed, ends the launch with an error
that names the argument, and no process is left behind.
"""
import os

from ament_index_python.packages import PackageNotFoundError, get_package_prefix
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import LifecycleNode, Node
from launch_ros.substitutions import FindPackageShare

from launch import LaunchDescription

PACKAGE = "mask3d_ros"

ARGUMENTS = (
    # name, default, description
    ("points", "points", "Input PointCloud2 topic (remaps the node's relative 'points' input)."),
    ("odom", "odom", "Input nav_msgs/Odometry topic (remaps 'odom'; used with pose_source odometry)."),
    ("params_file", PathJoinSubstitution([FindPackageShare(PACKAGE), "config", "mask3d_tabletop.yaml"]),
     "Parameters file (config/mask3d_*.yaml; empty: none, the node's own defaults)."),
    ("fixed_frame", "", "Frame of the map and the outputs (empty: from the parameters file)."),
    ("pose_source", "", "tf, odometry or none (empty: from the parameters file)."),
    ("checkpoint", "", "Model weights (empty: from the parameters file)."),
    ("device", "", "auto, cpu, cuda or cuda:N (empty: from the parameters file)."),
    ("allow_random_weights", "false", "Run without a checkpoint on random weights (plumbing tests only)."),
    ("use_sim_time", "false", "Use /clock (bag replay with --clock, simulators)."),
    ("namespace", "", "Namespace of the node."),
    ("node_name", "mask3d", "Name of the node."),
    ("lifecycle", "false", "Start the managed (lifecycle) node mask3d_lifecycle_node instead of mask3d_node;"
     " it starts unconfigured and waits for configure/activate (ros2 lifecycle, a lifecycle manager)."),
    ("log_level", "info", "Log level of the node (debug, info, warn, error)."),
    ("rviz", "false", "Start rviz2 with config/mask3d.rviz (labeled cloud, markers, TF)."),
    ("rviz_config", PathJoinSubstitution([FindPackageShare(PACKAGE), "config", "mask3d.rviz"]),
     "RViz configuration file."),
    ("rviz_fixed_frame", "", "RViz fixed frame (empty: fixed_frame if given, else the one in rviz_config)."
     " With pose_source none, give the camera frame."),
)


BOOLEANS = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False, "on": True, "off": False}


def _is_true(text: str, name: str = "") -> bool:
    value = BOOLEANS.get(text.strip().lower())
    if value is None:
        argument = f"launch argument '{name}'" if name else "launch argument"
        raise ValueError(f"{argument}: expected a boolean (true or false), got {text!r}")
    return value


def _rviz2_executable() -> str:
    """Path of the rviz2 executable, or RuntimeError that says what to do (nothing is started then)."""
    try:
        prefix = get_package_prefix("rviz2")
    except (PackageNotFoundError, KeyError, ValueError) as error:
        reason = f"package 'rviz2' not found ({error})"
    else:
        path = os.path.join(prefix, "lib", "rviz2", "rviz2")
        if os.access(path, os.X_OK):
            return path
        reason = f"package 'rviz2' has no executable {path}"
    raise RuntimeError(
        f"launch argument 'rviz' is true, but rviz2 is not installed here: {reason}. Install it"
        " (apt install ros-$ROS_DISTRO-rviz2) or launch with rviz:=false (e.g. on a headless robot, and run"
        " rviz2 -d config/mask3d.rviz on a desktop); nothing was started")


def _launch_setup(context, *args, **kwargs):
    def arg(name: str) -> str:
        return LaunchConfiguration(name).perform(context)

    def flag(name: str) -> bool:
        return _is_true(arg(name), name)

    # Check every argument before returning any action: launch starts the node as soon as it is
    # returned, and a later failure would leave it running as an orphan.
    use_sim_time = flag("use_sim_time")
    lifecycle = flag("lifecycle")
    rviz = flag("rviz")
    random_weights = flag("allow_random_weights")
    if rviz:
        _rviz2_executable()
    overrides = {"use_sim_time": use_sim_time}
    for argument, parameter in (("fixed_frame", "fixed_frame"), ("pose_source", "pose_source"),
                                ("checkpoint", "model.checkpoint"), ("device", "model.device")):
        value = arg(argument)
        if value:
            overrides[parameter] = value
    if random_weights:
        overrides["model.allow_random_weights"] = True
        if not arg("checkpoint"):
            overrides["model.checkpoint"] = ""

    params_file = arg("params_file")
    node_arguments = dict(
        package=PACKAGE,
        name=arg("node_name"),
        parameters=[params_file, overrides] if params_file else [overrides],
        remappings=[("points", arg("points")), ("odom", arg("odom"))],
        ros_arguments=["--log-level", arg("log_level")],
        output="screen",
        emulate_tty=True,
    )
    if lifecycle:  # LifecycleNode: launch can drive it (ChangeState events) and sees its transitions
        node = LifecycleNode(executable="mask3d_lifecycle_node", namespace=arg("namespace"), **node_arguments)
    else:
        node = Node(executable="mask3d_node", namespace=arg("namespace") or None, **node_arguments)
    actions = [node]
    if rviz:
        rviz_arguments = ["-d", arg("rviz_config")]
        frame = arg("rviz_fixed_frame") or arg("fixed_frame")
        if frame:
            rviz_arguments += ["--fixed-frame", frame]
        actions.append(Node(
            package="rviz2",
            executable="rviz2",
            name="rviz2",
            arguments=rviz_arguments,
            parameters=[{"use_sim_time": use_sim_time}],
            output="screen",
        ))
    return actions


def generate_launch_description():
    return LaunchDescription(
        [DeclareLaunchArgument(name, default_value=default, description=text) for name, default, text in ARGUMENTS]
        + [OpaqueFunction(function=_launch_setup)]
    )
