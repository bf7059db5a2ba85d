"""mask3d-ros-bench on tiny inputs: rows and JSON are well formed, values finite and positive.

No speed is asserted: the machine is shared. The node-latency section is exercised through its
pure parts (pacing, drain detection, rows); a real node run takes longer than these tests may.
"""
from __future__ import annotations

import json
import math
import mmap

import numpy as np
import pytest

from mask3d_ros.model import backends
from mask3d_ros.model.voxel import voxelize
from mask3d_ros.ros.cloud import xyz_rgb_from_cloud
from mask3d_ros.tools.bench import conv, core, latency, main, models, pipeline
from mask3d_ros.tools.bench.clouds import (
    Frame,
    baseline_decode,
    check_same,
    cloud_rows,
    kinect_cloud,
    synthetic_lidar_cloud,
)

ROW_KEYS = {"name", "value", "unit", "baseline", "baseline_value", "ratio", "notes", "peak_rss_mb", "extra"}


def check_rows(rows):
    assert rows
    for row in rows:
        assert row.name and row.unit and row.baseline
        assert math.isfinite(row.value) and row.value > 0, row
        if row.baseline_value is not None:
            assert math.isfinite(row.baseline_value) and row.baseline_value > 0, row
            assert math.isfinite(row.ratio) and row.ratio > 0
        if row.peak_rss_mb is not None:
            assert math.isfinite(row.peak_rss_mb) and row.peak_rss_mb >= 0


def small_kinect(height=48, width=64, seed=0):
    rng = np.random.default_rng(seed)
    xyz = rng.uniform(-1, 1, (height, width, 3)).astype(np.float32)
    xyz[rng.random((height, width)) < 0.3] = np.nan  # missing returns, as a depth camera
    return kinect_cloud(xyz, rng.integers(0, 256, (height, width, 3)))


def test_ratio_table_and_json(tmp_path):
    rows = [core.Row("a | b", 2.0, "ms", "base", 6.0, "n"), core.Row("c", 1.0, "ms", "none", None)]
    assert rows[0].ratio == 3.0 and rows[1].ratio is None
    table = core.markdown_table(rows).splitlines()
    assert len(table) == 4 and table[0].startswith("| benchmark |")
    assert all(line.count("|") == table[0].count("|") for line in table), "a | in a name must not add a column"
    path = tmp_path / "rows.json"
    core.write_json(path, {"cpu": "x"}, rows, ["note"], {"quick": True})
    document = json.loads(path.read_text())
    assert set(document) == {"machine", "settings", "rows", "notes"}
    assert set(document["rows"][0]) == ROW_KEYS and document["rows"][0]["ratio"] == 3.0


def test_percentile_and_race():
    assert core.percentile([3, 1, 2], 50) == 2 and core.percentile([0, 10], 99) == pytest.approx(9.9)
    assert math.isnan(core.percentile([], 50))
    calls = []
    times = core.race({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 2)
    assert calls == ["a", "b"] * 3 and all(len(t) == 2 and min(t) >= 0 for t in times.values())


def test_baseline_decode_agrees_with_the_codec():
    for msg in (small_kinect(), synthetic_lidar_cloud(8, 128)):
        ours, theirs = xyz_rgb_from_cloud(msg), baseline_decode(msg)
        for mine, reference in zip(ours, theirs):
            assert (mine is None and reference is None) or np.array_equal(mine, reference)
        kept, voxels = check_same(msg, 0.05)
        assert 0 < voxels <= kept <= msg.width * msg.height


def test_cloud_rows():
    frames = [Frame("kinect", small_kinect(), "synthetic"), Frame("lidar", synthetic_lidar_cloud(8, 128), "synthetic")]
    rows = cloud_rows(frames, 0.05, repeats=1)
    check_rows(rows)
    assert len(rows) == 6 and {row.extra["source"] for row in rows} == {"synthetic"}


def test_room_scene_hits_about_the_voxel_count():
    xyz, rgb = models.room_scene(3000, 0.02)
    assert xyz.dtype == np.float32 and rgb.dtype == np.uint8 and rgb.shape == xyz.shape
    assert 0.8 * 3000 < len(voxelize(xyz, 0.02)[0]) < 1.25 * 3000


def test_peak_rss_growth_sees_an_allocation():
    """Fresh pages from the kernel (an anonymous mmap, touched): a numpy array could reuse heap
    memory earlier tests freed but the process still holds, and show no growth at all."""
    def touch_64_mb():
        with mmap.mmap(-1, 64 * 2**20) as pages:
            np.frombuffer(pages, dtype=np.uint8)[::4096] = 1

    assert models.peak_rss_growth_mb(touch_64_mb) > 30


@pytest.mark.slow
def test_model_rows_from_a_child_process():
    rows = models.cpu_model_rows("tabletop", 2000, repeats=1)
    check_rows(rows)
    extra = rows[0].extra
    assert rows[0].peak_rss_mb is not None and extra["voxels"] > 1000
    assert set(extra["stages_ms"]["all_threads"]) == set(models.STAGES)
    post = rows[1]
    assert len(rows) == 2 and post.name.startswith("post stage") and post.baseline == models.POST_BASELINE
    assert post.value < post.baseline_value and post.extra["voxels"] == extra["voxels"]


def fake_child_result(variants):
    runs = {name: [{"voxelize": 1.0, "backbone": 5.0, "decoder": 3.0, "post": post, "total": 10.0 + post}
                   for post in (1.0, 2.0, 4.0)] for name in variants}
    return {"points": 2500, "voxels": 1000, "threads": 2, "peak_rss_mb": 10.0,
            "peak_gpu_mb": {name: 5.0 for name in variants},
            "times_ms": {name: [11.0, 12.0, 14.0] for name in variants},
            "stages_ms": {name: models._stage_medians(values) for name, values in runs.items()},
            "post_runs_ms": {name: [(t["post"], t["total"]) for t in values] for name, values in runs.items()}}


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_post_stage_rows_beside_the_whole_forward(monkeypatch, device):
    """One "post stage" row per model and size: the median post stage against the median whole
    forward of the same runs (CPU: one thread; CUDA: each precision)."""
    variants = ("all_threads", "one_thread") if device == "cpu" else ("fp32", "fp16")
    monkeypatch.setattr(models, "run_child", lambda spec: fake_child_result(variants))
    make = models.cpu_model_rows if device == "cpu" else models.cuda_model_rows
    rows = make("tabletop", 1000, repeats=3)
    check_rows(rows)
    post = [row for row in rows if row.name.startswith("post stage")]
    assert len(post) == (1 if device == "cpu" else 2) and not rows[0].name.startswith("post stage")
    for row in post:
        assert models.MODELS["tabletop"] in row.name and "1,000 voxels" in row.name
        assert row.baseline == models.POST_BASELINE and (row.value, row.baseline_value) == (2.0, 12.0)
        assert row.extra["post_share"] == pytest.approx(2 / 12) and "16.7 %" in row.notes


def test_conv_closures_run_and_rows_need_minkowski():
    coords = conv.uniform_cloud(300, 20)
    runs = conv.conv_runs(coords)
    assert {key for key in runs if key[0] == "torch"} == {("torch", t) for t in conv.TIMINGS}
    for run in runs.values():
        run()
    rows = conv.conv_rows("uniform", coords, repeats=1)
    assert bool(rows) == (backends.minkowski_version() is not None)
    if rows:
        check_rows(rows)


@pytest.mark.slow
def test_node_work_rows():
    rows = pipeline.node_work_rows(Frame("kinect", small_kinect(96, 128), "synthetic"), repeats=1)
    check_rows(rows)
    assert len(rows) == 2 and rows[0].extra["map_points"] > 0


class FakePublisher:
    def __init__(self):
        self.stamps = []

    def publish(self, msg):
        self.stamps.append(msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec)


def test_publishing_is_paced_and_stamped_with_the_wall_clock():
    probe = latency.Probe(node=None, publisher=FakePublisher())
    stamps, achieved = latency.publish_at(probe, [small_kinect(4, 4)], 50.0, 5)
    assert stamps == probe.publisher.stamps and stamps == sorted(stamps)
    assert 0 < achieved <= 60


def status(received, requests, done, dropped, busy=False):
    return {"clouds_received": str(received), "inference_requests": str(requests), "inferences": str(done),
            "dropped_frames": str(dropped), "inference_failures": "0", "results_published": str(done),
            "mean_inference_ms": "100.0", "inference_busy": str(busy)}


def test_drained_needs_two_idle_statuses_after_the_mark():
    probe = latency.Probe(node=None, publisher=None)
    probe.statuses = [(1.0, status(5, 5, 3, 2)), (2.0, status(5, 5, 3, 2))]
    assert latency._drained(probe, 0.5)["inferences"] == 3
    assert latency._drained(probe, 1.5) is None, "only one status after the mark"
    probe.statuses = [(1.0, status(5, 5, 3, 1, busy=True)), (2.0, status(5, 5, 3, 1, busy=True))]
    assert latency._drained(probe, 0.5) is None


def test_latency_rows():
    result = {"rate_hz": 10.0, "achieved_hz": 9.9, "published": 20, "answered": 3, "distinct_stamps": 3,
              "latencies_ms": [120.0, 150.0, 300.0], "mean_inference_ms": 100.0, "clouds_received": 19,
              "inferences": 3, "dropped_frames": 16, "inference_failures": 0, "results_published": 3}
    rows = latency.latency_rows([result], "test frames")
    check_rows(rows)
    assert [row.extra["percentile"] for row in rows] == [50, 99]
    assert rows[0].value == 150.0 and "16 dropped by latest-wins" in rows[0].notes


def test_command_writes_the_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["--quick", "--only", "codec", "--shared", str(tmp_path / "absent"), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("Machine: ") and "| benchmark |" in printed
    document = json.loads(out.read_text())
    assert document["settings"]["quick"] is True and document["machine"]["cores"] >= 1
    assert all(set(row) == ROW_KEYS for row in document["rows"])
    check_rows([core.Row(**{k: v for k, v in row.items() if k != "ratio"}) for row in document["rows"]])
    assert any("generated frames" in note for note in document["notes"])
