"""The managed variant through its lifecycle services, as a lifecycle manager drives it: configure
loads the model but subscribes to nothing, activate starts the pipeline, deactivate stops it and
releases the model, cleanup releases the map; a bad parameter fails configure, not the process."""
from __future__ import annotations

import gc

import numpy as np
import pytest
from lifecycle_msgs.msg import State, Transition
from lifecycle_msgs.srv import ChangeState, GetState
from ros_harness import FakeModel, Harness, cloud_msg, wait_for
from sensor_msgs.msg import PointCloud2

from mask3d_ros.ros.lifecycle import Mask3DLifecycleNode
from mask3d_ros.tools.harness import spun_graph

pytestmark = pytest.mark.ros

BASE = {"model.min_instance_points": 5, "trigger.min_points": 10, "roi.min_range": 0.0}


@pytest.fixture
def managed():
    h = Harness(BASE, model=FakeModel(), node_class=Mask3DLifecycleNode)
    yield h
    h.close()


def state(h) -> int:
    return h.call(GetState, "/mask3d/get_state", GetState.Request()).current_state.id


def transition(h, transition_id: int) -> bool:
    request = ChangeState.Request()
    request.transition.id = transition_id
    return h.call(ChangeState, "/mask3d/change_state", request).success


def table_cloud(t_s: float):
    rng = np.random.default_rng(0)
    xyz = np.concatenate([rng.uniform([-0.2, -0.2, 0.8], [0.2, 0.2, 0.81], (600, 3)),
                          rng.uniform([0.0, 0.0, 0.7], [0.05, 0.05, 0.75], (200, 3))]).astype(np.float32)
    return cloud_msg(xyz, np.full((len(xyz), 3), 90, np.uint8), "camera", t_s)


def test_configure_activate_deactivate_cleanup(managed):
    h = managed
    assert state(h) == State.PRIMARY_STATE_UNCONFIGURED
    assert h.client.count_subscribers("/points") == 0

    assert transition(h, Transition.TRANSITION_CONFIGURE)
    assert state(h) == State.PRIMARY_STATE_INACTIVE
    assert h.client.count_subscribers("/points") == 0, "inactive: no input yet"
    assert h.node.model is h.model

    assert transition(h, Transition.TRANSITION_ACTIVATE)
    assert state(h) == State.PRIMARY_STATE_ACTIVE
    clouds = h.subscribe(PointCloud2, "/mask3d/labeled_cloud")
    h.publish(table_cloud(1.0))
    assert len(clouds.wait(1).data) > 0
    assert h.node.map.num_points > 0

    assert transition(h, Transition.TRANSITION_DEACTIVATE)
    assert state(h) == State.PRIMARY_STATE_INACTIVE
    wait_for(lambda: h.client.count_subscribers("/points") == 0, what="the cloud subscription to go")
    assert h.model.released >= 1 and not h.model.loaded, "deactivate frees the model's memory"
    assert h.node.map.num_points > 0, "the map survives a deactivate"

    assert transition(h, Transition.TRANSITION_ACTIVATE), "activate again"
    h.publish(table_cloud(2.0))
    assert len(clouds.wait(2).data) > 0

    assert transition(h, Transition.TRANSITION_DEACTIVATE)
    assert transition(h, Transition.TRANSITION_CLEANUP)
    assert state(h) == State.PRIMARY_STATE_UNCONFIGURED
    assert h.node.model is None and h.node.map.num_points == 0, "cleanup releases the map and the model"

    assert transition(h, Transition.TRANSITION_CONFIGURE), "configure again after a cleanup"
    assert state(h) == State.PRIMARY_STATE_INACTIVE


def test_bad_parameter_fails_configure_and_keeps_the_node_unconfigured():
    h = Harness({**BASE, "class_filter": ["chair"]}, model=FakeModel(), node_class=Mask3DLifecycleNode)
    try:
        assert state(h) == State.PRIMARY_STATE_UNCONFIGURED
        assert not transition(h, Transition.TRANSITION_CONFIGURE)
        assert state(h) == State.PRIMARY_STATE_UNCONFIGURED
        assert h.client.count_subscribers("/points") == 0
    finally:
        h.close()


def test_destroy_node_leaves_no_node_in_the_graph_for_the_garbage_collector():
    """rclpy's LifecycleNode keeps the rcl node alive in its state machine until a garbage
    collection; finalised then, at an arbitrary moment, Fast DDS's participant teardown was seen to
    spin for good against another participant's discovery. After destroy_node the node is gone
    from the graph with the collector off."""
    with spun_graph("lifecycle_observer") as observer:
        gc.disable()
        try:
            h = Harness(BASE, model=FakeModel(), node_class=Mask3DLifecycleNode,
                        name="mask3d_destroyed")
            try:
                wait_for(lambda: "mask3d_destroyed" in observer.get_node_names(), what="the node in the graph")
            finally:
                h.close()
            wait_for(lambda: "mask3d_destroyed" not in observer.get_node_names(),
                     what="the destroyed node to leave the graph")
        finally:
            gc.enable()
