"""The node's parameters: one table of names, types, defaults, descriptions and checks.

The node declares every parameter from :data:`PARAMETERS`, validates the values it got with
:func:`validate` (all problems at once, each naming the parameter, the value and what is allowed)
and refuses to start on any. The README's Parameters table is checked against this table by a
test, and :func:`markdown_table` prints it. Nothing here imports rclpy.

Types: ``str``, ``bool``, ``int``, ``float`` (an integer is accepted), and lists of them written
``list[str]``, ``list[int]``, ``list[float]``.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from mask3d_ros.model.files import BUNDLED_CHECKPOINT

PRESET_CHOICES = ("tabletop", "scannet", "scannet200", "s3dis", "stpls3d")
RELIABILITY_CHOICES = ("reliable", "best_effort")
DURABILITY_CHOICES = ("volatile", "transient_local")
POSE_SOURCES = ("none", "tf", "odometry")
TRIGGER_MODES = ("per_frame", "rate", "on_demand")
COLOUR_SOURCES = ("auto", "rgb", "intensity", "constant")
INFERENCE_MODES = ("instance", "panoptic", "semantic")
BACKENDS = ("auto", "torch", "minkowski")
MARKER_STYLES = ("cube", "line_list")
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
_TOPIC_RE = re.compile(r"^[~/]?[A-Za-z_][A-Za-z0-9_]*(/[A-Za-z_][A-Za-z0-9_]*)*$")
_FRAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_./-]*$")


class ParameterError(ValueError):
    """One or more parameter values are invalid; ``problems`` lists them, one line each."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("invalid parameters:\n" + "\n".join(f"  - {p}" for p in self.problems))


@dataclass(frozen=True)
class Param:
    name: str
    type: str
    default: Any
    description: str
    choices: tuple = ()
    min: float | None = None  # inclusive
    max: float | None = None  # inclusive
    exclusive_min: bool = False  # min itself not allowed
    length: int | None = None  # lists: exact length
    check: Callable[[Any], str | None] | None = None  # extra check: error text or None
    dynamic: bool = False  # may change at run time (ros2 param set)

    @property
    def constraint(self) -> str:
        """Human-readable constraint, as shown in the README and the parameter descriptor."""
        parts = []
        if self.choices:
            parts.append("one of " + ", ".join(self.choices))
        if self.min is not None or self.max is not None:
            lo = "" if self.min is None else f"{'>' if self.exclusive_min else '>='} {_number(self.min)}"
            hi = "" if self.max is None else f"<= {_number(self.max)}"
            parts.append((lo + (" and " if lo and hi else "") + hi).strip())
        if self.length is not None:
            parts.append(f"{self.length} values")
        return "; ".join(parts)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _topic(value: str) -> str | None:
    if not _TOPIC_RE.match(value):
        return "must be a valid ROS topic name (letters, digits, '_', separated by '/')"
    return None


def _frame(value: str) -> str | None:
    if value and not _FRAME_RE.match(value):
        return "must be a TF frame id without spaces (and without a leading '/')"
    return None


def _device(value: str) -> str | None:
    return None if _DEVICE_RE.match(value) else "must be auto, cpu, cuda or cuda:N"


def _quaternion_pose(value: list) -> str | None:
    q = value[3:]
    if math.sqrt(sum(v * v for v in q)) < 1e-6:
        return "the quaternion (last four values, x y z w) must not be zero"
    return None


def _colour(value: list) -> str | None:
    if any(not 0 <= v <= 255 for v in value):
        return "colour channels must lie in 0..255"
    return None


def _class_filter(value: list) -> str | None:
    if any(not v.strip() for v in value):
        return "class names must not be empty"
    return None


P = Param
PARAMETERS: tuple[Param, ...] = (
    # --- topics and QoS ---
    P("points_topic", "str", "points", "Input sensor_msgs/PointCloud2 topic. Relative names resolve in the"
      " node's namespace; remapping points:=/camera/points works too.", check=_topic),
    P("odom_topic", "str", "odom", "Input nav_msgs/Odometry topic (pose_source odometry only).", check=_topic),
    P("input_qos.reliability", "str", "reliable", "Reliability of the cloud subscription. reliable: lost"
      " fragments of multi-megabyte clouds are resent (the default transport needs this), but a"
      " best-effort publisher (SensorDataQoS) is incompatible and sends nothing. best_effort: matches"
      " every publisher, but loses most large clouds unless a shared-memory transport is configured.",
      choices=RELIABILITY_CHOICES),
    P("input_qos.depth", "int", 1, "Queue depth of the cloud subscription. 1 keeps latency flat: a slow"
      " node drops old clouds instead of queueing them. When accumulating, a few (the demo uses 4) keep"
      " clouds that arrive while the executor stalls; inference stays latest-wins either way.",
      min=1, max=100),
    P("odom_qos.reliability", "str", "reliable", "Reliability of the odometry subscription.",
      choices=RELIABILITY_CHOICES),
    P("odom_qos.depth", "int", 50, "Queue depth of the odometry subscription (keep every sample).", min=1, max=1000),
    P("output_qos.reliability", "str", "reliable", "Reliability of labeled_cloud, instances, detections"
      " and markers.", choices=RELIABILITY_CHOICES),
    P("output_qos.durability", "str", "volatile", "Durability of labeled_cloud, instances, detections and"
      " markers (transient_local lets late subscribers get the last result; label_info is always"
      " transient_local).", choices=DURABILITY_CHOICES),
    P("output_qos.depth", "int", 1, "Queue depth of the outputs.", min=1, max=100),
    # --- frames and poses ---
    P("fixed_frame", "str", "odom", "Frame of the accumulated map and of every output (pose_source tf or"
      " odometry). With pose_source none the outputs are in the cloud's own frame.", check=_frame),
    P("pose_source", "str", "none", "How the pose of each cloud in fixed_frame is found: tf (tf2 lookup at the"
      " cloud stamp), odometry (odom_topic plus the odometry.body_to_sensor extrinsic), none (each cloud"
      " alone, in its own frame).", choices=POSE_SOURCES),
    P("pose_timeout", "float", 0.1, "Seconds to wait for a pose (TF or odometry) newer than the cloud stamp"
      " before skipping the cloud.", min=0.0, max=10.0),
    P("odometry.body_frame", "str", "", "Expected child_frame_id of the odometry (empty: accept any).",
      check=_frame),
    P("odometry.sensor_frame", "str", "", "Cloud frame the extrinsic describes; clouds in another frame are"
      " skipped (empty: accept any).", check=_frame),
    P("odometry.body_to_sensor", "list[float]", [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0], "Pose of the sensor"
      " (cloud) frame in the odometry body frame: x y z qx qy qz qw. For a camera optical frame on an"
      " x-forward body: [x, y, z, -0.5, 0.5, -0.5, 0.5].", length=7, check=_quaternion_pose),
    P("odometry.buffer_duration", "float", 10.0, "Seconds of odometry kept for interpolation.",
      min=0.1, max=600.0),
    P("odometry.max_gap", "float", 0.5, "Longest gap (s) between two odometry samples to interpolate across.",
      min=0.001, max=60.0),
    # --- accumulation ---
    P("accumulation.max_frames", "int", 1, "Keep points seen in the last N clouds (0: no frame limit)."
      " Forced to 1 with pose_source none.", min=0, max=100000),
    P("accumulation.max_age", "float", 0.0, "Keep points seen in the last T seconds of cloud stamps"
      " (0: no age limit).", min=0.0, max=86400.0),
    P("accumulation.voxel_size", "float", 0.002, "Edge (m) of the de-duplication grid of the map: one point"
      " per voxel, the newest wins. Keep it at or below the model's voxel size (5 mm for a moving camera).",
      min=0.0, max=10.0, exclusive_min=True),
    P("accumulation.max_points", "int", 400000, "Most points in the map (memory and inference time bound);"
      " the oldest observations go first.", min=1, max=50_000_000),
    P("roi.enabled", "bool", False, "Crop the map to the box roi.min .. roi.max in fixed_frame."),
    P("roi.min", "list[float]", [-5.0, -5.0, -2.0], "Lower corner x y z (m) of the region of interest.",
      length=3),
    P("roi.max", "list[float]", [5.0, 5.0, 3.0], "Upper corner x y z (m) of the region of interest.", length=3),
    P("roi.min_range", "float", 0.2, "Drop points closer than this to the sensor (m; 0: off).",
      min=0.0, max=10000.0),
    P("roi.max_range", "float", 2.5, "Drop points farther than this from the sensor (m; 0: off; a tabletop is"
      " close, a LiDAR wants 0 or its range).",
      min=0.0, max=10000.0),
    # --- input colour ---
    P("input.colour_source", "str", "auto", "Model input colour: rgb (rgb/rgba or r,g,b fields), intensity"
      " (grey from the intensity field), constant (input.constant_colour), auto (rgb if present, else"
      " intensity, else constant).", choices=COLOUR_SOURCES),
    P("input.constant_colour", "list[int]", [128, 128, 128], "R G B (0-255) given to points without colour.",
      length=3, check=_colour),
    P("input.intensity_max", "float", 0.0, "Intensity mapped to white (0: the maximum of the field's integer"
      " type, or the 99th percentile of each cloud for float intensity).", min=0.0),
    # --- trigger ---
    P("trigger.mode", "str", "per_frame", "When inference runs: per_frame (after every accepted cloud), rate"
      " (trigger.rate Hz on the node clock, when the map changed), on_demand (~/segment_now only).",
      choices=TRIGGER_MODES),
    P("trigger.rate", "float", 1.0, "Inference rate (Hz) in rate mode.", min=0.0, max=1000.0, exclusive_min=True),
    P("trigger.min_points", "int", 500, "Skip inference while the map has fewer points.", min=1),
    # --- model ---
    P("model.preset", "str", "tabletop", "Model family: tabletop (the bundled model) or an official Mask3D"
      " release (scannet, scannet200, s3dis, stpls3d). A checkpoint that disagrees is refused.",
      choices=PRESET_CHOICES),
    P("model.checkpoint", "str", BUNDLED_CHECKPOINT, "Path of the weights (.ckpt or state dict); the default is"
      " the bundled tabletop model. Relative paths resolve against the package share directory, then the"
      " working directory. Empty needs model.allow_random_weights."),
    P("model.allow_random_weights", "bool", False, "Run with random weights when model.checkpoint is empty"
      " (tests and plumbing checks only: the output is meaningless)."),
    P("model.device", "str", "auto", "auto (cuda if available, else cpu), cpu, cuda or cuda:N.", check=_device),
    P("model.backend", "str", "auto", "Sparse convolution engine: torch (pure PyTorch), minkowski"
      " (MinkowskiEngine, if installed) or auto (= torch).", choices=BACKENDS),
    P("model.inference_mode", "str", "instance", "instance (official Mask3D scoring, masks may overlap),"
      " panoptic (non-overlapping instances) or semantic (one segment per class).", choices=INFERENCE_MODES),
    P("model.half_precision", "bool", False, "Run the network in float16 on CUDA (less memory, faster).",),
    P("model.dbscan_eps", "float", -1.0, "DBSCAN distance (m) that splits each instance mask into spatially"
      " separate parts (instance mode; 0: off, -1: the checkpoint's or preset's own value: 0.06 for the"
      " bundled model). One query can cover two distant objects; accumulated maps want less (0.05).",
      min=-1.0),
    P("model.smooth_radius", "float", -1.0, "Radius (m) of the colour-weighted mask smoothing run before"
      " any inference mode (0: off, -1: the checkpoint's own value; the official presets have none).",
      min=-1.0),
    P("model.score_threshold", "float", 0.5, "Minimum instance score reported.", min=0.0, max=1.0,
      dynamic=True),
    P("model.min_instance_points", "int", 50, "Minimum points of a reported instance.", min=1, dynamic=True),
    P("model.max_instances", "int", 50, "Most instances reported per inference (highest scores).", min=1,
      dynamic=True),
    P("class_filter", "list[str]", [], "Classes to report, by name or id (empty: all classes); unknown names"
      " are refused.", check=_class_filter,
      dynamic=True),
    # --- markers ---
    P("markers.style", "str", "cube", "Instance boxes as translucent CUBEs or LINE_LIST wireframes.",
      choices=MARKER_STYLES, dynamic=True),
    P("markers.alpha", "float", 0.4, "Opacity of CUBE boxes.", min=0.0, max=1.0, dynamic=True),
    P("markers.line_width", "float", 0.005, "Line width (m) of LINE_LIST boxes.", min=0.0, max=10.0,
      exclusive_min=True, dynamic=True),
    P("markers.text_size", "float", 0.03, "Height (m) of the label text.", min=0.0, max=100.0,
      exclusive_min=True, dynamic=True),
    P("markers.lifetime", "float", 0.0, "Marker lifetime (s; 0: until replaced or deleted).", min=0.0,
      dynamic=True),
    # --- health ---
    P("diagnostics.period", "float", 1.0, "Seconds between /diagnostics messages.", min=0.05, max=3600.0),
    P("diagnostics.input_timeout", "float", 5.0, "Seconds without a cloud before the status turns WARN.",
      min=0.1),
)
del P

PARAMETERS_BY_NAME: dict[str, Param] = {p.name: p for p in PARAMETERS}
assert len(PARAMETERS_BY_NAME) == len(PARAMETERS), "duplicate parameter names"


def defaults() -> dict[str, Any]:
    return {p.name: (list(p.default) if isinstance(p.default, list) else p.default) for p in PARAMETERS}


# --- type checks ---------------------------------------------------------------------------


def _scalar(kind: str, value: Any) -> tuple[Any, bool]:
    """(converted value, ok) for one scalar of ``kind``."""
    if kind == "str":
        return value, isinstance(value, str)
    if kind == "bool":
        return value, isinstance(value, bool)
    if kind == "int":
        return value, isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return value, False
        return float(value), True
    raise AssertionError(kind)


def _type_name(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "an empty list" if not value else f"a list of {type(value[0]).__name__}"
    return {str: "a string", bool: "a bool", int: "an integer", float: "a float"}.get(type(value), type(value).__name__)


def check_value(param: Param, value: Any) -> tuple[Any, str | None]:
    """(normalised value, error or None) for one parameter."""
    kind = param.type
    is_list = kind.startswith("list[")
    if is_list:
        inner = kind[5:-1]
        if isinstance(value, (bytes, bytearray)) and len(value) == 0:
            value = []  # an empty dynamically-typed list parameter arrives as an empty byte array
        if not isinstance(value, (list, tuple)):
            return value, f"expected {kind}, got {_type_name(value)} {value!r}"
        converted = []
        for item in value:
            item, ok = _scalar(inner, item)
            if not ok:
                return value, f"expected {kind}, got {_type_name(item)} element {item!r}"
            converted.append(item)
        value = converted
        if param.length is not None and len(value) != param.length:
            return value, f"expected {param.length} values, got {len(value)}: {value}"
        numbers = value if inner in ("int", "float") else []
    else:
        value, ok = _scalar(kind, value)
        if not ok:
            return value, f"expected {kind}, got {_type_name(value)} {value!r}"
        numbers = [value] if kind in ("int", "float") else []
    if param.choices and value not in param.choices:
        return value, f"{value!r} is not one of: {', '.join(param.choices)}"
    for number in numbers:
        if isinstance(number, float) and not math.isfinite(number):
            return value, f"{number!r} is not a finite number"
        if param.min is not None and (number < param.min or (param.exclusive_min and number == param.min)):
            return value, f"{number!r} is out of range ({param.constraint})"
        if param.max is not None and number > param.max:
            return value, f"{number!r} is out of range ({param.constraint})"
    if param.check is not None:
        problem = param.check(value)
        if problem:
            return value, f"{value!r}: {problem}"
    return value, None


def validate(values: Mapping[str, Any]) -> dict[str, Any]:
    """Normalised values (defaults filled in) or :class:`ParameterError` listing every problem."""
    problems = []
    unknown = sorted(set(values) - set(PARAMETERS_BY_NAME))
    config = defaults()
    for param in PARAMETERS:
        if param.name not in values:
            continue
        value, problem = check_value(param, values[param.name])
        if problem:
            problems.append(f"{param.name}: {problem}")
        else:
            config[param.name] = value
    if not problems:
        problems.extend(cross_checks(config))
    if problems:
        raise ParameterError(problems)
    if unknown:
        config["_unknown"] = unknown
    return config


def cross_checks(config: Mapping[str, Any]) -> list[str]:
    """Problems that involve more than one parameter."""
    problems = []
    if config["roi.enabled"] and not all(lo < hi for lo, hi in zip(config["roi.min"], config["roi.max"])):
        problems.append(f"roi.min {config['roi.min']} must be below roi.max {config['roi.max']} on every axis")
    if 0 < config["roi.max_range"] <= config["roi.min_range"]:
        problems.append(f"roi.max_range ({config['roi.max_range']}) must exceed roi.min_range"
                        f" ({config['roi.min_range']}), or be 0 (off)")
    if config["pose_source"] != "none" and not config["fixed_frame"]:
        problems.append(f"fixed_frame must be set when pose_source is {config['pose_source']!r}")
    if not config["model.checkpoint"] and not config["model.allow_random_weights"]:
        problems.append("model.checkpoint is empty: give the path of the weights (or set"
                        " model.allow_random_weights:=true for a plumbing test with random weights)")
    if config["model.half_precision"] and config["model.device"] == "cpu":
        problems.append("model.half_precision needs a CUDA device; set model.device to cuda or auto")
    return problems


# --- documentation ------------------------------------------------------------------------


def format_default(param: Param) -> str:
    value = param.default
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(format_default(Param("", param.type[5:-1], v, "")) for v in value) + "]"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def markdown_table() -> str:
    """The README's Parameters table (name, type, default, description)."""
    rows = ["| Name | Type | Default | Description |", "|---|---|---|---|"]
    for p in PARAMETERS:
        text = p.description
        if p.constraint:
            text += f" ({p.constraint})"
        if p.dynamic:
            text += " Changeable at run time."
        rows.append(f"| `{p.name}` | {p.type} | `{format_default(p)}` | {text.replace('|', '/')} |")
    return "\n".join(rows)
