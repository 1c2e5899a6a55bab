"""Every registered method declares its properties once, on its class, and the rest of kdlab follows them.

Iterates the DISTILLERS registry (a new method is picked up without editing this file): two-view
methods get (weak, strong) tuples from the data pipeline and the others single images; --logit-stand
is refused where the class does not take it and otherwise sets only that method's keys; a method
gets the dataset facts it declares, and no more is needed; a teacher is built only where declared.
Each method runs with its shipped configs/digits/*/*.yaml (found by DISTILLER.TYPE), on digits
(bundled) with the digits models, which keeps it fast.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import yaml
from yacs.config import CfgNode

from kdlab.config import flatten, get_cfg, load_cfg
from kdlab.data import DatasetSplits
from kdlab.distillers import DISTILLERS, DatasetFacts, build_distiller, dataset_facts
from kdlab.engine.builder import build_everything, build_splits
from kdlab.errors import ConfigError
from kdlab.models import build_model

METHODS = DISTILLERS.names()
DIGITS_CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "digits"
DIGITS = [
    "DATASET.NUM_WORKERS", "0", "SOLVER.DEVICE", "cpu",
    "DISTILLER.STUDENT", "digits_student", "DISTILLER.TEACHER", "digits_teacher",
]  # fmt: skip


def digits_yaml(method: str) -> Path:
    """The shipped digits config of a method: every method has one (it is how a user tries it in seconds)."""
    for path in sorted(DIGITS_CONFIGS.glob("*/*.yaml")):
        if (yaml.safe_load(path.read_text()).get("DISTILLER") or {}).get("TYPE", "NONE") == method:
            return path
    pytest.fail(f"no configs/digits/*/*.yaml has DISTILLER.TYPE {method}")


def digits_cfg(method: str, opts=(), **kwargs) -> CfgNode:
    return load_cfg(str(digits_yaml(method)), DIGITS + list(opts), **kwargs)


def test_every_method_declares_its_properties():
    assert {"NONE", "KD", "DKD", "MLKD", "FITNET", "FEATKD", "CONKD"} <= set(METHODS)
    for name in METHODS:
        cls = DISTILLERS.get(name)
        for flag in ("two_views", "needs_teacher", "supports_segmentation", "supports_logit_stand",
                     "teacher_logits_only"):
            assert isinstance(getattr(cls, flag), bool), (name, flag)
        fields = {f.name for f in dataclasses.fields(DatasetFacts)}
        assert set(cls.dataset_facts) <= fields, name
        assert set(cls.needed_facts(get_cfg())) <= set(cls.dataset_facts), name


@pytest.mark.parametrize("method", METHODS)
def test_two_view_methods_get_tuples_from_the_data_pipeline(method):
    cfg = digits_cfg(method)
    image, target, index = build_splits(cfg).train[0]
    if DISTILLERS.get(method).two_views:
        assert isinstance(image, tuple) and len(image) == 2 and image[0].shape == image[1].shape == (1, 8, 8)
    else:
        assert isinstance(image, torch.Tensor) and image.shape == (1, 8, 8)


@pytest.mark.parametrize("method", METHODS)
def test_logit_stand_is_applied_by_the_class_or_refused(method):
    cls = DISTILLERS.get(method)
    if not cls.supports_logit_stand:
        with pytest.raises(ConfigError, match=f"--logit-stand is not supported for DISTILLER.TYPE '{method}'"):
            digits_cfg(method, logit_stand=True)
        with pytest.raises(ConfigError, match="does not use it"):
            build_distiller(digits_cfg(method, ["EXPERIMENT.LOGIT_STAND", "True"]), build_model("digits_student", 10))
        return
    plain = flatten(digits_cfg(method))
    standardized = flatten(digits_cfg(method, logit_stand=True, base_temp=3.5, kd_weight=7.0))
    changed = {k for k, v in standardized.items() if v != plain[k]}
    assert "EXPERIMENT.LOGIT_STAND" in changed and len(changed) >= 2, changed
    # Only keys of the method's own config group(s), never solver, data or model keys.
    assert all(k.split(".")[0] not in ("SOLVER", "DATASET", "DISTILLER", "LOG") for k in changed), changed
    temp_only = flatten(digits_cfg(method, logit_stand=True, base_temp=3.5))
    assert any(v == 3.5 for k, v in temp_only.items() if k in changed)


@pytest.mark.parametrize("method", METHODS)
def test_build_everything_passes_the_dataset_facts_and_a_teacher_only_where_declared(method, monkeypatch):
    cls = DISTILLERS.get(method)
    seen = {}
    original = cls.from_config.__func__

    def spy(klass, cfg, student, teacher, facts):
        seen["facts"], seen["teacher"] = facts, teacher
        return original(klass, cfg, student, teacher, facts)

    monkeypatch.setattr(cls, "from_config", classmethod(spy))
    splits, distiller = build_everything(digits_cfg(method), load_teacher_weights=False)
    assert seen["facts"] == dataset_facts(splits)
    assert seen["facts"].input_size == (8, 8) and seen["facts"].num_train == len(splits.train) > 0
    assert (distiller.teacher is not None) == cls.needs_teacher == (seen["teacher"] is not None)


@pytest.mark.parametrize("method", METHODS)
def test_declared_facts_are_enough_and_necessary(method):
    """Facts holding only what the class declares build it; leaving a declared one out is a ConfigError."""
    cfg = digits_cfg(method)
    cls = DISTILLERS.get(method)
    full = DatasetFacts(num_classes=10, num_train=1437, input_size=(8, 8), in_channels=1,
                        train_targets=torch.arange(1437) % 10)
    only_declared = DatasetFacts(**{name: getattr(full, name) for name in cls.needed_facts(cfg)})
    torch.manual_seed(0)
    teacher = build_model("digits_teacher", 10) if cls.needs_teacher else None
    distiller = build_distiller(cfg, build_model("digits_student", 10), teacher, facts=only_declared)
    image = torch.randn(4, 1, 8, 8)
    batch = (image, image.flip(-1)) if cls.two_views else image
    _, losses = distiller.train()(batch, torch.arange(4), epoch=1, index=torch.arange(4))
    assert torch.isfinite(sum(losses.values()))
    for name in cls.needed_facts(cfg):  # each declared fact left out alone
        facts = dataclasses.replace(only_declared, **{name: None})
        with pytest.raises(ConfigError, match=f"needs the dataset's {name};"):
            build_distiller(cfg, build_model("digits_student", 10), teacher, facts=facts)


def test_an_input_size_key_makes_the_fact_unnecessary():
    """FITNET.INPUT_SIZE / FEATKD.INPUT_SIZE override the dataset's size; empty (the default) asks for it."""
    for method, key in (("FITNET", "FITNET.INPUT_SIZE"), ("FEATKD", "FEATKD.INPUT_SIZE")):
        cls = DISTILLERS.get(method)
        assert cls.needed_facts(digits_cfg(method, [key, "[]"])) == ("input_size",)
        cfg = digits_cfg(method, [key, "[8, 8]"])
        assert cls.needed_facts(cfg) == ()
        build_distiller(cfg, build_model("digits_student", 10), build_model("digits_teacher", 10), facts=DatasetFacts())


def test_classification_methods_are_refused_on_segmentation():
    seg = DatasetSplits(train=[], val=[], num_classes=21, class_names=[], task="segmentation", input_size=(32, 32))
    for method in METHODS:
        if not DISTILLERS.get(method).supports_segmentation:
            with pytest.raises(ConfigError, match="is a classification method; for segmentation"):
                build_everything(digits_cfg(method), splits=seg, load_teacher_weights=False)


def test_two_view_trainer_names_need_a_two_view_method():
    """SOLVER.TRAINER aug/ours (the reference's two-view trainers) with a one-view method would be ignored: refused."""
    one_view = [m for m in METHODS if not DISTILLERS.get(m).two_views]
    two_view = [m for m in METHODS if DISTILLERS.get(m).two_views]
    with pytest.raises(ConfigError, match="SOLVER.TRAINER 'ours' feeds two views"):
        digits_cfg(one_view[0], ["SOLVER.TRAINER", "ours"])
    for method in two_view:
        assert digits_cfg(method, ["SOLVER.TRAINER", "ours"]).SOLVER.TRAINER == "ours"


def test_readme_methods_table_is_generated_from_the_registry():
    """The README's methods table is tools/method_table.py's output: a new method is listed by rerunning it."""
    from conftest import load_script

    root = Path(__file__).resolve().parents[1]
    module = load_script("tools/method_table.py", "method_table")
    readme = (root / "README.md").read_text(encoding="utf-8")
    block = readme.split(module.BEGIN)[1].split(module.END)[0]
    stale = "README methods table is stale: run python tools/method_table.py --write"
    assert block.strip() == module.table().strip(), stale
    for name in METHODS:
        cls = DISTILLERS.get(name)
        assert cls.paper, f"{name} has no `paper` (the README table's source)"
        assert cls.group in ("", *get_cfg().keys()), (name, cls.group)
