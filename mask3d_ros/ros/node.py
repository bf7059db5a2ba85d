"""The ROS 2 node: a thin rclpy shell over the functional core.

Data flow::

    points (PointCloud2) --decode--> finite xyz + colour --pose at stamp--> RollingMap (fixed frame)
        --trigger (per frame / rate / ~/segment_now)--> LatestWinsWorker --model--> selection,
        stable ids, boxes --> ~/labeled_cloud, ~/instances, ~/detections, ~/markers

Threads: no callback ever blocks, so one SingleThreadedExecutor runs them all (cloud, odometry,
TF, services, parameters, timers) and inference runs in the worker thread, never in a callback.
A cloud whose pose (odometry or TF newer than its stamp) has not arrived yet waits, decoded, in a
small bounded queue (:class:`~mask3d_ros.ros.poses.PendingPoses`) and is retried when odometry arrives
and on a short steady timer, in arrival order, until ``pose_timeout``; then it counts as a pose
failure. (A blocking pose wait would need rclpy's MultiThreadedExecutor, whose spin loop
re-submits callbacks its pool has not started yet without waiting and, under load, starves
inference of the GIL.) The callbacks are still split into callback groups and share no unguarded
state, so the node also runs correctly under a MultiThreadedExecutor. Every output carries the
stamp of the newest cloud in the map and the map's frame.

Run: ``ros2 run mask3d_ros mask3d_node --ros-args --params-file config/mask3d_tabletop.yaml``
or ``python -m mask3d_ros.node --ros-args ...``.
"""
from __future__ import annotations

import contextlib
import ctypes
import difflib
import os
import sys
import threading
import time
import traceback
from typing import Any

import numpy as np
import rclpy
from builtin_interfaces.msg import Time as TimeMsg
from diagnostic_msgs.msg import DiagnosticArray
from nav_msgs.msg import Odometry
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.event_handler import PublisherEventCallbacks, SubscriptionEventCallbacks
from rclpy.exceptions import InvalidHandle, ParameterUninitializedException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSPolicyKind, QoSProfile, ReliabilityPolicy
from rclpy.time import Time
from sensor_msgs.msg import PointCloud2
from std_msgs.msg import Header
from std_srvs.srv import SetBool, Trigger
from visualization_msgs.msg import MarkerArray

from mask3d_ros.data.colors import intensity_from_points
from mask3d_ros.model.files import ModelError
from mask3d_ros.model.voxel import KEY_LIMIT as MAP_KEY_LIMIT
from mask3d_ros.msg import InstanceArray
from mask3d_ros.ros import cloud as cloud_codec
from mask3d_ros.ros import diagnostics, params
from mask3d_ros.ros.accumulator import RollingMap
from mask3d_ros.ros.markers import MarkerBuilder, MarkerStyle
from mask3d_ros.ros.model_runner import ModelRunner
from mask3d_ros.ros.outputs import (
    LABELED_CLOUD_DTYPE,
    InstanceTracker,
    add_boxes,
    build_detections,
    build_instance_array,
    build_label_info,
    import_vision_msgs,
    labeled_records,
    select_instances,
)
from mask3d_ros.ros.poses import (
    IdentityPoses,
    OdometryBuffer,
    OdometryPoses,
    PendingPoses,
    PoseOutcome,
    PoseUnavailable,
    TfPoses,
    format_stamp,
    import_tf2,
    matrix_from_pose,
    stamp_to_ns,
)
from mask3d_ros.ros.worker import LatestWinsWorker

NODE_NAME = "mask3d"
THROTTLE_S = 5.0
PENDING_POSE_LIMIT = 8  # decoded clouds waiting for their pose, at most
PENDING_POSE_RETRY_S = 0.02  # retry period of those clouds (steady clock; the timer runs only while one waits)
_IGNORED_OVERRIDES = ("use_sim_time", "start_type_description_service", "qos_overrides.")


def _qos(reliability: str, depth: int, durability: str = "volatile") -> QoSProfile:
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST, depth=depth,
        reliability=ReliabilityPolicy.RELIABLE if reliability == "reliable" else ReliabilityPolicy.BEST_EFFORT,
        durability=(DurabilityPolicy.TRANSIENT_LOCAL if durability == "transient_local"
                    else DurabilityPolicy.VOLATILE))


def _stamp_msg(stamp_ns: int) -> TimeMsg:
    return TimeMsg(sec=int(stamp_ns // 1_000_000_000), nanosec=int(stamp_ns % 1_000_000_000))


class _Counters:
    """Thread-safe named counters."""

    def __init__(self, *names: str):
        self._lock = threading.Lock()
        self._values = dict.fromkeys(names, 0)

    def add(self, name: str, n: int = 1) -> int:
        with self._lock:
            self._values[name] = self._values.get(name, 0) + n
            return self._values[name]

    def __getitem__(self, name: str) -> int:
        return self._values.get(name, 0)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._values)


class Mask3DNode(Node):
    """See the module docstring. ``model`` and ``pose_source`` may be injected (tests): ``model``
    needs ``segment(xyz, rgb) -> PointSegmentation``, ``release()``, ``class_names``, ``device``;
    ``pose_source`` replaces the one ``pose_source`` selects (see :mod:`mask3d_ros.ros.poses`)."""

    def __init__(self, node_name: str = NODE_NAME, *, model=None, pose_source=None, **node_kwargs):
        super().__init__(node_name, **node_kwargs)
        self.worker = None
        self._injected = (model, pose_source)
        if self.managed:
            return  # the lifecycle transitions set up (mask3d_ros.ros.lifecycle)
        try:
            self._setup(model, pose_source)
        except BaseException:
            self.shutdown()
            self.destroy_node()
            raise

    # --- setup ----------------------------------------------------------------------------

    managed = False
    """True in the lifecycle variant, whose transitions run the setup steps below."""

    def _setup(self, model, pose_source) -> None:
        self.config = self._declare_parameters()
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._init_state()
        self._setup_map_and_poses(pose_source)
        self._setup_model(model)
        self._setup_outputs()
        self._setup_services()
        self._setup_input_and_timers()  # last, so no cloud arrives before the worker exists
        cfg = self.config
        self.get_logger().info(
            f"listening on {self.cloud_sub.topic_name} ({cfg['input_qos.reliability']}, depth"
            f" {cfg['input_qos.depth']}); pose_source {self.pose_source_name}"
            f"{'' if self.pose_source_name == 'none' else ', fixed_frame ' + cfg['fixed_frame']};"
            f" trigger {cfg['trigger.mode']}; model {cfg['model.preset']}"
            f" ({cfg['model.checkpoint'] or 'random weights'}) on {self.device}"
            f" ({len(self.class_names)} classes)")

    def _init_state(self) -> None:
        """Counters, flags and locks shared by the callbacks and the worker."""
        self.counters = _Counters("clouds_received", "clouds_accumulated", "malformed_clouds", "empty_clouds",
                                  "clouds_outside_map", "cloud_errors", "pose_failures", "inference_requests",
                                  "inferences_skipped_small_map", "inferences_skipped_unchanged",
                                  "results_discarded_after_reset", "results_published")
        self.enabled = True
        self._reset_generation = 0
        self._last_result: dict[str, Any] = {}
        self._previous_stats: dict[str, Any] = {}
        self._last_submitted_version = -1
        self._last_inferred_version = -1  # worker thread only
        self._dynamic_lock = threading.Lock()
        self._map_lock = threading.Lock()
        self.rate_meter = diagnostics.RateMeter()
        self._last_cloud_points = 0
        self._warned_no_input = False
        self.qos_warnings: list[str] = []  # the incompatible-QoS warnings given (diagnostics, tests)
        self._started = time.monotonic()
        self.cloud_group = MutuallyExclusiveCallbackGroup()
        self.odom_group = MutuallyExclusiveCallbackGroup()
        self.service_group = MutuallyExclusiveCallbackGroup()
        self.timer_group = MutuallyExclusiveCallbackGroup()

    def _setup_map_and_poses(self, pose_source) -> None:
        """The rolling map, the instance tracker and the pose source (with its odometry input)."""
        cfg, log = self.config, self.get_logger()
        self.pose_source_name = cfg["pose_source"]
        max_frames = cfg["accumulation.max_frames"]
        if self.pose_source_name == "none" and max_frames != 1:
            log.warn(f"pose_source is none: clouds are not accumulated across motion, so"
                     f" accumulation.max_frames {max_frames} is ignored (1 is used)")
            max_frames = 1
        self.map = RollingMap(
            cfg["accumulation.voxel_size"], max_frames=max_frames,
            max_age_s=0.0 if self.pose_source_name == "none" else cfg["accumulation.max_age"],
            max_points=cfg["accumulation.max_points"],
            roi_min=cfg["roi.min"] if cfg["roi.enabled"] else None,
            roi_max=cfg["roi.max"] if cfg["roi.enabled"] else None,
            min_range=cfg["roi.min_range"], max_range=cfg["roi.max_range"])
        self.map_frame = cfg["fixed_frame"] if self.pose_source_name != "none" else ""
        self.tracker = InstanceTracker(voxel_size=max(0.05, 2 * cfg["accumulation.voxel_size"]))
        self.marker_builder = MarkerBuilder()

        self.odometry = None
        self._tf_listener = None
        if pose_source is not None:
            self.poses = pose_source
        elif self.pose_source_name == "tf":
            self.poses = self._make_tf_poses()
        elif self.pose_source_name == "odometry":
            self.odometry = OdometryBuffer(cfg["odometry.buffer_duration"], cfg["odometry.max_gap"])
            extrinsic = cfg["odometry.body_to_sensor"]
            self.poses = OdometryPoses(self.odometry, matrix_from_pose(extrinsic[:3], extrinsic[3:]),
                                       cfg["odometry.sensor_frame"])
        else:
            self.poses = IdentityPoses()
        self.pending_poses = PendingPoses(self.poses, limit=PENDING_POSE_LIMIT)
        self._pending_lock = threading.Lock()  # serialises the queue and the map adds it releases
        self._pending_timer = None
        self.odom_sub = None
        if self.pose_source_name == "odometry":
            self.odom_sub = self.create_subscription(
                Odometry, cfg["odom_topic"], self._on_odometry,
                _qos(cfg["odom_qos.reliability"], cfg["odom_qos.depth"]), callback_group=self.odom_group,
                event_callbacks=SubscriptionEventCallbacks(
                    incompatible_qos=lambda info: self._on_incompatible_subscription(info, "odom_qos")))

    def _setup_model(self, model) -> None:
        """The model runner (built from the parameters unless injected) and its class names."""
        cfg, log = self.config, self.get_logger()
        if model is None:
            if not cfg["model.checkpoint"]:
                log.warn("model.checkpoint is empty and model.allow_random_weights is true: running RANDOM"
                         " WEIGHTS. Every result is meaningless; use this for plumbing tests only.")
            self.model = ModelRunner.from_config(cfg)  # raises ModelError
        else:
            self.model = model
        self.class_names = tuple(getattr(self.model, "class_names", ()) or ())
        self.device = str(getattr(self.model, "device", "cpu"))
        problem = self._check_class_filter(cfg["class_filter"])
        if problem:
            raise params.ParameterError([problem])

    def _setup_outputs(self) -> None:
        """Publishers of the results and diagnostics; vision_msgs ones only when it is installed."""
        cfg, log = self.config, self.get_logger()
        out_qos = _qos(cfg["output_qos.reliability"], cfg["output_qos.depth"], cfg["output_qos.durability"])

        def publisher(msg_type, topic, qos=out_qos):
            return self.create_publisher(msg_type, topic, qos, event_callbacks=PublisherEventCallbacks(
                incompatible_qos=lambda info: self._on_incompatible_publisher(info, topic)))

        self.cloud_pub = publisher(PointCloud2, "~/labeled_cloud")
        self.instances_pub = publisher(InstanceArray, "~/instances")
        self.markers_pub = publisher(MarkerArray, "~/markers")
        self.diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.vision_msgs = import_vision_msgs()
        self.detections_pub = self.label_info_pub = None
        if self.vision_msgs is not None:
            self.detections_pub = publisher(self.vision_msgs.Detection3DArray, "~/detections")
            self.label_info_pub = publisher(self.vision_msgs.LabelInfo, "~/label_info",
                                            _qos("reliable", 1, "transient_local"))
            self._publish_label_info()
        else:
            log.info("vision_msgs (Humble or newer API) is not installed: ~/detections and ~/label_info are"
                     " off (apt install ros-$ROS_DISTRO-vision-msgs to enable them)")

    def _setup_services(self) -> None:
        """~/enable, ~/reset and ~/segment_now."""
        self._service_handles = [
            self.create_service(SetBool, "~/enable", self._on_enable, callback_group=self.service_group),
            self.create_service(Trigger, "~/reset", self._on_reset, callback_group=self.service_group),
            self.create_service(Trigger, "~/segment_now", self._on_segment_now, callback_group=self.service_group)]

    def _setup_input_and_timers(self) -> None:
        """The inference worker, the cloud subscription, and the rate, retry and diagnostics timers."""
        cfg = self.config
        self.worker = LatestWinsWorker(self._run_inference, self._on_inference_error, name="mask3d-inference")
        self.cloud_sub = self.create_subscription(
            PointCloud2, cfg["points_topic"], self._on_cloud,
            _qos(cfg["input_qos.reliability"], cfg["input_qos.depth"]), callback_group=self.cloud_group,
            event_callbacks=SubscriptionEventCallbacks(
                incompatible_qos=lambda info: self._on_incompatible_subscription(info, "input_qos")))

        # timers: inference rate on the node clock (sim time aware), diagnostics and the retry of clouds
        # waiting for a pose on a steady clock (the retry timer runs only while a cloud waits)
        self._pending_timer = self.create_timer(PENDING_POSE_RETRY_S, self._on_pending_timer,
                                                callback_group=self.cloud_group,
                                                clock=Clock(clock_type=ClockType.STEADY_TIME))
        self._pending_timer.cancel()
        self.rate_timer = None
        if cfg["trigger.mode"] == "rate":
            self.rate_timer = self.create_timer(1.0 / cfg["trigger.rate"], self._on_rate_timer,
                                                callback_group=self.timer_group)
        self.diagnostics_timer = self.create_timer(cfg["diagnostics.period"], self._publish_diagnostics,
                                                   callback_group=self.timer_group,
                                                   clock=Clock(clock_type=ClockType.STEADY_TIME))

    def _declare_parameters(self) -> dict[str, Any]:
        values, problems = {}, []
        for spec in params.PARAMETERS:
            text = spec.description + (f" ({spec.constraint})" if spec.constraint else "")
            empty_list = isinstance(spec.default, list) and not spec.default
            descriptor = ParameterDescriptor(description=text, additional_constraints=spec.constraint,
                                             read_only=not spec.dynamic, dynamic_typing=not empty_list)
            try:
                if empty_list:  # an empty default has no type of its own: declare the type
                    param = self.declare_parameter(spec.name, Parameter.Type.STRING_ARRAY, descriptor)
                else:
                    param = self.declare_parameter(spec.name, spec.default, descriptor)
                value = param.value
            except Exception as error:  # noqa: BLE001 - e.g. a wrong type from the params file
                problems.append(f"{spec.name}: {error}")
                continue
            values[spec.name] = spec.default if value is None else value
        self._warn_unknown_parameters()
        return self._with_ranges(self._validated(values, problems))

    def _read_parameters(self) -> dict[str, Any]:
        """The declared parameters' current values, validated (a lifecycle node configured again)."""
        values = {}
        for spec in params.PARAMETERS:
            try:
                value = self.get_parameter(spec.name).value
            except ParameterUninitializedException:  # a typed declaration without a value: the default
                value = None
            values[spec.name] = spec.default if value is None else value
        return self._with_ranges(self._validated(values, []))

    def _with_ranges(self, config: dict[str, Any]) -> dict[str, Any]:
        """Give each bounded numeric run-time parameter its range in the descriptor (sliders in
        rqt_reconfigure, the range in ``ros2 param describe``); rclpy then refuses an out-of-range
        ``ros2 param set`` itself. Only once the values are validated: rclpy would refuse an
        out-of-range start value with its own, less specific message. Returns ``config``."""
        for spec in params.PARAMETERS:
            if not spec.dynamic or spec.min is None or spec.max is None or spec.type not in ("int", "float"):
                continue
            descriptor = self.describe_parameter(spec.name)
            if spec.type == "float":
                descriptor.floating_point_range = [FloatingPointRange(from_value=float(spec.min),
                                                                      to_value=float(spec.max), step=0.0)]
            else:
                descriptor.integer_range = [IntegerRange(from_value=int(spec.min), to_value=int(spec.max), step=1)]
            self.set_descriptor(spec.name, descriptor)
        return config

    def _warn_unknown_parameters(self) -> None:
        overrides = getattr(self, "_parameter_overrides", {})  # from --params-file, -p and parameter_overrides
        self.unknown_parameters = sorted(name for name in overrides if name not in params.PARAMETERS_BY_NAME
                                         and not name.startswith(_IGNORED_OVERRIDES))
        for name in self.unknown_parameters:
            close = difflib.get_close_matches(name, params.PARAMETERS_BY_NAME, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            self.get_logger().warn(f"ignoring unknown parameter {name!r}{hint}")

    @staticmethod
    def _validated(values: dict[str, Any], problems: list[str]) -> dict[str, Any]:
        try:
            config = params.validate(values)
        except params.ParameterError as error:
            raise params.ParameterError(problems + error.problems) from None
        if problems:
            raise params.ParameterError(problems)
        return config

    def _make_tf_poses(self):
        tf2_ros = import_tf2()  # ImportError with instructions
        self._tf_buffer = tf2_ros.Buffer(node=self)
        self._tf_listener = tf2_ros.TransformListener(self._tf_buffer, self)
        return TfPoses(self._tf_buffer, self.config["fixed_frame"],
                       make_time=lambda ns: Time(nanoseconds=ns, clock_type=self.get_clock().clock_type))

    # --- QoS events ------------------------------------------------------------------------

    def _on_incompatible_subscription(self, info, prefix: str) -> None:
        policy = QoSPolicyKind(info.last_policy_kind)
        topic = self.cloud_sub.topic_name if prefix == "input_qos" else self.config["odom_topic"]
        if policy == QoSPolicyKind.RELIABILITY:
            advice = (f"the publisher is best effort (e.g. SensorDataQoS) and this node subscribes reliably: set"
                      f" {prefix}.reliability:=best_effort (for large clouds also use"
                      " config/fastdds_large_clouds.xml), or make the publisher reliable")
        else:
            advice = f"make the publisher's {policy.name.lower()} policy compatible with {prefix}.*"
        self._qos_warning(
            f"A publisher of {topic} offers QoS incompatible with this node's subscription (policy"
            f" {policy.name}, {info.total_count} so far): nothing will arrive from it. Fix: {advice}.")

    def _on_incompatible_publisher(self, info, topic: str) -> None:
        policy = QoSPolicyKind(info.last_policy_kind)
        if policy == QoSPolicyKind.RELIABILITY:
            advice = "the subscriber asks for reliable: set output_qos.reliability:=reliable, or subscribe best effort"
        elif policy == QoSPolicyKind.DURABILITY:
            advice = ("the subscriber asks for transient_local: set output_qos.durability:=transient_local,"
                      " or subscribe volatile")
        else:
            advice = f"align the subscriber's {policy.name.lower()} policy with output_qos.*"
        self._qos_warning(
            f"A subscriber of {topic} requests QoS incompatible with this node's publisher (policy"
            f" {policy.name}): it receives nothing. Fix: {advice}.")

    def _qos_warning(self, text: str) -> None:
        self.qos_warnings = (self.qos_warnings + [text])[-10:]
        self.get_logger().warn(text)

    # --- inputs ----------------------------------------------------------------------------

    def _on_odometry(self, msg: Odometry) -> None:
        cfg = self.config
        if msg.header.frame_id != cfg["fixed_frame"]:
            self.counters.add("odometry_rejected")
            self.get_logger().warn(
                f"odometry frame {msg.header.frame_id!r} is not fixed_frame {cfg['fixed_frame']!r}: ignored"
                " (set fixed_frame to the odometry's frame)", throttle_duration_sec=THROTTLE_S)
            return
        if cfg["odometry.body_frame"] and msg.child_frame_id != cfg["odometry.body_frame"]:
            self.counters.add("odometry_rejected")
            self.get_logger().warn(
                f"odometry child_frame_id {msg.child_frame_id!r} is not odometry.body_frame"
                f" {cfg['odometry.body_frame']!r}: ignored", throttle_duration_sec=THROTTLE_S)
            return
        p, q = msg.pose.pose.position, msg.pose.pose.orientation
        try:
            self.odometry.add(stamp_to_ns(msg.header.stamp), (p.x, p.y, p.z), (q.x, q.y, q.z, q.w))
        except ValueError as error:
            self.counters.add("odometry_rejected")
            self.get_logger().warn(f"odometry ignored: {error}", throttle_duration_sec=THROTTLE_S)
            return
        if self.pending_poses.waiting:
            self._retry_pending()

    def _input_colours(self, msg: PointCloud2, rgb, index: np.ndarray) -> np.ndarray:
        cfg = self.config
        source = cfg["input.colour_source"]
        names = [f.name for f in msg.fields]
        if source in ("auto", "rgb") and rgb is not None:
            return rgb
        if source == "rgb":
            raise cloud_codec.CloudFormatError(
                f"input.colour_source is rgb but the cloud has no rgb/rgba or r,g,b fields (fields: {names})")
        if source in ("auto", "intensity") and "intensity" in names:
            return self._intensity_grey(msg, index)
        if source == "intensity":
            raise cloud_codec.CloudFormatError(
                f"input.colour_source is intensity but the cloud has no intensity field (fields: {names})")
        return np.tile(np.asarray(cfg["input.constant_colour"], np.uint8), (len(index), 1))

    def _intensity_grey(self, msg: PointCloud2, index: np.ndarray) -> np.ndarray:
        points = cloud_codec.read_points(msg, field_names=["intensity"])
        raw = points["intensity"]
        values = intensity_from_points(points, keep=index)
        top = self.config["input.intensity_max"]
        if top <= 0:
            if raw.dtype.kind in "iu" and raw.dtype.itemsize == 1:
                top = float(np.iinfo(raw.dtype).max)
            else:
                finite = values[np.isfinite(values)]
                top = float(np.percentile(finite, 99)) if finite.size else 1.0
        grey = np.clip(np.nan_to_num(values, nan=0.0) * (255.0 / max(top, 1e-12)), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, None], 3, axis=1)

    def _on_cloud(self, msg: PointCloud2) -> None:
        """Subscription callback. An exception escaping it would stop the executor and the node with
        it, so one this code did not foresee (a bug) is logged with its traceback and counted, and
        the node keeps its map and carries on."""
        try:
            self._add_cloud(msg)
        except Exception as error:  # noqa: BLE001 - the node outlives its bugs; the traceback is logged
            self._internal_error(error)

    def _internal_error(self, error: BaseException) -> None:
        errors = self.counters.add("cloud_errors")
        text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        self.get_logger().error(f"cloud lost to an internal error, please report it [{errors} so far]:\n{text}",
                                throttle_duration_sec=THROTTLE_S)

    def _add_cloud(self, msg: PointCloud2) -> None:
        received = self.counters.add("clouds_received")
        self.rate_meter.tick()
        log = self.get_logger()
        frame, stamp_ns = msg.header.frame_id, stamp_to_ns(msg.header.stamp)
        try:
            if not frame:
                raise cloud_codec.CloudFormatError("header.frame_id is empty")
            xyz, rgb, index = cloud_codec.xyz_rgb_from_cloud(msg)
            rgb = self._input_colours(msg, rgb, index)
            if rgb.shape != xyz.shape:  # e.g. a colour or intensity field with count > 1
                raise cloud_codec.CloudFormatError(f"{len(xyz)} points but colours of shape {rgb.shape}")
        except (cloud_codec.CloudFormatError, ValueError, TypeError, IndexError) as error:
            bad = self.counters.add("malformed_clouds")
            log.warn(f"malformed cloud on {self.cloud_sub.topic_name} (frame {frame!r}, stamp"
                     f" {format_stamp(stamp_ns)}) skipped: {error} [{bad} of {received} so far]",
                     throttle_duration_sec=THROTTLE_S)
            return
        self._last_cloud_points = len(xyz)
        if len(xyz) == 0:
            self.counters.add("empty_clouds")
            log.warn(f"cloud on {self.cloud_sub.topic_name} has no finite points; skipped",
                     throttle_duration_sec=THROTTLE_S)
            return
        with self._pending_lock:  # never waits for data: a cloud without its pose yet is queued
            self._settle(self.pending_poses.offer(frame, stamp_ns, (xyz, rgb), self.config["pose_timeout"]))
            timer = self._pending_timer
            if self.pending_poses.waiting and timer is not None and timer.is_canceled():
                timer.reset()

    def _on_pending_timer(self) -> None:
        """Retry the waiting clouds; the timer stops itself once none waits.

        Only this callback cancels the timer. A MultiThreadedExecutor takes a timer it found ready
        in a pool thread, later; cancelled from another callback in between (the odometry that
        released the last cloud), the take raises "timer is canceled" and stops the executor. The
        odometry callback and ~/reset only ever empty the queue, so they leave the timer to stop
        here on its next tick; the cloud callback restarts it, and only when it is stopped."""
        self._retry_pending()
        timer = self._pending_timer
        if not self.pending_poses.waiting and timer is not None:
            with contextlib.suppress(InvalidHandle):  # destroyed meanwhile by a lifecycle transition
                timer.cancel()

    def _retry_pending(self) -> None:
        """Retry the clouds waiting for their pose (odometry arrived, or the retry timer)."""
        try:
            with self._pending_lock:
                self._settle(self.pending_poses.poll())
        except Exception as error:  # noqa: BLE001 - as in _on_cloud
            self._internal_error(error)

    def _settle(self, outcomes: list[PoseOutcome]) -> None:
        """Caller holds ``_pending_lock``. Accumulate the clouds whose pose came, count the others,
        in arrival order."""
        for outcome in outcomes:
            try:
                if outcome.error is None:
                    self._accumulate(outcome.frame_id, outcome.stamp_ns, *outcome.item, outcome.pose)
                elif isinstance(outcome.error, PoseUnavailable):
                    failures = self.counters.add("pose_failures")
                    self.get_logger().warn(f"cloud skipped, no pose: {outcome.error} [{failures} skipped so far]",
                                           throttle_duration_sec=THROTTLE_S)
                else:
                    raise outcome.error
            except Exception as error:  # noqa: BLE001 - one cloud's bug must not lose the others
                self._internal_error(error)

    def _accumulate(self, frame: str, stamp_ns: int, xyz: np.ndarray, rgb: np.ndarray, pose: np.ndarray) -> None:
        log = self.get_logger()
        with self._map_lock:
            if self.pose_source_name == "none" and frame != self.map_frame:
                if self.map_frame:
                    log.info(f"cloud frame changed from {self.map_frame!r} to {frame!r}: map cleared")
                self.map.reset()
                self.map_frame = frame
            result = self.map.add(xyz, rgb, pose, stamp_ns)
        if result.points_kept == 0:
            outside = self.counters.add("clouds_outside_map")
            voxel = self.map.voxel_size
            log.warn(f"no point of the cloud on {self.cloud_sub.topic_name} entered the map: all {result.points_in}"
                     " lie outside the roi / range limits or beyond the map's coordinate range"
                     f" (+-{voxel * MAP_KEY_LIMIT:g} m at accumulation.voxel_size {voxel:g})"
                     f" [{outside} such clouds so far]", throttle_duration_sec=THROTTLE_S)
        if result.cleared:
            log.info("cloud stamps jumped back by more than 1 s (bag restarted or sim time reset): map cleared")
            self.worker.run_in_worker(self.tracker.reset)  # the tracker belongs to the worker thread
        self.counters.add("clouds_accumulated")
        if self.config["trigger.mode"] == "per_frame":
            self._request_inference()

    # --- inference -------------------------------------------------------------------------

    def _request_inference(self, force: bool = False) -> bool:
        """Offer the current map to the worker; False when disabled or nothing to segment.

        Without ``force`` the worker skips a map it has already segmented: a job that started
        after the next cloud was added segments that cloud too, and its own request would repeat
        the result (seen as labeled clouds with the same stamp)."""
        if not self.enabled or self.map.num_points == 0:
            return False
        self.counters.add("inference_requests")
        self._last_submitted_version = self.map.version
        self.worker.submit((self._reset_generation, force))
        return True

    def _on_rate_timer(self) -> None:
        if self.map.version != self._last_submitted_version:
            self._request_inference()

    def _snapshot(self):
        with self._map_lock:
            return self.map.snapshot(), self.map_frame

    def _run_inference(self, job: tuple[int, bool]) -> None:
        generation, force = job
        if not self.enabled:
            return
        snap, frame = self._snapshot()
        cfg = self.config
        if len(snap) < cfg["trigger.min_points"]:
            self.counters.add("inferences_skipped_small_map")
            return
        if snap.version == self._last_inferred_version and not force:
            self.counters.add("inferences_skipped_unchanged")
            return
        start = time.perf_counter()
        seg = self.model.segment(snap.xyz, snap.rgb)
        seg.validate(len(snap))
        self._last_inferred_version = snap.version  # a failed inference may be retried on the same map
        with self._dynamic_lock:
            seg = select_instances(seg, cfg["model.score_threshold"], cfg["model.min_instance_points"],
                                   cfg["model.max_instances"], cfg["class_filter"])
            style = MarkerStyle(cfg["markers.style"], cfg["markers.alpha"], cfg["markers.line_width"],
                                cfg["markers.text_size"], cfg["markers.lifetime"])
        if generation != self._reset_generation:
            self.counters.add("results_discarded_after_reset")
            return
        seg = self.tracker.assign(snap.xyz, seg)
        add_boxes(snap.xyz, seg)
        pipeline_ms = (time.perf_counter() - start) * 1e3  # model + selection + ids + boxes
        header = Header(stamp=_stamp_msg(snap.stamp_ns), frame_id=frame)
        style.up = MarkerStyle.up_for_frame(frame)
        self._publish_results(header, snap, seg, style)
        self.counters.add("results_published")
        self._last_result = {"points": len(snap), "instances": len(seg.instances), "stamp_ns": snap.stamp_ns,
                             "pipeline_ms": pipeline_ms, **{f"{k}_ms": v for k, v in seg.timings_ms.items()}}

    def _publish_results(self, header: Header, snap, seg, style: MarkerStyle) -> None:
        records = labeled_records(snap.xyz, seg, snap.rgb)
        self.cloud_pub.publish(cloud_codec.create_cloud(header, LABELED_CLOUD_DTYPE, records))
        self.instances_pub.publish(build_instance_array(header, seg))
        if self.detections_pub is not None:
            self.detections_pub.publish(build_detections(self.vision_msgs, header, seg))
        if self.markers_pub.get_subscription_count() > 0:  # built only when someone looks
            self.markers_pub.publish(self.marker_builder.build(header, seg.instances, style))
        else:
            self.marker_builder.reset()  # a display that connects later starts from DELETEALL

    def _on_inference_error(self, job, error: BaseException) -> None:
        self.get_logger().error(
            f"inference failed, the node carries on: {type(error).__name__}: {error}",
            throttle_duration_sec=1.0)

    def _publish_label_info(self) -> None:
        header = Header(stamp=self.get_clock().now().to_msg(), frame_id=self.map_frame)
        self.label_info_pub.publish(
            build_label_info(self.vision_msgs, header, self.class_names, self.config["model.score_threshold"]))

    # --- services ---------------------------------------------------------------------------

    def _on_enable(self, request: SetBool.Request, response: SetBool.Response) -> SetBool.Response:
        if request.data:
            was = self.enabled
            self.enabled = True
            response.success = True
            response.message = "inference enabled" if not was else "inference already enabled"
            if not was and self.config["trigger.mode"] != "on_demand":
                self._request_inference()
        else:
            self.enabled = False
            self.worker.clear()
            self.worker.run_in_worker(self._release_model)
            response.success = True
            response.message = ("inference disabled; the model and its device memory are released after the"
                                " running inference (if any); clouds are still accumulated")
        self.get_logger().info(response.message)
        return response

    def _release_model(self) -> None:
        if not self.enabled:
            self.model.release()

    def _on_reset(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        with self._pending_lock:
            waiting = len(self.pending_poses.clear())  # received before the reset: not for the new map
            with self._map_lock:
                dropped = self.map.num_points
                self.map.reset()
                self._reset_generation += 1
        self.worker.clear()
        self.worker.run_in_worker(self._reset_outputs)  # after a running inference, whose result is discarded
        response.success = True
        response.message = f"map cleared ({dropped} points dropped)" + (
            f"; {waiting} cloud(s) waiting for a pose dropped" if waiting else "")
        self.get_logger().info(response.message)
        return response

    def _reset_outputs(self) -> None:
        """Worker thread: forget instance ids and delete the markers (DELETEALL)."""
        self.tracker.reset()
        if self.markers_pub.get_subscription_count() > 0:
            header = Header(stamp=self.get_clock().now().to_msg(), frame_id=self.map_frame)
            self.markers_pub.publish(self.marker_builder.delete_all(header))
        else:
            self.marker_builder.reset()

    def _on_segment_now(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        if not self.enabled:
            response.success, response.message = False, "inference is disabled; call ~/enable with data: true first"
        elif self.map.num_points == 0:
            response.success, response.message = False, "the map is empty: no cloud accepted yet (see /diagnostics)"
        else:
            self._request_inference(force=True)
            response.success = True
            response.message = (f"inference queued on {self.map.num_points} points (stamp"
                                f" {format_stamp(self.map.newest_stamp_ns)}); results on ~/labeled_cloud")
        return response

    # --- parameters at run time -----------------------------------------------------------

    def _check_class_filter(self, names) -> str | None:
        """Every class_filter entry must name a class of the model (by name or id)."""
        if not self.class_names:
            return None
        known = set(self.class_names) | {str(i) for i in range(len(self.class_names))}
        unknown = [name for name in names if name not in known]
        if unknown:
            shown = ", ".join(self.class_names[:30]) + (", ..." if len(self.class_names) > 30 else "")
            return f"class_filter: unknown class(es) {unknown}; the model's classes are: {shown}"
        return None

    def _on_set_parameters(self, changes: list[Parameter]) -> SetParametersResult:
        updates = {}
        for change in changes:
            spec = params.PARAMETERS_BY_NAME.get(change.name)
            if spec is None:
                continue
            value, problem = params.check_value(spec, change.value)
            if problem is None and change.name == "class_filter":
                problem = self._check_class_filter(value)
            if problem:
                return SetParametersResult(successful=False, reason=f"{change.name}: {problem}")
            updates[change.name] = value
        with self._dynamic_lock:
            self.config.update(updates)
        return SetParametersResult(successful=True)

    # --- diagnostics ------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Everything /diagnostics reports, as plain values."""
        worker = self.worker.stats
        now_ns = self.get_clock().now().nanoseconds
        newest = self.map.newest_stamp_ns
        since = self.rate_meter.since_last()
        out: dict[str, Any] = {
            "input_topic": self.cloud_sub.topic_name,
            "input_rate_hz": round(self.rate_meter.rate(), 3),
            "seconds_since_last_cloud": None if since is None else round(since, 3),
            "stamp_age_s": round((now_ns - newest) / 1e9, 3) if newest else "n/a",
            **self.counters.snapshot(),
            "tf_failures" if self.pose_source_name == "tf" else "pose_failures": self.counters["pose_failures"],
            "clouds_waiting_for_pose": len(self.pending_poses),
            "last_cloud_points": self._last_cloud_points,
            "map_points": self.map.num_points,
            "map_voxels": self.map.num_points,
            "map_frames": self.map.num_frames,
            "map_frame": self.map_frame,
            "dropped_frames": worker.dropped,
            "inferences": worker.completed,
            "inference_failures": worker.failed,
            "inference_busy": worker.busy,
            "last_inference_ms": round(worker.last_duration_s * 1e3, 1),
            "mean_inference_ms": round(worker.mean_duration_s * 1e3, 1),
            "last_error": worker.last_error or "none",
            "enabled": self.enabled,
            "model_loaded": getattr(self.model, "loaded", True),
            "device": self.device,
            "device_memory": diagnostics.device_memory(self.device),
            "pose_source": self.pose_source_name,
            "trigger": self.config["trigger.mode"],
        }
        out.update({f"last_{k}": (round(v, 1) if isinstance(v, float) else v) for k, v in self._last_result.items()})
        return out

    def _publish_diagnostics(self) -> None:
        stats = self.stats()
        if stats["seconds_since_last_cloud"] is None and not self._warned_no_input:
            self._maybe_warn_no_input()
        array = DiagnosticArray()
        array.header.stamp = self.get_clock().now().to_msg()
        array.status.append(diagnostics.status(
            f"{self.get_name()}: pipeline", f"{self.get_fully_qualified_name()} ({self.device})", stats,
            self._previous_stats, self.config["diagnostics.input_timeout"]))
        self._previous_stats = stats
        self.diagnostics_pub.publish(array)

    def _maybe_warn_no_input(self) -> None:
        """Once, after the input timeout: say why nothing arrives (no publisher, or a QoS mismatch)."""
        if time.monotonic() - self._started < self.config["diagnostics.input_timeout"]:
            return
        self._warned_no_input = True
        topic = self.cloud_sub.topic_name
        infos = self.get_publishers_info_by_topic(topic)
        if not infos:
            self.get_logger().warn(f"no cloud received: nobody publishes {topic}. Check the topic name or"
                                   " remap it (points:=/your/cloud_topic).")
            return
        ours = self.config["input_qos.reliability"]
        best_effort = [i.node_name for i in infos if i.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT]
        if best_effort and ours == "reliable":
            self.get_logger().warn(f"no cloud received on {topic}: publisher(s) {best_effort} are best effort and"
                                   " this node subscribes reliably; set input_qos.reliability:=best_effort")
        else:
            self.get_logger().warn(f"no cloud received on {topic} although {len(infos)} publisher(s) exist;"
                                   " large clouds over the default UDP transport may be lost, see"
                                   " config/fastdds_large_clouds.xml")

    # --- shutdown ---------------------------------------------------------------------------

    def shutdown(self, timeout: float = 1.0) -> bool:
        """Stop the worker (a running inference is abandoned after ``timeout``)."""
        if self.worker is None:
            return True
        return self.worker.stop(timeout)

    def destroy_node(self):
        self.shutdown(0.0)  # stop taking jobs; call shutdown(timeout) first to wait for a running one
        return super().destroy_node()


def limit_malloc_arenas(count: int = 2) -> bool:
    """Cap glibc's heap arenas (as MALLOC_ARENA_MAX does), before the executor threads start.

    glibc gives each allocating thread its own arena (up to 8 per core); allocations from the
    executor and the inference worker then fragment separately and the resident memory creeps up
    (measured in docs/architecture.md). A MALLOC_ARENA_MAX set by the user wins. True if applied.
    """
    if not sys.platform.startswith("linux") or "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        return ctypes.CDLL(None).mallopt(-8, count) == 1  # -8: M_ARENA_MAX
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        return False


def main(args=None, node_class: type[Mask3DNode] | None = None) -> int:
    """Console entry point; returns the exit status (2: bad parameters, 1: the model cannot load).

    ``node_class`` is the lifecycle variant for ``mask3d_lifecycle_node`` (its parameters and model
    are checked at ``configure`` instead, which fails the transition rather than the process).
    """
    limit_malloc_arenas()
    rclpy.init(args=args)
    logger = rclpy.logging.get_logger(NODE_NAME)
    try:
        node = (node_class or Mask3DNode)()
    except params.ParameterError as error:
        logger.fatal(f"{error}\nNot starting. Fix the parameters (see `ros2 param describe` or README.md).")
        rclpy.try_shutdown()
        return 2
    except (ModelError, ImportError) as error:
        logger.fatal(f"{error}\nNot starting.")
        rclpy.try_shutdown()
        return 1
    except (KeyboardInterrupt, ExternalShutdownException):
        rclpy.try_shutdown()
        return 0
    executor = SingleThreadedExecutor()  # no callback blocks; see the module docstring
    executor.add_node(node)
    stopped = True
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:  # noqa: BLE001 - re-raised unless the context is already shut down
        if rclpy.ok():
            raise
        # SIGINT shut the context down while a callback ran (its publish fails: "context is
        # invalid"): the same stop as above, not a crash that skips the exit path below
    finally:
        stopped = node.shutdown(timeout=0.5)
        if not stopped:
            logger.warn("an inference is still running; exiting without waiting for it")
        executor.shutdown(timeout_sec=0.3)
        node.destroy_node()
        rclpy.try_shutdown()
    if not stopped:
        # A model call cannot be interrupted, and tearing the interpreter down under a running torch
        # op aborts in C++ destructors; every ROS entity is gone by now, so leave at once.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
