"""The model adapter: building the Segmenter from parameters (clear errors), release and reload,
and one run of the real model with random weights."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mask3d_ros.model.backends import import_minkowski
from mask3d_ros.model.files import ModelError, bundled_checkpoint, resolve_checkpoint
from mask3d_ros.model.results import PointSegmentation
from mask3d_ros.ros import params
from mask3d_ros.ros.model_runner import ModelRunner, segmenter_factory


def config(**changes):
    return params.validate({"model.checkpoint": "", "model.allow_random_weights": True, "model.device": "cpu",
                            **changes})


class CountingSegmenter:
    class preset:
        class_names = ("a", "b")

    def __init__(self):
        self.released = False

    def segment(self, xyz, rgb):
        n = len(xyz)
        return SimpleNamespace(point_instance=np.r_[np.zeros(n // 2, int), -np.ones(n - n // 2, int)],
                               class_ids=np.array([1]), scores=np.array([0.7], np.float32), timings_ms={})

    def release(self):
        self.released = True


def test_runner_releases_and_rebuilds_lazily():
    built = []

    def build():
        built.append(CountingSegmenter())
        return built[-1]

    runner = ModelRunner(build, "cpu")
    runner.load()
    assert runner.loaded and runner.class_names == ("a", "b") and len(built) == 1
    seg = runner.segment(np.zeros((10, 3), np.float32), np.zeros((10, 3), np.uint8))
    seg.validate(10)
    assert [(i.class_name, len(i.indices)) for i in seg.instances] == [("b", 5)]
    runner.release()
    assert built[0].released and not runner.loaded
    runner.segment(np.zeros((4, 3), np.float32), np.zeros((4, 3), np.uint8))
    assert len(built) == 2, "enabled again: the model is rebuilt on the next inference"


def test_checkpoint_and_device_errors_are_specific(tmp_path):
    with pytest.raises(ModelError, match="not found.*looked at"):
        resolve_checkpoint("model/does_not_exist.ckpt")
    weights = tmp_path / "w.ckpt"
    weights.write_bytes(b"not a checkpoint")
    assert resolve_checkpoint(str(weights)) == weights

    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="CUDA is not available"):
            segmenter_factory(config(**{"model.device": "cuda"}))
    build, _ = segmenter_factory(config(**{"model.checkpoint": str(weights), "model.preset": "scannet"}))
    with pytest.raises(ModelError, match=r"cannot build the model \(preset 'scannet', checkpoint"):
        build()


def test_real_model_with_random_weights_gives_a_consistent_segmentation():
    runner = ModelRunner.from_config(config())
    assert runner.random_weights and runner.class_names == ("table", "object")
    rng = np.random.default_rng(0)
    xyz = np.concatenate([rng.uniform((0, 0, 0), (0.6, 0.6, 0.01), (2000, 3)),
                          rng.normal((0.3, 0.3, 0.1), 0.03, (500, 3))]).astype(np.float32)
    rgb = rng.integers(0, 255, (len(xyz), 3), dtype=np.uint8)
    seg = runner.segment(xyz, rgb)
    assert isinstance(seg, PointSegmentation)
    seg.validate(len(xyz))
    assert {"backbone", "decoder", "total"} <= set(seg.timings_ms)
    runner.release()
    assert not runner.loaded


def test_the_backend_parameter_reaches_the_model():
    """``model.backend``: auto and torch build the pure-PyTorch backbone; minkowski builds
    MinkowskiEngine's, or fails at start with the install command when it is not importable."""
    def built_backend(backend: str) -> str:
        runner = ModelRunner.from_config(config(**{"model.backend": backend}))
        runner.load()
        return runner._segmenter.model.backend

    assert built_backend("auto") == built_backend("torch") == "torch"
    try:
        import_minkowski()
    except ImportError:
        with pytest.raises(ModelError, match="model.backend is minkowski.*pip install"):
            segmenter_factory(config(**{"model.backend": "minkowski"}))
    else:
        assert built_backend("minkowski") == "minkowski"



def test_post_processing_parameters_override_the_checkpoint_only_when_set():
    bundled = {"model.checkpoint": str(bundled_checkpoint()), "model.allow_random_weights": False}
    own = segmenter_factory(config(**bundled))[0]().preset
    chosen = segmenter_factory(config(**bundled, **{"model.dbscan_eps": 0.04, "model.smooth_radius": 0.0}))[0]().preset
    assert (chosen.dbscan_eps, chosen.smooth_radius) == (0.04, 0.0)
    assert chosen.voxel_size == own.voxel_size and chosen.class_names == own.class_names
    with pytest.raises(ValueError, match="model.smooth_radius"):
        config(**{"model.smooth_radius": -2.0})
