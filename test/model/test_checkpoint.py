"""Strict checkpoint loading, architecture inference and presets."""
import dataclasses
import sys
import types
import warnings

import numpy as np
import pytest
import torch

from mask3d_ros.model.checkpoint import CheckpointError, check_config, infer_config, load_weights, read_checkpoint
from mask3d_ros.model.decoder import Mask3D, Mask3DConfig
from mask3d_ros.model.presets import PRESETS, get_preset, preset_from_description

TINY = Mask3DConfig(num_classes=5, num_labels=4, backbone="Res16UNet14A", backbone_width=0.25, hidden_dim=32,
                    num_heads=4, dim_feedforward=64, num_queries=8)


class Opaque:
    """Some pickled class the safe loader does not know."""


@pytest.fixture(scope="module")
def tiny_state() -> dict:
    torch.manual_seed(0)
    return Mask3D(TINY).state_dict()


def lightning(state: dict) -> dict:
    """The official file layout: prefixed model keys, the criterion buffer and Lightning's extras."""
    entries = {f"model.{k}": v for k, v in state.items()}
    entries["criterion.empty_weight"] = torch.ones(TINY.num_classes)
    return {"state_dict": entries, "epoch": 3, "global_step": 10, "optimizer_states": [], "lr_schedulers": [],
            "callbacks": {}, "pytorch-lightning_version": "1.7.2", "hyper_parameters": {"lr": 1e-4}}


def meta_state(config: Mask3DConfig) -> dict:
    with torch.device("meta"):
        return Mask3D(config).state_dict()


@pytest.mark.parametrize("layout", ["lightning", "plain", "plain_prefixed"])
def test_every_layout_loads_strictly(tmp_path, tiny_state, layout):
    payload = {"lightning": lightning(tiny_state), "plain": tiny_state,
               "plain_prefixed": {f"model.{k}": v for k, v in tiny_state.items()}}[layout]
    torch.save(payload, tmp_path / "w.ckpt")
    ckpt = read_checkpoint(tmp_path / "w.ckpt")
    assert list(ckpt.state_dict) == list(tiny_state)
    model = Mask3D(TINY)
    load_weights(model, ckpt.state_dict)
    for key, value in model.state_dict().items():
        assert torch.equal(value, tiny_state[key]), key


def test_missing_unexpected_and_wrong_shape_are_one_error(tiny_state):
    state = dict(tiny_state)
    del state["decoder_norm.bias"]
    state["extra.weight"] = torch.zeros(1)
    state["class_embed_head.weight"] = torch.zeros(9, TINY.hidden_dim)
    with pytest.raises(CheckpointError) as caught:
        load_weights(Mask3D(TINY), state)
    err = caught.value
    assert err.missing == ["decoder_norm.bias"] and err.unexpected == ["extra.weight"]
    assert err.mismatched == [("class_embed_head.weight", (9, TINY.hidden_dim), (TINY.num_classes, TINY.hidden_dim))]
    for text in ("1 missing: decoder_norm.bias", "1 unexpected: extra.weight",
                 "class_embed_head.weight (9, 32) vs (5, 32)"):
        assert text in str(err)


def test_unreadable_files_raise_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "absent.ckpt")
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        read_checkpoint(tmp_path / "junk.ckpt")
    torch.save([1, 2], tmp_path / "list.ckpt")
    with pytest.raises(CheckpointError, match="expected a dict"):
        read_checkpoint(tmp_path / "list.ckpt")


@pytest.fixture
def fake_omegaconf(monkeypatch):
    """A stand-in ``omegaconf.dictconfig.DictConfig`` so a checkpoint can pickle one."""
    package, module = types.ModuleType("omegaconf"), types.ModuleType("omegaconf.dictconfig")

    class DictConfig(dict):
        pass

    DictConfig.__module__, DictConfig.__qualname__ = "omegaconf.dictconfig", "DictConfig"
    module.DictConfig = DictConfig
    package.dictconfig = module
    monkeypatch.setitem(sys.modules, "omegaconf", package)
    monkeypatch.setitem(sys.modules, "omegaconf.dictconfig", module)
    return DictConfig


def test_omegaconf_hyper_parameters_fall_back_with_a_warning(tmp_path, tiny_state, fake_omegaconf, monkeypatch):
    payload = lightning(tiny_state)
    payload["hyper_parameters"] = fake_omegaconf(general={"num_targets": 5})
    torch.save(payload, tmp_path / "official.ckpt")
    with pytest.warns(UserWarning, match="weights_only=False"):
        ckpt = read_checkpoint(tmp_path / "official.ckpt")
    assert list(ckpt.state_dict) == list(tiny_state)
    # without omegaconf the message says how to get it
    monkeypatch.setitem(sys.modules, "omegaconf", None)
    with pytest.raises(CheckpointError, match="pip install omegaconf"):
        read_checkpoint(tmp_path / "official.ckpt")


def test_other_pickled_objects_are_refused(tmp_path, tiny_state):
    payload = lightning(tiny_state)
    payload["hyper_parameters"] = Opaque()
    torch.save(payload, tmp_path / "opaque.ckpt")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(CheckpointError, match="safe loader"):
            read_checkpoint(tmp_path / "opaque.ckpt")


@pytest.mark.parametrize("config", [
    Mask3DConfig(),
    Mask3DConfig(num_classes=15, num_labels=15, backbone="Res16UNet18B"),
    dataclasses.replace(TINY, backbone_width=0.3, shared_decoder=False),
], ids=["34C-scannet200", "18B-stpls3d", "14A-compact"])
def test_architecture_is_read_off_the_shapes(config):
    # heads and query count leave no trace in the weights: the base supplies them
    base = dataclasses.replace(Mask3DConfig(), num_heads=config.num_heads, num_queries=config.num_queries)
    found = infer_config(meta_state(config), base)
    assert found == dataclasses.replace(config, backbone_width=found.backbone_width)
    assert infer_config(meta_state(config), config) == config       # equivalent widths keep the preset's


def test_a_preset_that_disagrees_is_named():
    state = meta_state(get_preset("scannet200").model)
    check_config(state, get_preset("scannet200").model)
    with pytest.raises(CheckpointError, match="num_classes: checkpoint 201, preset 'scannet' 19"):
        check_config(state, get_preset("scannet").model, "preset 'scannet'")
    with pytest.raises(CheckpointError, match="backbone: checkpoint 'Res16UNet34C'"):
        check_config(state, get_preset("stpls3d").model)
    with pytest.raises(CheckpointError, match="not a Mask3D state dict"):
        infer_config({"foo": torch.zeros(1)})


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_are_consistent(name):
    preset = get_preset(name)
    assert len(preset.class_names) == len(preset.label_ids) == preset.model.num_classes - 1
    assert len(preset.color_mean) == len(preset.color_std) == 3 and preset.voxel_size > 0
    assert all(0 <= c < preset.model.num_classes - 1 for c in preset.exclude_classes)
    assert preset.class_to_label.dtype == np.int64


def test_preset_label_tables():
    scannet = get_preset("scannet")
    assert scannet.class_names[0] == "cabinet" and scannet.label_ids[0] == 3
    assert scannet.class_names[-1] == "otherfurniture" and scannet.label_ids[-1] == 39
    assert get_preset("stpls3d").label_ids[0] == 1 and get_preset("stpls3d").class_names[0] == "Build"
    assert get_preset("s3dis").class_names[2] == "wall"
    scannet200 = get_preset("scannet200")
    assert (scannet200.class_names[0], scannet200.label_ids[0]) == ("chair", 2), "class 0 is chair (official remap)"
    assert (scannet200.class_names[1], scannet200.label_ids[1]) == ("table", 4), "wall and floor are dropped"
    assert (scannet200.class_names[197], scannet200.label_ids[197]) == ("mattress", 1191)
    assert len(set(scannet200.class_names)) == 200 and "wall" not in scannet200.class_names
    assert set(scannet200.exclude_classes) == {198, 199} and scannet200.label_ids[198:] == (-1, -1)
    with pytest.raises(ValueError, match="unknown preset"):
        get_preset("kitti")


def test_preset_from_a_trainer_description():
    description = {"model": dataclasses.asdict(TINY), "class_names": ["a", "b", "c", "d"], "voxel_size": 0.01,
                   "color_mean": [0.5] * 3, "color_std": [0.25] * 3}
    preset = preset_from_description(description, "tabletop")
    assert preset.model == TINY and preset.class_names == ("a", "b", "c", "d") and preset.voxel_size == 0.01
