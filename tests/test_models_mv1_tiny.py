"""mdistiller's ImageNet MobileNetV1 and Tiny-ImageNet models against mdistiller's own code.

Expected values: tests/reference/extra_model_refs.json, written by
tests/reference/make_extra_model_refs.py from a mdistiller checkout (keys and shapes of each
reference module; its outputs, in float64, for the seeded state dict of make_model_refs.py).
Here that state dict is saved to a file and loaded through build_model(..., pretrained=file),
as a user loads weights saved from mdistiller's model.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import load_script

from kdlab.models import build_model, resolve_model_name

REPO = Path(__file__).resolve().parents[1]
REFS = json.loads((REPO / "tests" / "reference" / "extra_model_refs.json").read_text())
NAMES = sorted(k for k in REFS if not k.startswith("_"))
RUN = [n for n in NAMES if "eval" in REFS[n]]


REF = load_script("tests/reference/make_extra_model_refs.py", "make_extra_model_refs")


def kdlab_name(name: str) -> str:
    """'ResNet18@tiny_imagenet' -> the kdlab model that name builds on that dataset."""
    model, _, dataset = name.partition("@")
    return resolve_model_name(model, dataset)


def _assert_close(actual, expected, where: str) -> None:
    if isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), f"{where}: {actual} vs {expected}"
        for i, (a, e) in enumerate(zip(actual, expected)):
            _assert_close(a, e, f"{where}[{i}]")
    else:
        assert math.isclose(actual, expected, rel_tol=1e-9, abs_tol=1e-10), f"{where}: {actual} != {expected}"


def test_names_resolve_per_dataset():
    assert resolve_model_name("MobileNetV1", "imagenet") == "MobileNetV1"
    # logit-standardization-KD's ImageNet "MobileNetV2" is MobileNetV1's layout; torchvision's keeps its own name
    assert resolve_model_name("MobileNetV2", "imagenet") == "MobileNetV1"
    assert resolve_model_name("mobilenet_v2", "imagenet") == "mobilenet_v2"
    assert resolve_model_name("MobileNetV2", "tiny_imagenet") == "mobilenetv2_tinyimagenet"
    assert resolve_model_name("ResNet18", "tiny_imagenet") == "ResNet18"
    assert resolve_model_name("MobileNetV2", "cifar100") == "MobileNetV2"


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_keys_and_shapes_equal_mdistillers(name):
    with torch.device("meta"):
        model = build_model(kdlab_name(name), num_classes=REFS[name]["num_classes"])
    assert [[k, list(v.shape)] for k, v in model.state_dict().items()] == REFS[name]["keys"]
    assert sum(p.numel() for p in model.parameters()) == REFS[name]["params"]


@pytest.mark.parametrize("name", RUN)
def test_weights_saved_from_mdistiller_give_its_outputs(name, tmp_path):
    ref = REFS[name]
    # the reference's float32 state dict (BatchNorm counters int64), seeded as the script seeded it
    template = {k: torch.empty(s, dtype=torch.int64 if k.endswith("num_batches_tracked") else torch.float32)
                for k, s in ref["keys"]}
    state = REF.seeded_state_dict(template)
    path = tmp_path / "weights.pth"
    torch.save({k: state[k] for k, _ in ref["keys"]}, path)
    model = build_model(kdlab_name(name), num_classes=ref["num_classes"], pretrained=str(path)).to(torch.float64)
    x = REF.fixed_input(ref["input"][-1])
    with torch.no_grad():
        for mode in ("eval", "train"):
            model.train(mode == "train")
            out = REF.summarize_outputs(*model(x))
            for key in ("logits", "logits_head", "feats", "pooled_feat"):
                _assert_close(out[key], ref[mode][key], f"{name} {mode} {key}")
            if "preact_feats" in ref[mode]:
                _assert_close(out["preact_feats"], ref[mode]["preact_feats"], f"{name} {mode} preact_feats")


def _bn_outputs(model: torch.nn.Module, x: torch.Tensor):
    seen = []
    handles = [bn.register_forward_hook(lambda m, a, o: seen.append(o)) for bn in model.get_bn_before_relu()]
    with torch.no_grad():
        _, feats = model(x)
    for h in handles:
        h.remove()
    return seen, feats


def test_mobilenet_v1_feats_stage_channels_and_bn_before_relu():
    model = build_model("MobileNetV1", num_classes=10).eval()
    outs, feats = _bn_outputs(model, torch.randn(2, 3, 64, 64))  # any size: the pooling is global
    assert model.get_stage_channels() == [128, 256, 512, 1024]
    assert [f.shape[1:] for f in feats["feats"]] == [(128, 16, 16), (256, 8, 8), (512, 4, 4), (1024, 2, 2)]
    assert feats["pooled_feat"].shape == (2, 1024)
    for out, pre, post in zip(outs, feats["preact_feats"], feats["feats"]):
        assert torch.equal(out, pre) and torch.equal(post, pre.clamp(min=0))
        assert (pre < 0).any()  # a real pre-activation, not the ReLU's output


def test_tiny_imagenet_mobilenet_v2_feats_and_bn_before_relu():
    model = build_model("mobilenetv2_tinyimagenet", num_classes=200).eval()
    outs, feats = _bn_outputs(model, torch.randn(2, 3, 64, 64))
    assert [f.shape[1] for f in feats["feats"]] == model.get_stage_channels() == [32, 24, 32, 64, 1280]
    assert [f.shape[-1] for f in feats["feats"]] == [66, 33, 17, 9, 9]  # its 1x1 stem conv pads by 1
    assert feats["pooled_feat"].shape == (2, 1280)
    # stage2..4 end in a block with an identity shortcut: its projection's BN output plus the block's input
    assert [o.shape for o in outs] == [p.shape for p in feats["preact_feats"][1:]]
    assert torch.equal(outs[-1], feats["preact_feats"][-1])
    assert torch.equal(feats["feats"][-1], feats["preact_feats"][-1].clamp(0, 6))


def test_the_builder_says_which_network_a_reference_name_builds(caplog):
    from kdlab.config import load_cfg
    from kdlab.data import DatasetSplits
    from kdlab.engine.builder import build_student

    cfg = load_cfg(None, ["DATASET.TYPE", "imagenet", "DISTILLER.STUDENT", "MobileNetV2"])
    splits = DatasetSplits(train=[], val=[], num_classes=10, class_names=[], input_size=(224, 224))
    import logging

    kdlab_log = logging.getLogger("kdlab")  # after a run's setup_logging it does not propagate to caplog's root
    kdlab_log.addHandler(caplog.handler)
    try:
        with caplog.at_level("INFO", logger="kdlab"):
            model = build_student(cfg, splits)
    finally:
        kdlab_log.removeHandler(caplog.handler)
    assert type(model).__name__ == "MobileNetV1" and model.fc.out_features == 10
    assert "DISTILLER.STUDENT MobileNetV2 on imagenet builds kdlab's MobileNetV1" in caplog.text
