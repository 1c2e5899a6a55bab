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


def test_all_peer_configs_load_or_are_refused_as_not_implemented(peer_config_dir):
    """Each reference config loads, or (SOLVER.TRAINER crd: an mdistiller trainer kdlab lacks) is refused
    at load time saying so; nothing it sets is silently ignored."""
    import yaml

    from kdlab.config.validate import TRAINERS_NOT_YET_IMPLEMENTED

    files = sorted(glob.glob(os.path.join(peer_config_dir, "**", "*.yaml"), recursive=True))
    assert len(files) >= 100
    refused, expected = [], []
    for path in files:
        trainer = (yaml.safe_load(open(path)).get("SOLVER") or {}).get("TRAINER", "base")
        if trainer in TRAINERS_NOT_YET_IMPLEMENTED:
            expected.append(path)
        try:
            assert load_cfg(path).is_frozen()
        except ConfigError as exc:
            assert re.search(r"SOLVER\.TRAINER '(crd)' .* is not implemented yet", str(exc)), (path, exc)
            refused.append(path)
    assert refused == expected and len(refused) == 6  # crd


@pytest.mark.parametrize("trainer", ["crd"])
def test_unimplemented_trainer_is_refused(trainer):
    with pytest.raises(ConfigError, match=rf"SOLVER\.TRAINER '{trainer}' .*not implemented yet.*base, aug, ours, dot"):
        load_cfg(None, ["SOLVER.TRAINER", trainer])


def test_two_view_trainer_with_a_one_view_method_is_refused():
    with pytest.raises(ConfigError, match=r"SOLVER\.TRAINER 'aug' feeds two views.*DISTILLER\.TYPE 'KD' does not take"):
        load_cfg(None, ["SOLVER.TRAINER", "aug", "DISTILLER.TYPE", "KD"])
    assert load_cfg(None, ["SOLVER.TRAINER", "ours", "DISTILLER.TYPE", "MLKD"]).SOLVER.TRAINER == "ours"


@pytest.mark.parametrize("dataset, native", [("cifar10", 32), ("cifar100", 32), ("digits", 8)])
def test_image_size_a_dataset_would_ignore_is_refused(dataset, native):
    for size in (0, native):
        assert load_cfg(None, ["DATASET.TYPE", dataset, "DATASET.IMAGE_SIZE", str(size)]).DATASET.IMAGE_SIZE == size
    with pytest.raises(ConfigError, match=rf"DATASET\.IMAGE_SIZE 64: DATASET\.TYPE {dataset} always trains at "
                                          rf"{native}x{native}"):
        load_cfg(None, ["DATASET.TYPE", dataset, "DATASET.IMAGE_SIZE", "64"])
    assert load_cfg(None, ["DATASET.TYPE", "imagenette", "DATASET.IMAGE_SIZE", "64"]).DATASET.IMAGE_SIZE == 64


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
    files = sorted(glob.glob(os.path.join(REPO, "configs", "**", "*.yaml"), recursive=True))
    assert files
    for path in files:
        load_cfg(path)


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
