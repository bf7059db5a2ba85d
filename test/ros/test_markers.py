"""MarkerArray building: one box and one label per instance, stable ids and colours, stale ones deleted."""
import numpy as np
import pytest
from std_msgs.msg import Header
from visualization_msgs.msg import Marker

from mask3d_ros.model.results import Instance
from mask3d_ros.ros.markers import BOX_NAMESPACE, LABEL_NAMESPACE, MarkerBuilder, MarkerStyle, duration, label_text
from mask3d_ros.ros.outputs import instance_colour

HEADER = Header(frame_id="odom")


def inst(i, class_name="chair", score=0.87, center=(1.0, 2.0, 0.5), size=(0.4, 0.4, 1.0)):
    return Instance(i, 3, class_name, score, np.arange(5), np.asarray(center), np.asarray(size))


def by_key(array):
    return {(m.ns, m.id): m for m in array.markers if m.action == Marker.ADD}


def test_first_array_clears_then_adds_a_box_and_a_label_per_instance():
    builder = MarkerBuilder()
    out = builder.build(HEADER, [inst(12), inst(4, "table", 0.5)], MarkerStyle())
    assert out.markers[0].action == Marker.DELETEALL
    added = by_key(out)
    assert set(added) == {(BOX_NAMESPACE, 12), (LABEL_NAMESPACE, 12), (BOX_NAMESPACE, 4), (LABEL_NAMESPACE, 4)}
    box, label = added[(BOX_NAMESPACE, 12)], added[(LABEL_NAMESPACE, 12)]
    assert box.type == Marker.CUBE and label.type == Marker.TEXT_VIEW_FACING
    assert label.text == "chair 0.87 #12" == label_text(inst(12))
    assert (box.pose.position.x, box.pose.position.y, box.pose.position.z) == (1.0, 2.0, 0.5)
    assert (box.scale.x, box.scale.y, box.scale.z) == pytest.approx((0.4, 0.4, 1.0))
    assert 0.3 <= box.color.a <= 0.5, "translucent boxes"
    assert label.pose.position.z > 0.5 + 0.5, "label above the box"
    assert all(m.header.frame_id == "odom" for m in out.markers)


def test_ids_and_colours_are_stable_and_vanished_instances_are_deleted():
    builder = MarkerBuilder()
    first = builder.build(HEADER, [inst(1), inst(2), inst(3)], MarkerStyle())
    second = builder.build(HEADER, [inst(3), inst(1), inst(7)], MarkerStyle())
    assert second.markers[0].action != Marker.DELETEALL, "only the first array clears everything"
    deletes = {(m.ns, m.id) for m in second.markers if m.action == Marker.DELETE}
    assert deletes == {(BOX_NAMESPACE, 2), (LABEL_NAMESPACE, 2)}
    a, b = by_key(first)[(BOX_NAMESPACE, 1)], by_key(second)[(BOX_NAMESPACE, 1)]
    assert (a.color.r, a.color.g, a.color.b) == (b.color.r, b.color.g, b.color.b)
    assert builder.published_ids == {1, 3, 7}
    empty = builder.build(HEADER, [], MarkerStyle())
    assert {(m.ns, m.id) for m in empty.markers if m.action == Marker.DELETE} == \
        {(ns, i) for ns in (BOX_NAMESPACE, LABEL_NAMESPACE) for i in (1, 3, 7)}


def test_reset_starts_over_with_deleteall():
    builder = MarkerBuilder()
    builder.build(HEADER, [inst(1)], MarkerStyle())
    cleared = builder.delete_all(HEADER)
    assert [m.action for m in cleared.markers] == [Marker.DELETEALL]
    again = builder.build(HEADER, [inst(1)], MarkerStyle())
    assert not any(m.action == Marker.DELETE for m in again.markers)
    builder.reset()
    assert builder.build(HEADER, [], MarkerStyle()).markers[0].action == Marker.DELETEALL


def test_line_list_boxes_have_twelve_edges_around_the_box():
    out = MarkerBuilder().build(HEADER, [inst(5)], MarkerStyle(style="line_list", line_width=0.02))
    box = by_key(out)[(BOX_NAMESPACE, 5)]
    assert box.type == Marker.LINE_LIST and len(box.points) == 24 and box.scale.x == pytest.approx(0.02)
    corners = {(round(p.x, 6), round(p.y, 6), round(p.z, 6)) for p in box.points}
    assert corners == {(sx * 0.2, sy * 0.2, sz * 0.5) for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)}


def test_labels_go_up_in_body_frames_and_in_optical_frames():
    assert MarkerStyle.up_for_frame("odom") == (0.0, 0.0, 1.0)
    assert MarkerStyle.up_for_frame("camera_color_optical_frame") == (0.0, -1.0, 0.0)
    style = MarkerStyle(text_size=0.1, up=MarkerStyle.up_for_frame("camera_color_optical_frame"))
    label = by_key(MarkerBuilder().build(HEADER, [inst(1)], style))[(LABEL_NAMESPACE, 1)]
    assert (label.pose.position.x, label.pose.position.y, label.pose.position.z) == pytest.approx((1.0, 1.7, 0.5))


def test_lifetime_and_degenerate_boxes():
    out = MarkerBuilder().build(HEADER, [inst(1, size=(0, 0, 0))], MarkerStyle(lifetime_s=1.25))
    box = by_key(out)[(BOX_NAMESPACE, 1)]
    assert (box.lifetime.sec, box.lifetime.nanosec) == (1, 250_000_000)
    assert min(box.scale.x, box.scale.y, box.scale.z) > 0, "RViz rejects zero scale"
    assert (duration(0.0).sec, duration(0.0).nanosec) == (0, 0)


def test_instance_colours_are_distinct_for_neighbouring_ids():
    colours = {instance_colour(i) for i in range(1, 30)}
    assert len(colours) == 29
    assert instance_colour(7) == instance_colour(7)
