"""Pose sources: odometry buffering and interpolation, extrinsics, TF adapter, static and identity."""
from types import SimpleNamespace

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from mask3d_ros.ros.poses import (
    NS_PER_S,
    IdentityPoses,
    OdometryBuffer,
    OdometryPoses,
    PoseUnavailable,
    StaticPoses,
    TfPoses,
    import_tf2,
    matrix_from_pose,
    matrix_from_transform_msg,
    pose_from_matrix,
    transform_points,
)


def yaw(deg):
    return Rotation.from_euler("z", deg, degrees=True).as_quat()


def test_matrix_round_trip_and_normalisation():
    m = matrix_from_pose((1, 2, 3), 2 * np.asarray(yaw(30)))  # not unit length: normalised
    t, q = pose_from_matrix(m)
    assert np.allclose(t, [1, 2, 3])
    assert np.allclose(np.abs(np.dot(q, yaw(30))), 1.0)
    with pytest.raises(ValueError):
        matrix_from_pose((0, 0, 0), (0, 0, 0, 0))
    with pytest.raises(ValueError):
        matrix_from_pose((0, float("nan"), 0), (0, 0, 0, 1))


def test_transform_points():
    m = matrix_from_pose((1, 0, 0), yaw(90))
    out = transform_points(m, np.array([[1, 0, 0]], np.float32))
    assert out.dtype == np.float32 and np.allclose(out, [[1, 1, 0]], atol=1e-6)


def test_optical_frame_extrinsic_from_the_parameter_docs():
    """The documented body->optical quaternion maps optical z (forward) to body x, optical x to -y."""
    m = matrix_from_pose((0, 0, 0), (-0.5, 0.5, -0.5, 0.5))
    assert np.allclose(m[:3, :3] @ [0, 0, 1], [1, 0, 0], atol=1e-9)
    assert np.allclose(m[:3, :3] @ [1, 0, 0], [0, -1, 0], atol=1e-9)
    assert np.allclose(m[:3, :3] @ [0, 1, 0], [0, 0, -1], atol=1e-9)


def test_odometry_interpolates_position_linearly_and_rotation_by_slerp():
    buf = OdometryBuffer(duration_s=10, max_gap_s=1.0)
    buf.add(0, (0, 0, 0), yaw(0))
    buf.add(NS_PER_S, (2, 0, 0), yaw(90))
    m = buf.interpolate(NS_PER_S // 4)
    assert np.allclose(m[:3, 3], [0.5, 0, 0])
    assert np.isclose(Rotation.from_matrix(m[:3, :3]).as_euler("zyx", degrees=True)[0], 22.5)
    exact = buf.interpolate(NS_PER_S)
    assert np.allclose(exact[:3, 3], [2, 0, 0])


def test_odometry_out_of_order_samples_are_sorted():
    buf = OdometryBuffer(max_gap_s=2.0)
    buf.add(2 * NS_PER_S, (2, 0, 0), yaw(0))
    buf.add(0, (0, 0, 0), yaw(0))
    buf.add(NS_PER_S, (1, 0, 0), yaw(0))
    assert np.allclose(buf.interpolate(NS_PER_S // 2)[:3, 3], [0.5, 0, 0])


def test_odometry_refuses_extrapolation_gaps_and_stale_stamps_with_reasons():
    buf = OdometryBuffer(duration_s=2.0, max_gap_s=0.5)
    with pytest.raises(PoseUnavailable, match="no odometry"):
        buf.interpolate(0)
    buf.add(10 * NS_PER_S, (0, 0, 0), yaw(0))
    buf.add(11 * NS_PER_S, (1, 0, 0), yaw(0))
    with pytest.raises(PoseUnavailable, match="newer than the newest"):
        buf.interpolate(12 * NS_PER_S)
    with pytest.raises(PoseUnavailable, match="older than the oldest"):
        buf.interpolate(5 * NS_PER_S)
    with pytest.raises(PoseUnavailable, match="gap"):
        buf.interpolate(10 * NS_PER_S + NS_PER_S // 2)


def test_odometry_buffer_is_bounded_and_resets_when_time_jumps_back():
    buf = OdometryBuffer(duration_s=1.0)
    for i in range(100):
        buf.add(i * NS_PER_S // 10, (i, 0, 0), yaw(0))
    assert len(buf) <= 11
    buf.add(0, (0, 0, 0), yaw(0))  # bag restarted: 10 s back
    assert len(buf) == 1
    with pytest.raises(ValueError):
        buf.add(0, (0, 0, 0), (0, 0, 0, 0))


def test_odometry_poses_compose_the_extrinsic_and_answer_once_late_odometry_arrives():
    buf = OdometryBuffer(max_gap_s=2.0)
    extrinsic = matrix_from_pose((0.5, 0, 0), yaw(0))
    poses = OdometryPoses(buf, extrinsic, sensor_frame="cam")
    buf.add(0, (1, 0, 0), yaw(90))
    with pytest.raises(PoseUnavailable, match="newer than the newest odometry") as waiting:
        poses.lookup("cam", NS_PER_S // 2)                 # the later sample is not there yet
    assert waiting.value.pending                             # ... so a retry may succeed
    buf.add(NS_PER_S, (1, 0, 0), yaw(90))
    m = poses.lookup("cam", NS_PER_S // 2)
    assert np.allclose(m[:3, 3], [1, 0.5, 0], atol=1e-9), "sensor 0.5 m ahead of a body facing +y"
    with pytest.raises(PoseUnavailable, match="sensor_frame") as wrong_frame:
        poses.lookup("lidar", NS_PER_S // 2)
    assert not wrong_frame.value.pending


def test_static_and_identity_sources():
    assert np.allclose(IdentityPoses().lookup("any", 0), np.eye(4))
    static = StaticPoses({"cam": matrix_from_pose((1, 2, 3), yaw(0))})
    assert np.allclose(static.lookup("cam", 0)[:3, 3], [1, 2, 3])
    with pytest.raises(PoseUnavailable, match="lidar"):
        static.lookup("lidar", 0)


class FakeTfBuffer:
    """Stands in for tf2_ros.Buffer: records the lookup and answers or raises like tf2 does."""

    class ExtrapolationException(Exception):
        pass

    def __init__(self, fail=False):
        self.fail = fail
        self.calls = []

    def lookup_transform(self, target, source, time):
        self.calls.append((target, source, time))
        if self.fail:
            raise self.ExtrapolationException("Lookup would require extrapolation into the future")
        transform = SimpleNamespace(translation=SimpleNamespace(x=1.0, y=0.0, z=0.0),
                                    rotation=SimpleNamespace(x=0.0, y=0.0, z=0.0, w=1.0))
        return SimpleNamespace(transform=transform)


def test_tf_adapter_looks_up_at_the_stamp():
    buf = FakeTfBuffer()
    poses = TfPoses(buf, "odom", make_time=lambda ns: ("time", ns))
    m = poses.lookup("camera_optical", 123)
    assert np.allclose(m[:3, 3], [1, 0, 0])
    assert buf.calls == [("odom", "camera_optical", ("time", 123))]
    failing = TfPoses(FakeTfBuffer(fail=True), "odom", lambda ns: ns)
    with pytest.raises(PoseUnavailable, match="ExtrapolationException.*extrapolation") as error:
        failing.lookup("camera_optical", 0)
    assert error.value.pending


def test_transform_msg_conversion():
    msg = SimpleNamespace(translation=SimpleNamespace(x=0.0, y=1.0, z=0.0),
                          rotation=SimpleNamespace(**dict(zip("xyzw", yaw(180)))))
    m = matrix_from_transform_msg(msg)
    assert np.allclose(m[:3, :3] @ [1, 0, 0], [-1, 0, 0], atol=1e-9) and np.allclose(m[:3, 3], [0, 1, 0])


def test_missing_tf2_gives_an_actionable_error():
    try:
        import tf2_ros  # noqa: F401, PLC0415 - optional: a ROS 2 install has it, the PyPI wheels do not
    except ImportError:
        with pytest.raises(ImportError, match="pose_source 'tf' needs the tf2_ros"):
            import_tf2()
    else:
        assert import_tf2() is not None
