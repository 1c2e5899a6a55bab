"""The CIFAR zoo against mdistiller: state-dict keys and shapes, outputs for identical weights, files.

Expected values come from
- tests/reference/cifar_shapes.json (the published checkpoints' keys and shapes, written from
  shared/reference/cifar_state_dict_shapes.json by tests/reference/make_shared_tables.py);
- tests/reference/model_refs.json, written by tests/reference/make_model_refs.py from mdistiller's
  own model code (always present). Weights are filled from key names and shapes only by that
  script's `seeded_state_dict`, which is imported here so both sides use the same logic.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import load_script, reference_table

from kdlab.errors import CheckpointError, ConfigError
from kdlab.models import MODELS, build_model

REPO = Path(__file__).resolve().parents[1]
CIFAR_NAMES = [
    "resnet8",
    "resnet14",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
    "resnet8x4",
    "resnet32x4",
    "ResNet18",
    "ResNet34",
    "ResNet50",
    "wrn_16_1",
    "wrn_16_2",
    "wrn_40_1",
    "wrn_40_2",
    "vgg8",
    "vgg11",
    "vgg13",
    "vgg16",
    "vgg19",
    "MobileNetV2",
    "ShuffleV1",
    "ShuffleV2",
]


REF = load_script("tests/reference/make_model_refs.py", "make_model_refs")
MODEL_REFS = json.loads((REPO / "tests" / "reference" / "model_refs.json").read_text())


SHAPES = reference_table("cifar_shapes.json")["models"]
NOT_IN_SHAPES = {"ResNet34"}  # no checkpoint of it was published with mdistiller's CIFAR teachers


def _assert_close(actual, expected, where: str) -> None:
    """Nested lists of numbers (and shape lists) equal to 1e-8 relative: both sides ran in float64."""
    if isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), f"{where}: {actual} vs {expected}"
        for i, (a, e) in enumerate(zip(actual, expected)):
            _assert_close(a, e, f"{where}[{i}]")
    else:
        assert math.isclose(actual, expected, rel_tol=1e-8, abs_tol=1e-9), f"{where}: {actual} != {expected}"


def test_every_cifar_name_is_registered_and_referenced():
    assert set(CIFAR_NAMES) <= set(MODELS.names())
    assert set(CIFAR_NAMES) == {k for k in MODEL_REFS if not k.startswith("_")}


def test_shape_table_covers_the_zoo():
    assert set(SHAPES) == set(CIFAR_NAMES) - NOT_IN_SHAPES


@pytest.mark.parametrize("name", sorted(set(CIFAR_NAMES) - NOT_IN_SHAPES))
def test_state_dict_matches_published_checkpoints(name):
    with torch.device("meta"):  # shapes only: no real initialization
        model = build_model(name, num_classes=100)
    own = [[k, list(v.shape)] for k, v in model.state_dict().items()]
    assert [k for k, _ in own] == [k for k, _ in SHAPES[name]["keys"]]  # same keys, same order
    assert own == SHAPES[name]["keys"]
    assert sum(p.numel() for p in model.parameters()) == SHAPES[name]["params"]


@pytest.mark.parametrize("name", CIFAR_NAMES)
def test_outputs_equal_mdistiller_for_identical_weights(name):
    model = build_model(name, num_classes=100)
    out = REF.run_and_summarize(model)
    ref = MODEL_REFS[name]
    for mode in ("eval", "train"):
        for key in ("logits", "feats", "pooled_feat"):
            _assert_close(out[mode][key], ref[mode][key], f"{name} {mode} {key}")
        # mdistiller's MobileNetV2 returns no preact_feats; kdlab's equal its feats (its blocks end linear)
        _assert_close(
            out[mode]["preact_feats"],
            ref[mode].get("preact_feats", ref[mode]["feats"]),
            f"{name} {mode} preact_feats",
        )
    assert [s[0][1] for s in out["eval"]["feats"]] == model.stage_channels


def _seeded_model(name: str) -> torch.nn.Module:
    model = build_model(name, num_classes=100)
    model.load_state_dict(REF.seeded_state_dict(model.state_dict()))
    return model


def test_mdistiller_checkpoint_layouts_load_strictly(tmp_path):
    """A teacher file {"model": sd} and a DataParallel distiller file ("module.student.") load alike."""
    sd = _seeded_model("resnet8x4").state_dict()
    teacher_sd = _seeded_model("resnet32x4").state_dict()
    torch.save({"model": sd}, tmp_path / "ckpt_epoch_240.pth")
    distiller = {f"module.student.{k}": v for k, v in sd.items()}
    distiller.update({f"module.teacher.{k}": v for k, v in teacher_sd.items()})
    torch.save(
        {
            "epoch": 240,
            "model": distiller,
            "best_acc": 73.1,
            "optimizer": {"state": {}, "param_groups": [{"lr": 0.05, "params": [0, 1]}]},
        },
        tmp_path / "latest",
    )
    for path in (tmp_path / "ckpt_epoch_240.pth", tmp_path / "latest"):
        model = build_model("resnet8x4", num_classes=100, pretrained=str(path))
        for key, value in model.state_dict().items():
            assert torch.equal(value, sd[key]), (path.name, key)
        model.double().eval()
        with torch.no_grad():
            logits, _ = model(REF.fixed_input())
        _assert_close(
            [[float(v) for v in row] for row in logits], MODEL_REFS["resnet8x4"]["eval"]["logits"], path.name
        )


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    torch.save({"model": _seeded_model("resnet8").state_dict()}, tmp_path / "r8.pth")
    with pytest.raises(CheckpointError, match="resnet|ResNet"):
        build_model("resnet14", num_classes=100, pretrained=str(tmp_path / "r8.pth"))


@pytest.mark.parametrize(
    "name", ["resnet8x4", "ResNet18", "wrn_16_2", "vgg8", "MobileNetV2", "ShuffleV1", "ShuffleV2"]
)
def test_other_input_sizes_and_channels(name):
    """Global pooling covers the whole map, so 48x48 works; in_channels swaps the stem."""
    model = build_model(name, num_classes=7, in_channels=1).eval()
    with torch.no_grad():
        logits, feats = model(torch.randn(1, 1, 48, 48))
    head = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    assert logits.shape == (1, 7)
    assert torch.allclose(head(feats["pooled_feat"]), logits)
    assert [f.shape[1] for f in feats["feats"]] == model.stage_channels
    assert len(feats["preact_feats"]) == len(feats["feats"])


def test_vgg_pools_before_the_last_block_only_at_64x64():
    """mdistiller's Tiny-ImageNet rule: the last block sees 4x4 maps for 32x32 and for 64x64 inputs."""
    model = build_model("vgg8", num_classes=10).eval()
    with torch.no_grad():
        sizes = {s: model(torch.randn(1, 3, s, s))[1]["feats"][-1].shape[-1] for s in (32, 48, 64)}
    assert sizes == {32: 4, 48: 6, 64: 4}


def test_wrn_updates_batchnorm_statistics_once_per_forward():
    model = build_model("wrn_16_2", num_classes=10).train()
    model(torch.randn(2, 3, 32, 32))
    counts = {int(m.num_batches_tracked) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert counts == {1}


def test_unknown_model_argument_is_a_config_error():
    with pytest.raises(ConfigError, match="dropout"):
        build_model("resnet8", num_classes=10, dropout=0.5)
    assert build_model("wrn_16_1", num_classes=10, drop_rate=0.3).block1.layer[0].drop_rate == 0.3
