"""Launch the mask3d_ros node (and optionally RViz).

    ros2 launch mask3d_ros mask3d.launch.py points:=/camera/depth/color/points rviz:=true
    ros2 launch mask3d_ros mask3d.launch.py params_file:=/path/to/my.yaml checkpoint:=/path/to/model.ckpt \
        device:=cuda fixed_frame:=map pose_source:=tf use_sim_time:=true

Arguments left empty keep the value from the parameters file.
"""
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

from launch import LaunchDescription

PACKAGE = "mask3d_ros"

ARGUMENTS = (
    # name, default, description
    ("points", "points", "Input PointCloud2 topic (remaps the node's relative 'points' input)."),
    ("odom", "odom", "Input nav_msgs/Odometry topic (remaps 'odom'; used with pose_source odometry)."),
    ("params_file", PathJoinSubstitution([FindPackageShare(PACKAGE), "config", "mask3d_tabletop.yaml"]),
     "Parameters file (config/mask3d_*.yaml)."),
    ("fixed_frame", "", "Frame of the map and the outputs (empty: from the parameters file)."),
    ("pose_source", "", "tf, odometry or none (empty: from the parameters file)."),
    ("checkpoint", "", "Model weights (empty: from the parameters file)."),
    ("device", "", "auto, cpu, cuda or cuda:N (empty: from the parameters file)."),
    ("allow_random_weights", "false", "Run without a checkpoint on random weights (plumbing tests only)."),
    ("use_sim_time", "false", "Use /clock (bag replay with --clock, simulators)."),
    ("namespace", "", "Namespace of the node."),
    ("node_name", "mask3d", "Name of the node."),
    ("log_level", "info", "Log level of the node (debug, info, warn, error)."),
    ("rviz", "false", "Start rviz2 with config/mask3d.rviz (labeled cloud, markers, TF)."),
    ("rviz_config", PathJoinSubstitution([FindPackageShare(PACKAGE), "config", "mask3d.rviz"]),
     "RViz configuration file."),
    ("rviz_fixed_frame", "", "RViz fixed frame (empty: fixed_frame if given, else the one in rviz_config)."
     " With pose_source none, give the camera frame."),
)


def _is_true(text: str) -> bool:
    value = text.strip().lower()
    if value not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
        raise ValueError(f"expected a boolean (true/false), got {text!r}")
    return value in ("true", "1", "yes", "on")


def _launch_setup(context, *args, **kwargs):
    def arg(name: str) -> str:
        return LaunchConfiguration(name).perform(context)

    use_sim_time = _is_true(arg("use_sim_time"))
    overrides = {"use_sim_time": use_sim_time}
    for argument, parameter in (("fixed_frame", "fixed_frame"), ("pose_source", "pose_source"),
                                ("checkpoint", "model.checkpoint"), ("device", "model.device")):
        value = arg(argument)
        if value:
            overrides[parameter] = value
    if _is_true(arg("allow_random_weights")):
        overrides["model.allow_random_weights"] = True
        if not arg("checkpoint"):
            overrides["model.checkpoint"] = ""

    actions = [
        Node(
            package=PACKAGE,
            executable="mask3d_node",
            name=arg("node_name"),
            namespace=arg("namespace") or None,
            parameters=[arg("params_file"), overrides],
            remappings=[("points", arg("points")), ("odom", arg("odom"))],
            ros_arguments=["--log-level", arg("log_level")],
            output="screen",
            emulate_tty=True,
        ),
    ]
    if _is_true(arg("rviz")):
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
