"""Fuzzing the running node with PointCloud2 messages (hypothesis): wrong lengths, absurd steps,
unknown datatypes, duplicated and count > 1 fields, big-endian data, NaN / inf / huge values, empty,
single-point and far-away clouds, through a real rclpy graph (publisher -> node, FakeModel).

Each message must be either rejected with a counted reason (malformed_clouds, empty_clouds,
clouds_outside_map) or processed: then the labeled cloud carries its stamp and only points that
were finite in the input. The node must never die and must answer a valid cloud afterwards."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st
from rcl_interfaces.msg import Log
from rclpy.qos import QoSProfile
from ros_harness import Harness, cloud_msg, stamp, wait_for
from sensor_msgs.msg import PointCloud2, PointField

from mask3d_ros.ros.cloud import read_points
from mask3d_ros.ros.poses import stamp_to_ns

pytestmark = [pytest.mark.ros, pytest.mark.slow]

VOXEL = 0.01
KEY_LIMIT = 1 << 20  # voxel coordinates the map can hold (mask3d_ros.model.voxel.KEY_LIMIT)
NUMPY = {PointField.INT8: "i1", PointField.UINT8: "u1", PointField.INT16: "i2", PointField.UINT16: "u2",
         PointField.INT32: "i4", PointField.UINT32: "u4", PointField.FLOAT32: "f4", PointField.FLOAT64: "f8"}
SPECIAL = [0.0, -0.0, 0.25, -1.5, 3.0, 1e4, -1e4, 1e6, -1e6, 1e30, 3.4e38, 1e300, math.nan, math.inf, -math.inf,
           1e-42]
EXTRAS = [("rgb", PointField.FLOAT32, 1), ("rgba", PointField.UINT32, 1), ("intensity", PointField.FLOAT32, 1),
          ("intensity", PointField.UINT8, 1), ("intensity", PointField.FLOAT32, 2), ("r", PointField.UINT8, 1),
          ("g", PointField.UINT8, 1), ("b", PointField.UINT8, 1), ("rgb", PointField.FLOAT32, 2),
          ("rgb", PointField.UINT8, 1), ("rgba", PointField.FLOAT64, 1), ("normal", PointField.FLOAT32, 3),
          ("ring", PointField.UINT16, 1),
          ("t", PointField.FLOAT64, 1)]
DOUBTFUL = {("rgb", PointField.FLOAT32, 2), ("rgb", PointField.UINT8, 1), ("rgba", PointField.FLOAT64, 1),
            ("intensity", PointField.FLOAT32, 2)}
BREAKS = ["duplicate_field", "unknown_datatype", "zero_count", "xyz_count", "no_z", "empty_name", "truncate",
          "extend", "short_point_step", "short_row_step", "huge_width", "huge_row_step", "huge_point_step_bad"]
KEEPS = ["none"] * 6 + ["huge_point_step_ok", "row_padding", "row_padding"]


class Case:
    """One generated message and what the node must do with it."""

    def __init__(self, msg: PointCloud2, broken: str | None, xyz: np.ndarray | None, description: str,
                 doubtful: bool = False):
        self.msg, self.broken, self.xyz, self.description = msg, broken, xyz, description
        self.doubtful = doubtful  # a field the node may refuse (e.g. a 1-byte rgb): rejected or processed

    def usable_points(self) -> np.ndarray:
        """The float32 points the map can hold: finite after the cast and on its voxel key grid."""
        with np.errstate(over="ignore", invalid="ignore"):
            xyz = self.xyz.astype(np.float32)
            cells = np.floor(xyz / np.float32(VOXEL))  # the grid divides in float32
            ok = np.isfinite(xyz).all(axis=1) & ((cells >= -KEY_LIMIT) & (cells < KEY_LIMIT)).all(axis=1)
        return xyz[ok]

    def __repr__(self) -> str:
        return self.description


def _fill(rng, dtype: np.dtype, shape, values_mode: str) -> np.ndarray:
    grid = np.zeros(shape, dtype)
    for name in dtype.names:
        sub = dtype.fields[name][0]
        target = grid[name]
        if sub.base.kind == "f":
            if values_mode == "nan":
                target[...] = np.nan
            elif values_mode == "far":
                target[...] = rng.uniform(0.9e6, 1.1e6, target.shape)
            elif values_mode == "near":
                target[...] = rng.uniform(-2, 2, target.shape)
            else:
                with np.errstate(over="ignore"):
                    target[...] = rng.choice(SPECIAL, target.shape)
        else:
            info = np.iinfo(sub.base)
            native = sub.base.newbyteorder("=")
            target[...] = rng.integers(info.min, info.max, target.shape, endpoint=True, dtype=native)
    return grid


@st.composite
def cases(draw) -> Case:
    xyz_type = draw(st.sampled_from([PointField.FLOAT32] * 4 + [PointField.FLOAT64, PointField.INT16,
                                                                PointField.UINT8]))
    extras = draw(st.lists(st.sampled_from(EXTRAS), max_size=3, unique_by=lambda f: f[0]))
    fields = [["x", xyz_type, 1], ["y", xyz_type, 1], ["z", xyz_type, 1]] + [list(f) for f in extras]
    fields = draw(st.permutations(fields))
    change = draw(st.sampled_from(KEEPS + BREAKS))
    bigendian = draw(st.booleans())
    width = draw(st.sampled_from([0, 1, 2, 7, 40, 40, 300, 300]))
    height = draw(st.sampled_from([0, 1, 1, 1, 1, 1, 3]))
    values_mode = draw(st.sampled_from(["special", "special", "special", "near", "near", "nan", "far"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))

    if change == "duplicate_field":
        fields.append(list(fields[0]))
    elif change == "unknown_datatype":
        fields[draw(st.integers(0, len(fields) - 1))][1] = draw(st.sampled_from([0, 9, 42, 255]))
    elif change == "zero_count":
        fields[draw(st.integers(0, len(fields) - 1))][2] = 0
    elif change == "xyz_count":
        next(f for f in fields if f[0] == "x")[2] = 2
    elif change == "no_z":
        fields = [f for f in fields if f[0] != "z"]
    elif change == "empty_name":
        fields[0][0] = ""

    # layout: fields packed in order, with optional padding after each
    offsets, end = [], 0
    for _name, datatype, count in fields:
        offsets.append(end)
        end += np.dtype(NUMPY.get(datatype, "u1")).itemsize * max(count, 1) + draw(st.sampled_from([0, 0, 1, 4]))
    point_step = end + draw(st.sampled_from([0, 0, 3, 8]))
    if change == "huge_point_step_ok":
        point_step, width, height = 1 << 16, min(width, 3), min(height, 1)
    row_step = width * point_step + (draw(st.integers(1, 64)) if change == "row_padding" else 0)

    order = ">" if bigendian else "<"
    valid_layout = change not in ("duplicate_field", "unknown_datatype", "zero_count", "empty_name")
    xyz = None
    if valid_layout:
        dtype = np.dtype({"names": [f[0] for f in fields],
                          "formats": [(order + NUMPY[d], (c,)) if c > 1 else order + NUMPY[d] for _, d, c in fields],
                          "offsets": offsets, "itemsize": point_step})
        grid = _fill(rng, dtype, (height, width), values_mode)
        rows = [grid[r].tobytes() + bytes(row_step - width * point_step) for r in range(height)]
        data = b"".join(rows)
        if {"x", "y", "z"} <= set(dtype.names) and dtype.fields["x"][0].shape == ():
            xyz = np.stack([grid[n].reshape(-1).astype(np.float64) for n in "xyz"], axis=1)
    else:
        data = rng.bytes(row_step * height)

    if change == "truncate":
        data = data[:-draw(st.integers(1, 8))] if data else data
        if not data:
            data, height, width = b"\0" * 3, 1, 1
    elif change == "extend":
        data = data + bytes(draw(st.integers(1, 8)))
    elif change == "short_point_step":  # the last byte of some field beyond point_step
        field_end = max(o + np.dtype(NUMPY.get(d, "u1")).itemsize * max(c, 1) for (_, d, c), o in zip(fields, offsets))
        point_step = max(0, field_end - draw(st.integers(1, 4)))
    elif change == "short_row_step":
        row_step = max(0, width * point_step - 1) if width * point_step else row_step
        if width * point_step == 0:
            width, row_step = 1, 0
    elif change == "huge_width":
        width = 2**32 - 1
    elif change == "huge_row_step":
        row_step = 2**32 - 1
    elif change == "huge_point_step_bad":
        point_step = 2**31

    msg = PointCloud2(height=height, width=width, is_bigendian=bigendian, point_step=point_step,
                      row_step=row_step, data=data, is_dense=False)
    msg.fields = [PointField(name=n, offset=o, datatype=d, count=c) for (n, d, c), o in zip(fields, offsets)]
    msg.header.frame_id = "camera"
    broken = change if change in BREAKS else None
    description = (f"{change}: {width}x{height}, point_step {point_step}, row_step {row_step}, {len(data)} B,"
                   f" big-endian {bigendian}, values {values_mode}, fields {[tuple(f) for f in fields]}")
    doubtful = any(tuple(f) in DOUBTFUL for f in fields)
    return Case(msg, broken, xyz, description, doubtful)


@pytest.fixture(scope="module")
def harness():
    h = Harness({"model.allow_random_weights": True, "model.min_instance_points": 1, "trigger.min_points": 1,
                 "accumulation.voxel_size": VOXEL, "diagnostics.period": 5.0,
                 "roi.min_range": 0.0, "roi.max_range": 0.0})  # every usable point reaches the map
    h.labeled = h.subscribe(PointCloud2, "/mask3d/labeled_cloud")
    h.rosout = h.subscribe(Log, "/rosout", QoSProfile(depth=1000))
    h.next_t = 1.0
    yield h
    h.close()


REJECTIONS = ("malformed_clouds", "empty_clouds")


def send(h: Harness, msg: PointCloud2) -> dict[str, int]:
    """Publish one message with a fresh stamp; the node's counter changes once it has handled it."""
    assert h.spinner.alive, f"the node's executor died on an earlier message:\n{h.spinner.error}"
    h.next_t += 0.01
    msg.header.stamp = stamp(h.next_t)
    before = h.node.counters.snapshot()
    outputs = len(h.labeled)
    h.publish(msg)
    wait_for(lambda: h.node.counters["clouds_received"] > before.get("clouds_received", 0),
             what=f"the node to take the cloud (alive: {h.spinner.alive})")
    keys = REJECTIONS + ("clouds_accumulated",)
    wait_for(lambda: sum(h.node.counters[k] - before.get(k, 0) for k in keys) >= 1, what="the cloud's outcome")
    h.wait_idle()
    after = h.node.counters.snapshot()
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in set(after) | set(before)}
    delta["outputs"] = outputs
    return delta


def check_case(h: Harness, case: Case) -> str:
    """Send the case and check the node's reaction; returns the outcome."""
    delta = send(h, case.msg)
    outcome = [k for k in REJECTIONS + ("clouds_accumulated",) if delta.get(k)]
    assert len(outcome) == 1 and delta[outcome[0]] == 1, (outcome, delta)
    assert h.spinner.alive and h.node.worker.alive
    if case.broken is not None or case.xyz is None:
        assert outcome == ["malformed_clouds"], f"{case}: {delta}"
        return outcome[0]
    if case.doubtful and outcome == ["malformed_clouds"]:
        return outcome[0]
    usable = case.usable_points()
    finite = np.isfinite(case.xyz).all(axis=1)
    if not finite.any():
        assert outcome == ["empty_clouds"], f"{case}: {delta}"
        return outcome[0]
    assert outcome == ["clouds_accumulated"], f"{case}: {delta}"
    if len(usable) == 0:  # finite, but nothing the map can hold: a counted warning, no output
        assert delta.get("clouds_outside_map") == 1 and delta.get("results_published", 0) == 0, f"{case}: {delta}"
        return "clouds_outside_map"
    wait_for(lambda: len(h.labeled) > delta["outputs"], what="the labeled cloud")
    out = h.labeled.last
    assert stamp_to_ns(out.header.stamp) == stamp_to_ns(case.msg.header.stamp)
    points = read_points(out)
    got = np.stack([points[n] for n in "xyz"], axis=1)
    assert 0 < len(got) <= len(usable)
    known = {row.tobytes() for row in usable}
    assert all(row.tobytes() in known for row in got), f"{case}: output points that were not in the input"
    return "processed"


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
          database=None, phases=[Phase.explicit, Phase.generate])  # no shrinking: a dead node makes it slow
@given(case=cases())
def test_fuzzed_clouds_are_rejected_with_a_count_or_processed(harness, case):
    outcome = check_case(harness, case)
    event(f"{case.description.split(':')[0]} -> {outcome}")  # --hypothesis-show-statistics


@pytest.mark.parametrize("name", ["single_point", "far_away", "all_nan_organized", "empty_0x0", "bigendian"])
def test_edge_clouds(harness, name):
    """The named edge cases, always run (hypothesis may not draw each one)."""
    xyz = {"single_point": [[0.1, 0.2, 0.3]], "far_away": [[1e6, 1e6, 0.0], [1e6, 1e6 + 1, 0.0]],
           "all_nan_organized": np.full((6, 3), np.nan), "empty_0x0": np.zeros((0, 3)),
           "bigendian": [[0.5, 0.5, 0.5], [1.0, 1.0, 1.0]]}[name]
    xyz = np.asarray(xyz, np.float32)
    msg = cloud_msg(xyz, frame="camera", organized_shape=(2, 3) if name == "all_nan_organized" else None)
    if name == "bigendian":
        msg.is_bigendian = True
        msg.data = xyz.astype(">f4").tobytes()
    case = Case(msg, None, xyz.astype(np.float64), name)
    check_case(harness, case)


def test_node_still_answers_a_valid_cloud(harness):
    rng = np.random.default_rng(0)
    xyz = rng.uniform(-1, 1, (500, 3)).astype(np.float32)
    msg = cloud_msg(xyz, rng.integers(0, 255, (500, 3)), frame="camera", t_s=0.0)
    delta = send(harness, msg)
    assert delta.get("clouds_accumulated") == 1 and delta.get("results_published") == 1
    wait_for(lambda: len(harness.labeled) > delta["outputs"], what="the answer")
    assert stamp_to_ns(harness.labeled.last.header.stamp) == stamp_to_ns(msg.header.stamp)
    counters = harness.node.counters
    assert counters["malformed_clouds"] and counters["empty_clouds"] and counters["clouds_outside_map"]
    warnings = [m.msg for m in harness.rosout.messages if m.name == "mask3d" and m.level == Log.WARN]
    for text in ("malformed cloud on /points", "has no finite points", "entered the map"):
        assert any(text in w for w in warnings), f"a warning says {text!r}"
