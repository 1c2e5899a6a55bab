"""Two-stage training pieces: SUPCON saves its projection head with the student, CONKD.KD_ON embeddings
distils the teacher's head, a classifier-only stage on a frozen backbone (CLASSIFIER keys) changes nothing
but the classifier, and SOLVER.SELECT_METRIC test_loss picks the best checkpoint and stops early on the
held-out loss. Digits (bundled) with the digits models, a few steps each.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from conftest import REPO, digits_opts

from kdlab.config import load_cfg
from kdlab.distillers import DatasetFacts, build_distiller
from kdlab.distillers.losses import kd_loss, supcon_loss
from kdlab.engine import trainer as trainer_mod
from kdlab.engine.builder import evaluate_checkpoint
from kdlab.engine.run import train
from kdlab.errors import ConfigError
from kdlab.models import build_model
from kdlab.models.heads import configure_classifier

DIGITS = os.path.join(REPO, "configs", "digits")
SUPCON_CFG = os.path.join(DIGITS, "supcon", "digits_student.yaml")
CONKD_CFG = os.path.join(DIGITS, "conkd", "digits_teacher_digits_student.yaml")
VANILLA_CFG = os.path.join(DIGITS, "vanilla", "digits_teacher.yaml")
SHORT = {"SOLVER.MAX_STEPS_PER_EPOCH": 2, "SOLVER.AMP": False, "DATASET.NUM_WORKERS": 0}
FACTS = DatasetFacts(num_classes=10, input_size=(8, 8), in_channels=1)


def _student_file(run_dir: str, name: str = "student_best") -> dict:
    return torch.load(os.path.join(run_dir, name), map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def supcon_run(tmp_path_factory) -> str:
    """A SUPCON run of the digits teacher (2 epochs of 2 steps): the teacher stage 1 of the two-stage recipe."""
    prefix = str(tmp_path_factory.mktemp("supcon"))
    cfg = load_cfg(SUPCON_CFG, digits_opts(prefix, epochs=2, **SHORT, **{"DISTILLER.STUDENT": "digits_teacher"}))
    return train(cfg)["run_dir"]


def test_supcon_saves_its_head_and_selects_on_the_held_out_supcon_loss(supcon_run):
    saved = _student_file(supcon_run)
    assert sorted(saved["extra"]) == ["head.0.bias", "head.0.weight", "head.2.bias", "head.2.weight"]
    assert saved["extra"]["head.2.weight"].shape == (32, 128)  # CONKD.PROJ_DIM 32 on the 128-d pooled feature
    import json

    metrics = json.load(open(os.path.join(supcon_run, "metrics.json")))
    losses = [h["test_loss"] for h in metrics["history"]]
    assert metrics["select_metric"] == "test_loss" and metrics["best_score"] == min(losses)
    assert metrics["best_epoch"] == 1 + losses.index(min(losses))
    # the held-out loss is the SupCon objective, not the CE of the untrained classifier (about ln 10 = 2.3)
    assert all(abs(v - 2.303) > 0.3 for v in losses), losses


def _conkd_embeddings(teacher_ckpt: str, *opts: str):
    cfg = load_cfg(CONKD_CFG, ["CONKD.KD_ON", "embeddings", "DISTILLER.TEACHER_CKPT", teacher_ckpt, *opts])
    torch.manual_seed(0)
    teacher = build_model("digits_teacher", 10, in_channels=1)
    return build_distiller(cfg, build_model("digits_student", 10, in_channels=1), teacher, facts=FACTS)


def test_conkd_embeddings_distils_the_teachers_saved_head(supcon_run):
    distiller = _conkd_embeddings(os.path.join(supcon_run, "student_best"), "CONKD.CE_WEIGHT", "0")
    saved = _student_file(supcon_run)["extra"]
    head = distiller.teacher.kdlab_proj_head
    assert torch.equal(head[0].weight, saved["head.0.weight"]) and torch.equal(head[2].bias, saved["head.2.bias"])
    assert not any(p.requires_grad for p in head.parameters()) and not head.training
    assert distiller.held_out_objective
    assert all(id(p) not in {id(q) for q in head.parameters()} for p in distiller.learnable_parameters())
    torch.manual_seed(1)
    image, target = torch.randn(6, 1, 8, 8), torch.tensor([0, 1, 2, 0, 1, 2])
    distiller.train()
    _, losses = distiller(image, target)
    with torch.no_grad():
        t = F.normalize(head(distiller.teacher(image)[1]["pooled_feat"]), dim=1)
        s = F.normalize(distiller.head(distiller.student(image)[1]["pooled_feat"]), dim=1)
    assert torch.allclose(losses["loss_kd"], 9.0 * kd_loss(s, t, 2.0, logit_stand=True), rtol=1e-5)
    assert torch.allclose(losses["loss_supcon"], 0.1 * supcon_loss(s, target, 0.1), rtol=1e-5)
    assert losses["loss_ce"].item() == 0.0
    logits_kd = _conkd_embeddings(os.path.join(supcon_run, "student_best"), "CONKD.KD_ON", "logits")
    assert not hasattr(logits_kd.teacher, "kdlab_proj_head") and not logits_kd.held_out_objective


def test_conkd_embeddings_without_a_teacher_head_is_a_clear_error(tmp_path, supcon_run):
    plain = tmp_path / "plain.pth"
    saved = _student_file(supcon_run)
    torch.save({"format": "kdlab-student", "model": saved["model"], "extra": {}}, plain)
    with pytest.raises(ConfigError, match=r"holds no projection head .*DISTILLER\.TYPE SUPCON"):
        _conkd_embeddings(str(plain))
    with pytest.raises(ConfigError, match="needs DISTILLER.TEACHER_CKPT"):
        _conkd_embeddings("")
    # the full training checkpoint of the SUPCON run carries the head too
    assert _conkd_embeddings(os.path.join(supcon_run, "best")).teacher.kdlab_proj_head is not None


def test_classifier_stage_changes_only_the_classifier(tmp_path, supcon_run):
    """CLASSIFIER.FREEZE_BACKBONE: backbone weights and BatchNorm statistics bit-identical after training."""
    start = os.path.join(supcon_run, "student_best")
    opts = {**SHORT, "SOLVER.MAX_STEPS_PER_EPOCH": 3, "DISTILLER.STUDENT_PRETRAINED": start,
            "CLASSIFIER.HIDDEN": "[16]", "CLASSIFIER.BATCHNORM": "True", "CLASSIFIER.DROPOUT": "0.4",
            "CLASSIFIER.FREEZE_BACKBONE": "True"}
    summary = train(load_cfg(VANILLA_CFG, digits_opts(str(tmp_path), epochs=2, **opts)))
    before, after = _student_file(supcon_run)["model"], _student_file(summary["run_dir"], "student_latest")["model"]
    backbone = [k for k in before if not k.startswith("fc.")]
    assert any("running_mean" in k for k in backbone) and any("num_batches_tracked" in k for k in backbone)
    assert all(torch.equal(before[k], after[k]) for k in backbone)
    head = sorted(k for k in after if k.startswith("fc."))
    assert head == sorted(["fc.0.weight", "fc.0.bias", "fc.1.weight", "fc.1.bias", "fc.1.running_mean",
                           "fc.1.running_var", "fc.1.num_batches_tracked", "fc.4.weight", "fc.4.bias"])
    assert after["fc.1.num_batches_tracked"].item() == 6  # the head's own BatchNorm trains: 2 epochs x 3 steps
    # mdistiller's eval form (-m MODEL -c CKPT, no config) rebuilds the saved MLP head, from either file
    assert _student_file(summary["run_dir"])["classifier"] == {"HIDDEN": [16], "BATCHNORM": True, "DROPOUT": 0.4}
    for name in ("student_latest", "latest"):
        report = evaluate_checkpoint(load_cfg(None, ["DISTILLER.STUDENT", "digits_teacher", "DATASET.TYPE", "digits"]),
                                     os.path.join(summary["run_dir"], name))
        assert report["top1"] == pytest.approx(summary["last_acc"])
    cfg = load_cfg(VANILLA_CFG, ["CLASSIFIER.HIDDEN", "[16]", "CLASSIFIER.FREEZE_BACKBONE", "True"])
    model = configure_classifier(build_model("digits_teacher", 10, in_channels=1), cfg.CLASSIFIER, 10)
    assert [type(m).__name__ for m in model.fc] == ["Linear", "ReLU", "Linear"]
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 128 * 16 + 16 + 16 * 10 + 10


def test_a_frozen_backbone_stays_in_eval_mode_on_torchvision_models():
    cfg = load_cfg(None, ["CLASSIFIER.HIDDEN", "[8]", "CLASSIFIER.BATCHNORM", "True",
                          "CLASSIFIER.FREEZE_BACKBONE", "True", "DISTILLER.STUDENT", "resnet18"])
    model = configure_classifier(build_model("resnet18", 10), cfg.CLASSIFIER, 10)
    distiller = build_distiller(load_cfg(None, ["DISTILLER.TYPE", "NONE"]), model, None, facts=FACTS).train()
    assert not model.layer1[0].bn1.training and model.fc.training and model.fc[1].training
    logits, feats = model(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 10) and feats["pooled_feat"].shape == (2, 512)  # the hook moved to the new head
    assert len(distiller.learnable_parameters()) == 6  # Linear, BatchNorm1d, Linear: weight and bias each


def test_classifier_keys_are_checked_at_load_time():
    with pytest.raises(ConfigError, match=r"CLASSIFIER\.BATCHNORM True acts after a hidden layer"):
        load_cfg(None, ["CLASSIFIER.BATCHNORM", "True"])
    with pytest.raises(ConfigError, match=r"CLASSIFIER\.HIDDEN must be a list of positive widths"):
        load_cfg(None, ["CLASSIFIER.HIDDEN", "[0]"])
    with pytest.raises(ConfigError, match=r"SOLVER\.SELECT_METRIC: unknown name 'val_loss'"):
        load_cfg(None, ["SOLVER.SELECT_METRIC", "val_loss"])


@pytest.mark.parametrize("metric, last_epoch, best_epoch", [("test_loss", 4, 2), ("test_acc", 6, 6)])
def test_early_stopping_follows_the_chosen_metric(tmp_path, monkeypatch, metric, last_epoch, best_epoch):
    """The held-out loss is lowest at epoch 2 while the accuracy keeps rising: patience 2 stops after epoch 4."""
    losses = iter([1.0, 0.5, 0.6, 0.55, 0.4, 0.3])
    epochs = iter(range(1, 7))

    def scripted(self, test=False):
        return {"test_loss": next(losses), "test_acc": 10.0 * next(epochs), "test_acc_top5": 100.0}

    monkeypatch.setattr(trainer_mod.Trainer, "evaluate", scripted)
    opts = {**SHORT, "SOLVER.MAX_STEPS_PER_EPOCH": 1, "SOLVER.EARLY_STOP_PATIENCE": 2, "SOLVER.SELECT_METRIC": metric}
    summary = train(load_cfg(VANILLA_CFG, digits_opts(str(tmp_path), epochs=6, **opts)))
    assert (summary["last_epoch"], summary["best_epoch"]) == (last_epoch, best_epoch)
    assert _student_file(summary["run_dir"])["epoch"] == best_epoch
    assert summary["best_score"] == (0.5 if metric == "test_loss" else 60.0)
    assert summary["best_acc"] == 10.0 * best_epoch  # the accuracy of the selected epoch
