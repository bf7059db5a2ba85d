"""The managed (lifecycle) variant of the node, for robots whose bringup drives every node through
``configure`` and ``activate`` (Nav2's lifecycle manager, ``ros2 lifecycle set``).

The same pipeline as :class:`~mask3d_ros.ros.node.Mask3DNode`, set up in steps:

* ``configure``: validate the parameters, build the map and the pose source, load the model;
  a bad parameter or checkpoint fails the transition (the node stays unconfigured and says why);
* ``activate``: create the outputs and services, start the inference worker, subscribe to clouds;
* ``deactivate``: unsubscribe, stop inference and release the model's device memory (it is
  loaded again on ``activate``); the map is kept;
* ``cleanup``: release the map, the pose source and the model;
* ``shutdown``: everything stops.

Run it with ``mask3d_lifecycle_node`` or ``ros2 launch mask3d_ros mask3d.launch.py lifecycle:=true``.
"""
from __future__ import annotations

import sys

from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn

from mask3d_ros.model.files import ModelError
from mask3d_ros.ros import node as plain
from mask3d_ros.ros import params

SUCCESS, FAILURE = TransitionCallbackReturn.SUCCESS, TransitionCallbackReturn.FAILURE
STOP_TIMEOUT_S = 1.0  # how long deactivate waits for a running inference


class Mask3DLifecycleNode(plain.Mask3DNode, LifecycleNode):
    """See the module docstring. ``model`` and ``pose_source`` may be injected as for the plain node."""

    managed = True

    def __init__(self, node_name: str = plain.NODE_NAME, **kwargs):
        super().__init__(node_name, **kwargs)
        self._parameters_declared = False
        self._configured = False

    # --- transitions ----------------------------------------------------------------------

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        log = self.get_logger()
        model, pose_source = self._injected
        try:
            if self._parameters_declared:
                self.config = self._read_parameters()
            else:
                self._parameters_declared = True
                self.config = self._declare_parameters()
                self.add_on_set_parameters_callback(self._on_set_parameters)
            self._init_state()
            self._setup_map_and_poses(pose_source)
            self._setup_model(model)
        except params.ParameterError as error:
            log.error(f"configure failed: {error}")
            return FAILURE
        except (ModelError, ImportError) as error:
            log.error(f"configure failed: {error}")
            return FAILURE
        self._configured = True
        log.info(f"configured: model {self.config['model.preset']} on {self.device}"
                 f" ({len(self.class_names)} classes); activate to start")
        return SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        load = getattr(self.model, "load", None)
        try:
            if load is not None:
                load()  # again after a deactivate released it
        except Exception as error:  # noqa: BLE001 - a model that cannot load fails the transition
            self.get_logger().error(f"activate failed: the model cannot load: {error}")
            return FAILURE
        self._setup_outputs()
        self._setup_services()
        self._setup_input_and_timers()
        self.get_logger().info(f"active: listening on {self.cloud_sub.topic_name}")
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_pipeline()
        self.get_logger().info("inactive: inference stopped and the model released; the map is kept")
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release_configuration()
        self.get_logger().info("unconfigured: map, poses and model released")
        return SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        if getattr(self, "cloud_sub", None) is not None:
            self._stop_pipeline()
        if self._configured:
            self._release_configuration()
        return SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.get_logger().error(f"error in the {state.label} state: stopping the pipeline")
        return self.on_shutdown(state)

    # --- teardown -------------------------------------------------------------------------

    def _stop_pipeline(self) -> None:
        """Undo activate: no input, no timers, no outputs or services; the worker stopped, the model
        released (device memory freed)."""
        self.destroy_subscription(self.cloud_sub)
        self.cloud_sub = None
        for timer in (self._pending_timer, self.rate_timer, self.diagnostics_timer):
            if timer is not None:
                self.destroy_timer(timer)
        self._pending_timer = self.rate_timer = self.diagnostics_timer = None
        for service in self._service_handles:
            self.destroy_service(service)
        self._service_handles = []
        for publisher in (self.cloud_pub, self.instances_pub, self.markers_pub, self.diagnostics_pub,
                          self.detections_pub, self.label_info_pub):
            if publisher is not None:
                self.destroy_publisher(publisher)
        self.detections_pub = self.label_info_pub = None
        if not self.worker.stop(STOP_TIMEOUT_S):
            self.get_logger().warn("an inference is still running; its result will be dropped")
        self.worker = None
        self.model.release()

    def destroy_node(self) -> None:
        """Destroy the node now, its lifecycle state machine included.

        rclpy's LifecycleNode leaves the state machine, which holds the rcl node, to the garbage
        collector, so the node (and the DDS participant of its context) outlived ``destroy_node``
        until some later collection. Finalised then, at an arbitrary moment in any thread, Fast DDS's
        participant teardown can spin forever against another participant's discovery traffic."""
        super().destroy_node()
        self._state_machine.destroy_when_not_in_use()

    def _release_configuration(self) -> None:
        """Undo configure: the map, the pose source (odometry subscription, TF listener), the model."""
        with self._map_lock:
            self.map.reset()
        if self.odom_sub is not None:
            self.destroy_subscription(self.odom_sub)
            self.odom_sub = None
        self._tf_listener = None
        self.pending_poses.clear()
        self.model.release()
        self.model = None
        self._configured = False


def main(args=None) -> int:
    """``mask3d_lifecycle_node``: starts unconfigured; drive it with ``ros2 lifecycle set``."""
    return plain.main(args, node_class=Mask3DLifecycleNode)


if __name__ == "__main__":
    sys.exit(main())
