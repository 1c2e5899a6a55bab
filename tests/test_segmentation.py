"""Segmentation: mIoU from confusion matrices, per-pixel CE/KD, models, distillers, and a VOC run end to end."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
import torch.nn.functional as F
from conftest import REPO, load_script
from fixtures_data import write_voc

from kdlab.config import get_cfg, load_cfg
from kdlab.distillers import DISTILLERS, DatasetFacts, build_distiller
from kdlab.distillers.base import cross_entropy
from kdlab.distillers.losses import flatten_pixels, kd_loss, kd_loss_any, pixel_kd_loss, standardize
from kdlab.errors import CheckpointError, ConfigError
from kdlab.evaluation.metrics import confusion_matrix, correct_and_count, evaluate_segmentation, iou_from_confusion
from kdlab.models import build_model

VANILLA = os.path.join(REPO, "configs/voc/vanilla/seg_small.yaml")
KD_CONFIG = os.path.join(REPO, "configs/voc/kd/deeplabv3_resnet50_seg_small.yaml")

# 3 classes; one image of 2 x 4 pixels, 255 = ignore
TARGET = torch.tensor([[[0, 0, 1, 1], [2, 2, 255, 255]]])
PRED = torch.tensor([[[0, 1, 1, 1], [2, 0, 0, 2]]])
# rows true, columns predicted (ignored pixels left out): class 0: 0->0, 0->1; class 1: 1->1 twice; class 2: 2->2, 2->0
HAND_CM = [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
# IoU_c = TP / (row + column - TP): 1 / (2 + 2 - 1), 2 / (2 + 3 - 2), 1 / (2 + 1 - 1)
HAND_IOU = [1 / 3, 2 / 3, 1 / 2]


# ---------------------------------------------------------------- metrics
def test_confusion_matrix_and_iou_match_hand_computation():
    cm = confusion_matrix(PRED, TARGET, 3)
    assert cm.tolist() == HAND_CM
    miou, per_class = iou_from_confusion(cm)
    assert per_class.tolist() == pytest.approx(HAND_IOU)
    assert miou == pytest.approx(sum(HAND_IOU) / 3)


def test_absent_class_is_left_out_of_the_mean():
    cm = confusion_matrix(PRED, TARGET, 5)  # classes 3 and 4: never labelled, never predicted
    miou, per_class = iou_from_confusion(cm)
    assert math.isnan(per_class[3]) and math.isnan(per_class[4])
    assert miou == pytest.approx(sum(HAND_IOU) / 3)
    # a class predicted but never labelled counts, with IoU 0
    cm = confusion_matrix(torch.tensor([3, 0]), torch.tensor([0, 0]), 4)
    miou, per_class = iou_from_confusion(cm)
    assert per_class[3] == 0 and per_class[0] == 0.5 and miou == pytest.approx(0.25)


def _logits_for(pred: torch.Tensor, num_classes: int) -> torch.Tensor:
    return F.one_hot(pred, num_classes).movedim(-1, 1).float() * 5.0


def test_evaluate_segmentation_gives_miou_pixel_accuracy_and_loss():
    batches = [(torch.zeros(1, 3, 2, 4), TARGET, torch.tensor([i])) for i in range(2)]
    logits = _logits_for(PRED, 3)
    out = evaluate_segmentation(lambda x: logits.expand(x.shape[0], -1, -1, -1), batches, torch.device("cpu"), 3,
                                collect=True)
    assert out["test_acc"] == pytest.approx(100 * sum(HAND_IOU) / 3)
    assert out["test_pixel_acc"] == pytest.approx(100 * 4 / 6)
    labelled = TARGET != 255
    expected_loss = F.cross_entropy(logits, TARGET, ignore_index=255)
    assert out["test_loss"] == pytest.approx(expected_loss.item(), rel=1e-6)
    assert (out["num_samples"], out["num_pixels"]) == (2, 2 * int(labelled.sum()))
    assert out["confusion"].tolist() == [[2 * v for v in row] for row in HAND_CM]


def test_train_counts_are_pixels_for_segmentation_and_samples_for_classification():
    correct, count = correct_and_count(_logits_for(PRED, 3), TARGET)
    assert (correct.item(), count.item()) == (4, 6)
    correct, count = correct_and_count(torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0]]), torch.tensor([0, 0, 0]))
    assert (correct.item(), count.item()) == (2, 3)


# ---------------------------------------------------------------- losses
def test_cross_entropy_ignores_void_pixels_and_never_gives_nan():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 3, 5)
    target = torch.randint(0, 4, (2, 3, 5))
    target[0, 0] = 255
    expected = F.cross_entropy(logits, target, ignore_index=255)
    assert torch.allclose(cross_entropy(logits, target), expected)
    assert cross_entropy(logits, torch.full_like(target, 255)).item() == 0.0
    flat_logits, flat_target = torch.randn(6, 4), torch.randint(0, 4, (6,))  # classification unchanged
    assert torch.equal(cross_entropy(flat_logits, flat_target), F.cross_entropy(flat_logits, flat_target))


@pytest.mark.parametrize("logit_stand", [False, True])
def test_pixel_kd_is_kd_over_labelled_pixels(logit_stand):
    torch.manual_seed(1)
    s, t = torch.randn(2, 5, 3, 4) * 3, torch.randn(2, 5, 3, 4) * 3
    target = torch.randint(0, 5, (2, 3, 4))
    target[1, 2] = 255
    keep = target != 255
    rows_s = s.permute(0, 2, 3, 1)[keep]  # (labelled pixels, C)
    rows_t = t.permute(0, 2, 3, 1)[keep]
    assert torch.equal(flatten_pixels(s, target), rows_s)
    if logit_stand:  # each pixel's C logits are z-scored on their own
        rows_s, rows_t = standardize(rows_s), standardize(rows_t)
    log_p_s, p_t = F.log_softmax(rows_s / 2.0, 1), F.softmax(rows_t / 2.0, 1)
    expected = (p_t * (p_t.log() - log_p_s)).sum(1).mean() * 4.0
    got = pixel_kd_loss(s, t, target, 2.0, logit_stand)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    s2 = s.clone()
    s2[1, :, 2] += 100.0  # ignored pixels do not count
    assert pixel_kd_loss(s2, t, target, 2.0, logit_stand).item() == pytest.approx(got.item(), rel=1e-6)
    assert kd_loss_any(s, t, target, 2.0, logit_stand).item() == got.item()


def test_kd_loss_any_is_kd_loss_for_classification_and_zero_without_labels():
    s, t = torch.randn(4, 10), torch.randn(4, 10)
    assert torch.equal(kd_loss_any(s, t, torch.zeros(4, dtype=torch.long), 4.0), kd_loss(s, t, 4.0))
    s4 = torch.randn(1, 3, 2, 2, requires_grad=True)
    loss = pixel_kd_loss(s4, torch.randn(1, 3, 2, 2), torch.full((1, 2, 2), 255), 4.0)
    loss.backward()
    assert loss.item() == 0.0 and s4.grad is not None


# ---------------------------------------------------------------- models
@pytest.mark.parametrize(
    "name, channels",
    [
        ("seg_small", [16, 24, 32, 64, 96]),
        ("lraspp_mobilenet_v3_large", [16, 24, 40, 112, 960]),
        ("deeplabv3_mobilenet_v3_large", [16, 24, 40, 112, 960]),
        ("deeplabv3_resnet50", [64, 256, 512, 1024, 2048]),
        ("fcn_resnet50", [64, 256, 512, 1024, 2048]),
    ],
)
def test_segmentation_models_return_pixel_logits_and_features(name, channels):
    torch.manual_seed(0)
    model = build_model(name, num_classes=5).eval()
    with torch.no_grad():
        logits, feats = model(torch.randn(1, 3, 40, 48))
    assert logits.shape == (1, 5, 40, 48)
    assert [f.shape[1] for f in feats["feats"]] == channels
    assert feats["feats"][0].shape[-2:] == (20, 24) and feats["feats"][1].shape[-2:] == (10, 12)
    assert len(feats["preact_feats"]) == len(channels)
    assert torch.allclose(feats["pooled_feat"], feats["feats"][-1].mean((2, 3)), atol=1e-5)
    assert not any(k.startswith("aux_classifier") for k in model.state_dict())


def _torchvision_file(tmp_path, name: str, **kwargs) -> tuple[str, dict]:
    import torchvision

    torch.manual_seed(3)
    reference = torchvision.models.get_model(name, weights=None, weights_backbone=None, num_classes=21, **kwargs)
    path = str(tmp_path / f"{name}.pth")
    torch.save(reference.state_dict(), path)
    return path, reference.state_dict()


def test_pretrained_file_loads_drops_aux_head_and_replaces_classes(tmp_path):
    path, ref = _torchvision_file(tmp_path, "deeplabv3_mobilenet_v3_large", aux_loss=True)
    assert any(k.startswith("aux_classifier") for k in ref)
    same = build_model("deeplabv3_mobilenet_v3_large", 21, pretrained=path).state_dict()
    assert all(torch.equal(same[k], ref[k]) for k in same)
    other = build_model("deeplabv3_mobilenet_v3_large", 4, pretrained=path).state_dict()
    assert other["classifier.4.weight"].shape == (4, 256, 1, 1)
    assert torch.equal(other["backbone.3.block.0.0.weight"], ref["backbone.3.block.0.0.weight"])
    path, ref = _torchvision_file(tmp_path, "lraspp_mobilenet_v3_large")
    lraspp = build_model("lraspp_mobilenet_v3_large", 3, pretrained=path).state_dict()
    assert lraspp["classifier.low_classifier.weight"].shape[0] == 3
    assert lraspp["classifier.high_classifier.weight"].shape[0] == 3
    assert torch.equal(lraspp["classifier.cbr.0.weight"], ref["classifier.cbr.0.weight"])


def test_missing_torchvision_weights_name_the_file_to_download(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("KDLAB_OFFLINE", "1")  # offline: the error names the file instead of downloading
    with pytest.raises(CheckpointError) as exc:
        build_model("lraspp_mobilenet_v3_large", 21, pretrained="COCO_WITH_VOC_LABELS_V1")
    message = str(exc.value)
    assert "lraspp_mobilenet_v3_large-d234d4ea.pth" in message and str(tmp_path / "hub" / "checkpoints") in message
    assert "https://download.pytorch.org/models/lraspp_mobilenet_v3_large-d234d4ea.pth" in message


# ---------------------------------------------------------------- distillers
def _seg_cfg(method: str):
    cfg = get_cfg()
    cfg.DATASET.TYPE = "voc"
    cfg.DATASET.IMAGE_SIZE = 32
    cfg.DISTILLER.TYPE = method
    cfg.FEATKD.STUDENT_LAYERS = [2, 4]
    cfg.FEATKD.TEACHER_LAYERS = [2, 4]
    return cfg


def test_kd_distiller_uses_per_pixel_kd_and_ignore_aware_ce():
    torch.manual_seed(0)
    student, teacher = build_model("seg_small", 21), build_model("seg_small", 21, width=1.5)
    distiller = build_distiller(_seg_cfg("KD"), student, teacher).train()
    image = torch.randn(2, 3, 32, 32)
    target = torch.randint(0, 21, (2, 32, 32))
    target[:, :4] = 255
    logits, losses = distiller(image, target, epoch=1)
    assert logits.shape == (2, 21, 32, 32)
    s_logits = logits.detach()
    with torch.no_grad():
        t_logits = teacher(image)[0]
    expected_kd = 0.9 * pixel_kd_loss(s_logits, t_logits, target, 4.0)
    expected_ce = 0.1 * F.cross_entropy(s_logits, target, ignore_index=255)
    assert losses["loss_kd"].item() == pytest.approx(expected_kd.item(), rel=1e-5)
    assert losses["loss_ce"].item() == pytest.approx(expected_ce.item(), rel=1e-5)


def test_featkd_composes_ce_kd_and_feature_mse_on_segmentation():
    torch.manual_seed(0)
    student, teacher = build_model("seg_small", 21), build_model("lraspp_mobilenet_v3_large", 21)
    facts = DatasetFacts(num_classes=21, input_size=(32, 32), in_channels=3, task="segmentation")
    distiller = build_distiller(_seg_cfg("FEATKD"), student, teacher, facts=facts).train()
    target = torch.randint(0, 21, (2, 32, 32))
    logits, losses = distiller(torch.randn(2, 3, 32, 32), target, epoch=1)
    assert set(losses) == {"loss_ce", "loss_kd", "loss_feat"}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    sum(losses.values()).backward()
    assert student.classifier.weight.grad is not None
    assert all(p.grad is None for p in teacher.parameters())
    assert distiller.extra_parameter_count() > 0


@pytest.mark.parametrize("method", DISTILLERS.names())
def test_registry_flag_decides_segmentation(method, tmp_path):
    """supports_segmentation methods train on per-pixel logits; the others are refused for VOC, by name."""
    from kdlab.engine.builder import build_everything

    if not DISTILLERS.get(method).supports_segmentation:
        write_voc(tmp_path, n_train=2, n_val=1)
        cfg = load_cfg(VANILLA, ["DATASET.ROOT", str(tmp_path), "DISTILLER.TYPE", method])
        with pytest.raises(ConfigError, match=f"{method}.*segmentation"):
            build_everything(cfg, load_teacher_weights=False)
        return
    torch.manual_seed(0)
    needs_teacher = getattr(DISTILLERS.get(method), "needs_teacher", True)
    teacher = build_model("seg_small", 21, width=1.5) if needs_teacher else None
    facts = DatasetFacts(num_classes=21, input_size=(32, 32), in_channels=3, task="segmentation")
    distiller = build_distiller(_seg_cfg(method), build_model("seg_small", 21), teacher, facts=facts).train()
    target = torch.randint(0, 21, (2, 32, 32))
    target[:, :4] = 255
    logits, losses = distiller(torch.randn(2, 3, 32, 32), target, epoch=1)
    assert logits.shape == (2, 21, 32, 32) and "loss_ce" in losses
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())


# ---------------------------------------------------------------- end to end
def _opts(root, prefix, **extra):
    opts = ["DATASET.ROOT", str(root), "DATASET.IMAGE_SIZE", "32", "SOLVER.BATCH_SIZE", "4",
            "DATASET.TEST.BATCH_SIZE", "4", "DATASET.NUM_WORKERS", "0", "LOG.PREFIX", str(prefix),
            "SOLVER.EPOCHS", "1", "SOLVER.DEVICE", "cpu", "LOG.PROGRESS", "False", "SOLVER.AMP", "False"]
    for k, v in extra.items():
        opts += [k, str(v)]
    return opts


def _eval_tool():
    return load_script("tools/eval.py", "kdlab_eval_tool")


@pytest.fixture(scope="module")
def voc_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("voc_e2e")
    write_voc(root / "data", n_train=6, n_val=4)
    from kdlab.engine.run import train

    opts = _opts(root / "data", root / "logs")
    summary = train(load_cfg(VANILLA, opts))
    return root, opts, summary


def test_vanilla_voc_epoch_reports_miou_and_pixel_accuracy(voc_run):
    root, opts, summary = voc_run
    assert summary["task"] == "segmentation" and summary["last_epoch"] == 1
    record = summary["history"][0]
    assert {"train_acc", "test_acc", "test_pixel_acc", "test_loss"} <= set(record)
    assert 0.0 <= record["test_acc"] <= 100.0 and 0.0 <= record["train_acc"] <= 100.0
    assert math.isfinite(record["train_loss"]) and math.isfinite(record["test_loss"])
    metrics = json.load(open(os.path.join(summary["run_dir"], "metrics.json")))
    assert metrics["best_acc"] == record["test_acc"]


def test_eval_tool_json_gives_miou_equal_to_a_direct_recount(voc_run, capsys):
    root, opts, summary = voc_run
    ckpt = os.path.join(summary["run_dir"], "student_best")
    assert _eval_tool().main(["--cfg", VANILLA, "--ckpt", ckpt, "--json", *opts]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["task"] == "segmentation" and report["num_samples"] == 4
    assert set(report["per_class_iou"]) == set(report["class_names"]) and len(report["class_names"]) == 21
    assert report["miou"] == pytest.approx(summary["history"][0]["test_acc"], abs=1e-9)
    # recount: the checkpoint's predictions on the val items against their masks
    from kdlab.data import build_datasets
    from kdlab.models import load_weights

    cfg = load_cfg(VANILLA, opts)
    model = load_weights(build_model("seg_small", 21), ckpt).eval()
    cm = torch.zeros(21, 21, dtype=torch.int64)
    for image, mask, _ in build_datasets(cfg).val:
        with torch.no_grad():
            pred = model(image[None])[0].argmax(1)[0]
        keep = mask != 255
        cm += torch.bincount(mask[keep] * 21 + pred[keep], minlength=441).view(21, 21)
    tp, union = cm.diag().double(), (cm.sum(0) + cm.sum(1) - cm.diag()).double()
    iou = tp[union > 0] / union[union > 0]
    assert report["miou"] == pytest.approx(100 * iou.mean().item(), abs=1e-9)
    assert report["pixel_acc"] == pytest.approx(100 * tp.sum().item() / cm.sum().item(), abs=1e-9)
    assert _eval_tool().main(["--cfg", VANILLA, "--ckpt", ckpt, *opts]) == 0
    text = capsys.readouterr().out
    assert "mIoU:" in text and "pixel accuracy:" in text and "tvmonitor" in text


def test_featkd_voc_config_trains_from_a_vanilla_teacher(voc_run):
    root, opts, summary = voc_run
    from kdlab.engine.run import train

    teacher = os.path.join(summary["run_dir"], "student_best")
    cfg = load_cfg(KD_CONFIG, [*opts, "DISTILLER.TEACHER", "seg_small", "DISTILLER.TEACHER_PRETRAINED", "",
                               "DISTILLER.TEACHER_CKPT", teacher])
    kd = train(cfg)
    assert kd["method"] == "FEATKD" and kd["task"] == "segmentation" and kd["extra_params"] > 0
    assert math.isfinite(kd["history"][0]["train_loss"]) and 0.0 <= kd["last_acc"] <= 100.0
