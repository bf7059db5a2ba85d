"""~/detections and ~/label_info as real vision_msgs messages (vision_msgs 4.1.1 of the ROS 2 test
overlay), from the node with the fake model (ros_harness.FakeModel): the detections match the
instances (id, class, score, box), and the class map reaches a subscriber that comes late."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import require_overlay
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from ros_harness import FakeModel, Harness, cloud_msg, wait_for

from mask3d_ros.msg import InstanceArray
from mask3d_ros.ros.poses import stamp_to_ns

require_overlay(module_level=True)
from vision_msgs.msg import Detection3DArray, LabelInfo  # noqa: E402 - after the overlay check, which may skip

pytestmark = pytest.mark.ros


@pytest.fixture
def harness():
    h = Harness({"model.allow_random_weights": True, "model.min_instance_points": 5, "model.score_threshold": 0.4,
                 "trigger.min_points": 1},
                model=FakeModel(cell=0.25, min_points=5, score=0.9))
    yield h
    h.close()


def scene() -> np.ndarray:
    """Three clusters of 60 points, one per 0.25 m cell of the fake model."""
    rng = np.random.default_rng(1)
    centres = np.array([[0.1, 0.1, 1.1], [0.6, 0.1, 1.1], [0.1, 0.6, 1.35]])
    return np.concatenate([c + rng.uniform(-0.08, 0.08, (60, 3)) for c in centres]).astype(np.float32)


def test_detections_are_real_vision_msgs_matching_the_instances(harness):
    h = harness
    assert h.node.vision_msgs is not None and h.node.vision_msgs.Detection3DArray is Detection3DArray
    detections = h.subscribe(Detection3DArray, "/mask3d/detections")
    instances = h.subscribe(InstanceArray, "/mask3d/instances")
    xyz = scene()
    h.publish(cloud_msg(xyz, np.full(xyz.shape, 90, np.uint8), "camera", 7.25))
    found, listed = detections.wait(1), instances.wait(1)
    assert isinstance(found, Detection3DArray)
    assert found.header.frame_id == "camera" and stamp_to_ns(found.header.stamp) == 7_250_000_000
    assert len(found.detections) == len(listed.instances) == 3
    by_id = {str(i.id): i for i in listed.instances}
    for detection in found.detections:
        instance = by_id[detection.id]
        assert detection.header == found.header
        [result] = detection.results
        assert result.hypothesis.class_id == str(instance.class_id)
        assert result.hypothesis.score == pytest.approx(instance.score) == pytest.approx(0.9)
        centre = detection.bbox.center.position
        assert (centre.x, centre.y, centre.z) == pytest.approx(
            (instance.center.position.x, instance.center.position.y, instance.center.position.z), abs=1e-6)
        assert detection.bbox.center.orientation.w == pytest.approx(1.0)
        size = detection.bbox.size
        assert (size.x, size.y, size.z) == pytest.approx((instance.size.x, instance.size.y, instance.size.z), abs=1e-6)
        assert 0.1 < size.x <= 0.16 and 0.1 < size.y <= 0.16, "the box of a 0.16 m cluster"
        pose = result.pose.pose.position
        assert (pose.x, pose.y, pose.z) == pytest.approx((centre.x, centre.y, centre.z))


def test_label_info_reaches_a_late_subscriber(harness):
    h = harness
    first = h.subscribe(Detection3DArray, "/mask3d/detections")
    h.publish(cloud_msg(scene(), None, "camera", 1.0))
    first.wait(1)  # the node has been up and publishing for a while: label_info went out at start
    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    late = h.subscribe(LabelInfo, "/mask3d/label_info", latched)
    info = late.wait(1)
    assert isinstance(info, LabelInfo)
    assert [(c.class_id, c.class_name) for c in info.class_map] == [(0, "table"), (1, "object")]
    assert info.threshold == pytest.approx(0.4)
    volatile = h.subscribe(LabelInfo, "/mask3d/label_info")
    wait_for(lambda: h.client.count_publishers("/mask3d/label_info") == 1, what="the label_info publisher")
    assert len(volatile) == 0 or volatile.last.class_map == info.class_map
