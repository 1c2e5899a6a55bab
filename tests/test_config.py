"""Config: defaults, YAML compatibility with the reference configs, validation errors, --logit-stand.

The reference (peer) configs are rebuilt from tests/reference/peer_configs.json (conftest.peer_config_dir).
"""

from __future__ import annotations

import glob
import os
import re

import pytest
from conftest import REPO

from kdlab.config import get_cfg, load_cfg
from kdlab.config.defaults import __file__ as DEFAULTS_FILE
from kdlab.errors import ConfigError


def _write(tmp_path, text: str) -> str:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return str(path)


def test_every_default_key_is_commented():
    """Each `_C.GROUP.KEY = value` line in defaults.py carries a comment (on the line or the line above)."""
    lines = open(DEFAULTS_FILE).read().splitlines()
    undocumented = []
    for i, line in enumerate(lines):
        m = re.match(r"_C\.([A-Z0-9_.]+) = (?!CN\()", line)
        if m and "#" not in line and not lines[i - 1].lstrip().startswith("#"):
            undocumented.append(m.group(1))
    assert not undocumented, undocumented


def test_get_cfg_returns_fresh_copies_with_mdistiller_defaults():
    a, b = get_cfg(), get_cfg()
    a.SOLVER.LR = 123.0
    assert b.SOLVER.LR == 0.05
    assert b.KD.TEMPERATURE == 4.0 and b.KD.LOSS.KD_WEIGHT == 0.9 and b.LOG.WANDB is False
    assert b.LOG.PREFIX == "./logs" and b.DISTILLER.TYPE == "NONE"


def test_crd_trainer_is_the_base_trainer():
    """mdistiller's CRD trainer only adds the sample and contrast indices to a batch: kdlab's batches carry the
    index and CRD draws its contrast indices itself, so `crd` loads for any one-view method, as `base` does."""
    for method in ("CRD", "KD"):
        assert load_cfg(None, ["SOLVER.TRAINER", "crd", "DISTILLER.TYPE", method]).SOLVER.TRAINER == "crd"


def test_two_view_trainer_with_a_one_view_method_is_refused():
    with pytest.raises(ConfigError, match=r"SOLVER\.TRAINER 'aug' feeds two views.*DISTILLER\.TYPE 'KD' does not take"):
        load_cfg(None, ["SOLVER.TRAINER", "aug", "DISTILLER.TYPE", "KD"])
    assert load_cfg(None, ["SOLVER.TRAINER", "ours", "DISTILLER.TYPE", "MLKD"]).SOLVER.TRAINER == "ours"


@pytest.mark.parametrize("dataset, native", [("digits", 8)])
def test_image_size_a_dataset_would_ignore_is_refused(dataset, native):
    for size in (0, native):
        assert load_cfg(None, ["DATASET.TYPE", dataset, "DATASET.IMAGE_SIZE", str(size)]).DATASET.IMAGE_SIZE == size
    with pytest.raises(ConfigError, match=rf"DATASET\.IMAGE_SIZE 64: DATASET\.TYPE {dataset} always trains at "
                                          rf"{native}x{native}"):
        load_cfg(None, ["DATASET.TYPE", dataset, "DATASET.IMAGE_SIZE", "64"])
    assert load_cfg(None, ["DATASET.TYPE", "imagenette", "DATASET.IMAGE_SIZE", "64"]).DATASET.IMAGE_SIZE == 64


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_cifar_takes_any_image_size(dataset):
    """CIFAR is resized to DATASET.IMAGE_SIZE (e.g. 224 for torchvision backbones); a negative size is refused."""
    assert load_cfg(None, ["DATASET.TYPE", dataset, "DATASET.IMAGE_SIZE", "224"]).DATASET.IMAGE_SIZE == 224
    with pytest.raises(ConfigError, match=r"DATASET\.IMAGE_SIZE -1"):
        load_cfg(None, ["DATASET.TYPE", dataset, "DATASET.IMAGE_SIZE", "-1"])


def test_wandb_without_the_package_is_refused(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb now fails as if not installed
    with pytest.raises(ConfigError, match=r"LOG\.WANDB True needs the wandb package: pip install wandb"):
        load_cfg(None, ["LOG.WANDB", "True"])


def test_peer_config_values_are_merged(peer_config_dir):
    path = os.path.join(peer_config_dir, "mdistiller/cifar100/dkd/res32x4_res8x4.yaml")
    cfg = load_cfg(path)
    assert (cfg.DISTILLER.TYPE, cfg.DISTILLER.TEACHER, cfg.DISTILLER.STUDENT) == ("DKD", "resnet32x4", "resnet8x4")
    assert cfg.DKD.BETA == 8.0 and cfg.SOLVER.LR_DECAY_STAGES == [150, 180, 210]


def test_shipped_configs_load():
    """Every shipped config, the reference paths included, loads and validates: nothing is refused."""
    files = sorted(glob.glob(os.path.join(REPO, "configs", "**", "*.yaml"), recursive=True))
    assert len(files) >= 160
    for path in files:
        assert load_cfg(path).is_frozen(), path


def test_unknown_key_names_key_and_closest(tmp_path):
    with pytest.raises(ConfigError, match=r"SOLVER\.LRR.*SOLVER\.LR"):
        load_cfg(None, ["SOLVER.LRR", "0.1"])
    with pytest.raises(ConfigError, match=r"SOLVER\.LRR"):
        load_cfg(_write(tmp_path, "SOLVER:\n  LRR: 0.1\n"))
    with pytest.raises(ConfigError, match=r"unknown config key SOLVERR.*SOLVER"):
        load_cfg(_write(tmp_path, "SOLVERR:\n  LR: 0.1\n"))


@pytest.mark.parametrize(
    "opts, pattern",
    [
        (["SOLVER.LR", "abc"], r"SOLVER\.LR: expected float"),
        (["SOLVER.EPOCHS", "2.5"], r"SOLVER\.EPOCHS: expected int"),
        (["SOLVER.LR_DECAY_STAGES", "5"], r"expected list"),
        (["DISTILLER.STUDENT", "resnet8x5"], r"DISTILLER\.STUDENT.*'resnet8x5'.*resnet8x4"),
        (["DISTILLER.TYPE", "KDD"], r"DISTILLER\.TYPE.*'KDD'.*'KD'"),
        (["DATASET.TYPE", "cifar1000"], r"DATASET\.TYPE.*cifar100"),
        (["SOLVER.TYPE", "Adamw"], r"SOLVER\.TYPE.*AdamW"),
        (["SOLVER.SCHEDULER", "cosin"], r"SOLVER\.SCHEDULER.*cosine"),
        (["SOLVER.LR", "-0.1"], r"SOLVER\.LR must be > 0"),
        (["SOLVER.BATCH_SIZE", "0"], r"SOLVER\.BATCH_SIZE must be > 0"),
        (["KD.TEMPERATURE", "0"], r"KD\.TEMPERATURE must be > 0"),
        (["SOLVER.LR"], r"KEY VALUE pairs"),
    ],
)
def test_bad_values_are_config_errors(opts, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_cfg(None, opts)


def test_int_yaml_value_for_float_key_is_accepted(tmp_path):
    cfg = load_cfg(_write(tmp_path, "KD:\n  TEMPERATURE: 1\n"))
    assert cfg.KD.TEMPERATURE == 1.0 and isinstance(cfg.KD.TEMPERATURE, float)


def test_broken_and_missing_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_cfg(str(tmp_path / "nope.yaml"))
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_cfg(_write(tmp_path, "SOLVER: [1, 2\n"))


def test_logit_stand_kd_sets_temperature_and_weight():
    cfg = load_cfg(None, ["DISTILLER.TYPE", "KD"], logit_stand=True, base_temp=3.0, kd_weight=7.0)
    assert cfg.EXPERIMENT.LOGIT_STAND is True
    assert cfg.KD.TEMPERATURE == 3.0 and cfg.KD.LOSS.KD_WEIGHT == 7.0


def test_logit_stand_defaults_are_base_temp_2_and_kd_weight_9():
    cfg = load_cfg(None, ["DISTILLER.TYPE", "KD"], logit_stand=True)
    assert cfg.KD.TEMPERATURE == 2.0 and cfg.KD.LOSS.KD_WEIGHT == 9.0


def test_logit_stand_dkd_multiplies_alpha_beta():
    cfg = load_cfg(None, ["DISTILLER.TYPE", "DKD", "DKD.ALPHA", "1.0", "DKD.BETA", "2.0"], logit_stand=True,
                   base_temp=2.0, kd_weight=9.0)
    assert (cfg.DKD.ALPHA, cfg.DKD.BETA, cfg.DKD.T) == (9.0, 18.0, 2.0)


def test_logit_stand_off_leaves_config_alone():
    cfg = load_cfg(None, ["DISTILLER.TYPE", "KD"])
    assert cfg.EXPERIMENT.LOGIT_STAND is False and cfg.KD.TEMPERATURE == 4.0


def test_logit_stand_refused_for_vanilla():
    with pytest.raises(ConfigError, match="--logit-stand is not supported for DISTILLER.TYPE 'NONE'"):
        load_cfg(None, ["DISTILLER.TYPE", "NONE"], logit_stand=True)


def test_loaded_config_is_frozen():
    cfg = load_cfg(None)
    with pytest.raises(AttributeError):
        cfg.SOLVER.LR = 1.0


def test_base_is_merged_first_relative_to_the_including_file(tmp_path):
    (tmp_path / "pairs").mkdir()
    (tmp_path / "root.yaml").write_text("SOLVER:\n  LR: 0.2\n  EPOCHS: 10\nKD:\n  TEMPERATURE: 3\n")
    (tmp_path / "pairs" / "mid.yaml").write_text("_BASE_: ../root.yaml\nSOLVER:\n  EPOCHS: 20\n")
    (tmp_path / "pairs" / "top.yaml").write_text("_BASE_: mid.yaml\nSOLVER:\nKD:\n  LOSS:\n    KD_WEIGHT: 5\n")
    cfg = load_cfg(str(tmp_path / "pairs" / "top.yaml"))
    assert (cfg.SOLVER.LR, cfg.SOLVER.EPOCHS, cfg.KD.TEMPERATURE, cfg.KD.LOSS.KD_WEIGHT) == (0.2, 20, 3.0, 5.0)
    assert cfg.KD.LOSS.CE_WEIGHT == 0.1  # untouched keys keep the defaults


def test_missing_base_names_the_file_and_the_includer(tmp_path):
    top = _write(tmp_path, "_BASE_: nope/base.yaml\nSOLVER:\n  LR: 0.2\n")
    with pytest.raises(ConfigError) as err:
        load_cfg(top)
    msg = str(err.value)
    assert "\n" not in msg
    assert re.fullmatch(rf"config file not found: {re.escape(str(tmp_path / 'nope' / 'base.yaml'))} "
                        rf"\(the _BASE_ of {re.escape(top)}\)", msg), msg


@pytest.mark.parametrize("files, start", [
    ({"a.yaml": "_BASE_: a.yaml\n"}, "a.yaml"),
    ({"a.yaml": "_BASE_: b.yaml\n", "b.yaml": "_BASE_: sub/../a.yaml\n", "sub/x": ""}, "a.yaml"),
    ({"top.yaml": "_BASE_: a.yaml\n", "a.yaml": "_BASE_: b.yaml\n", "b.yaml": "_BASE_: a.yaml\n"}, "top.yaml"),
])
def test_base_cycle_is_a_one_line_error_naming_the_chain(tmp_path, files, start):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError, match=r"^_BASE_ cycle: .*a\.yaml -> .*a\.yaml; a config cannot include itself$") \
            as err:
        load_cfg(str(tmp_path / start))
    assert "\n" not in str(err.value) and "top.yaml" not in str(err.value)


def test_base_must_be_a_file_name(tmp_path):
    with pytest.raises(ConfigError, match=r"_BASE_ must be a file name relative to this file, got \['a.yaml'\]"):
        load_cfg(_write(tmp_path, "_BASE_: [a.yaml]\n"))
