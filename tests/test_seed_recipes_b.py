"""Seed recipes: Elec475 VOC (EYErbil/Knowledge-Distillation) and cifar10_distillation (danieldutu).

Each config's resolved values are checked against the seed's code (models' parameter counts, optimizer,
LR, batch, epochs, loss weights, augmentations), and each config trains one epoch from tools/train.py on
tiny data in the real dataset layout.
"""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
from conftest import REPO, load_script
from fixtures_data import write_voc
from torchvision.transforms import v2

from kdlab.config import load_cfg
from kdlab.data.config_transforms import build_transforms
from kdlab.models import build_model

ELEC = os.path.join(REPO, "configs/voc/elec475")
ELEC_CONFIGS = {name: os.path.join(ELEC, f"{name}.yaml") for name in ("scratch", "response", "feature")}
# model.py LightweightResNet(num_classes=21): sum(p.numel()) = 14,652,181, of which align_layers (the
# feature-KD 1x1 convs 24->256, 32->512, 1280->1024) 1,335,040: kdlab holds those in FEATKD's connectors.
ELEC_STUDENT_PARAMS = 14_652_181 - 1_335_040
ELEC_ALIGN_PARAMS = 1_335_040
FCN_RESNET50_PARAMS = 32_957_013  # fcn_resnet50(num_classes=21) without the aux head the seed never reads
KD_AUGMENT = [  # train_kd.py get_dataloaders transform_image, after Resize((256, 256))
    ("ColorJitter", {"brightness": (0.8, 1.2), "contrast": (0.8, 1.2), "saturation": (0.8, 1.2), "hue": (-0.1, 0.1)}),
    ("RandomGrayscale", {"p": 0.2}),
    ("RandomApply", {"p": 0.3}),
    ("RandomAdjustSharpness", {"sharpness_factor": 2, "p": 0.3}),
    ("RandomAutocontrast", {"p": 0.3}),
]


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _within(count: int, target: int, rel: float = 0.05) -> bool:
    return abs(count - target) <= rel * target


def _train_tool():
    return load_script("tools/train.py", "kdlab_train_tool")


def _metrics(prefix: str) -> dict:
    found = [os.path.join(d, "metrics.json") for d, _, files in os.walk(prefix) if "metrics.json" in files]
    assert len(found) == 1, found
    return json.load(open(found[0]))


def _cli_opts(root, prefix, image_size: int, batch: int) -> list[str]:
    return ["DATASET.ROOT", str(root), "DATASET.IMAGE_SIZE", str(image_size), "SOLVER.BATCH_SIZE", str(batch),
            "DATASET.TEST.BATCH_SIZE", str(batch), "DATASET.NUM_WORKERS", "0", "LOG.PREFIX", str(prefix),
            "SOLVER.EPOCHS", "1", "SOLVER.DEVICE", "cpu", "LOG.PROGRESS", "False", "SOLVER.AMP", "False"]


# ---------------------------------------------------------------- Elec475 VOC
def test_elec475_student_is_the_seed_light_model():
    student = build_model("elec475_light", 21)
    assert _params(student) == ELEC_STUDENT_PARAMS
    assert _within(_params(student), ELEC_STUDENT_PARAMS)
    drops = sorted(m.p for m in student.modules() if isinstance(m, torch.nn.Dropout))
    assert drops == [0.1, 0.5]  # model.py decoder: Dropout(0.5), Dropout(0.1)
    student.eval()
    logits, feats = student(torch.zeros(2, 3, 64, 64))
    assert logits.shape == (2, 21, 64, 64)
    # model.py forward: features = [x1 (/4, 24 ch), x2 (/8, 32 ch), x3 (/32, 1280 ch)] behind the stem
    assert [tuple(f.shape[1:]) for f in feats["feats"]] == [(32, 32, 32), (24, 16, 16), (32, 8, 8), (1280, 2, 2)]
    assert feats["pooled_feat"].shape == (2, 1280)


def test_elec475_configs_match_the_seed():
    cfgs = {name: load_cfg(path) for name, path in ELEC_CONFIGS.items()}
    for cfg in cfgs.values():
        s = cfg.SOLVER
        assert cfg.DISTILLER.STUDENT == "elec475_light" and cfg.DATASET.TYPE == "voc"
        assert (s.BATCH_SIZE, s.EPOCHS, s.LR, s.WEIGHT_DECAY) == (64, 500, 1e-3, 1e-4)
        assert (s.SCHEDULER, s.PLATEAU_PATIENCE, s.PLATEAU_FACTOR, s.EARLY_STOP_PATIENCE) == ("plateau", 10, 0.5, 30)
        assert cfg.DATASET.IMAGE_SIZE == 256 and cfg.DATASET.VAL_SPLIT == 0.0  # the seed selects on VOC val
        assert cfg.DATASET.TEST_TRANSFORMS == [{"Resize": {"size": [256, 256]}}]
        assert cfg.DATASET.TRAIN_TRANSFORMS[0] == {"Resize": {"size": [256, 256]}}
    # train.py: Adam; plateau, EarlyStopping and {model}_best.pth on the val loss; train_kd.py: AdamW; plateau,
    # EarlyStopping and {kd_method}_kd_best.pth on the val mIoU (test_acc for segmentation)
    scratch = cfgs["scratch"].SOLVER
    assert (scratch.TYPE, scratch.PLATEAU_METRIC, scratch.SELECT_METRIC) == ("Adam", "test_loss", "test_loss")
    for name in ("response", "feature"):
        cfg = cfgs[name]
        s = cfg.SOLVER
        assert (s.TYPE, s.PLATEAU_METRIC, s.SELECT_METRIC) == ("AdamW", "test_acc", "test_acc")
        assert cfg.DISTILLER.TEACHER == "fcn_resnet50" and cfg.DISTILLER.TEACHER_PRETRAINED == "COCO_WITH_VOC_LABELS_V1"
    # train_kd.py response: 0.3 * KL(batchmean) * T^2 + 0.7 * CE, T = 4
    kd = cfgs["response"].KD
    assert (kd.TEMPERATURE, kd.LOSS.KD_WEIGHT, kd.LOSS.CE_WEIGHT, kd.PIXELS) == (4.0, 0.3, 0.7, "all")
    # train_kd.py feature (alpha 0.5): 0.5 * sum of three cosine pairs + 0.5 * CE, no logit KD
    fk = cfgs["feature"].FEATKD
    assert (fk.CE_WEIGHT, fk.ALPHA, fk.BETA, fk.CONNECTOR) == (0.5, 0.0, 0.5, "conv")
    assert list(fk.PAIR_WEIGHTS) == [1.0, 1.0, 1.0] and list(fk.PAIR_LOSSES) == ["cosine"]
    assert list(fk.STUDENT_LAYERS) == [1, 2, 3] and list(fk.TEACHER_LAYERS) == [1, 2, 3]


def _transform_args(t: v2.Transform) -> tuple[str, dict]:
    name = type(t).__name__
    keys = {"ColorJitter": ("brightness", "contrast", "saturation", "hue"), "RandomGrayscale": ("p",),
            "RandomApply": ("p",), "RandomAdjustSharpness": ("sharpness_factor", "p"), "RandomAutocontrast": ("p",)}
    return name, {k: (tuple(getattr(t, k)) if isinstance(getattr(t, k), (list, tuple)) else getattr(t, k))
                  for k in keys.get(name, ())}


def test_elec475_augmentations_are_the_seed_ones():
    scratch = build_transforms("T", load_cfg(ELEC_CONFIGS["scratch"]).DATASET.TRAIN_TRANSFORMS)
    assert [type(t).__name__ for t in scratch] == ["Resize", "ColorJitter"]
    assert scratch[1].hue is None and tuple(scratch[1].brightness) == pytest.approx((0.8, 1.2))  # train.py: no hue
    for name in ("response", "feature"):
        built = build_transforms("T", load_cfg(ELEC_CONFIGS[name]).DATASET.TRAIN_TRANSFORMS)
        got = [_transform_args(t) for t in built[1:]]
        assert [g[0] for g in got] == [k[0] for k in KD_AUGMENT]
        for (gname, gargs), (_, want) in zip(got, KD_AUGMENT):
            for key, value in want.items():
                assert gargs[key] == pytest.approx(value), (gname, key)
        blur = built[3].transforms[0]
        assert isinstance(blur, v2.GaussianBlur) and list(blur.kernel_size) == [5, 5]


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("elec475")
    write_voc(root / "data", n_train=6, n_val=4)
    teacher = build_model("fcn_resnet50", 21)
    assert _params(teacher) == FCN_RESNET50_PARAMS
    torch.save(teacher.state_dict(), root / "fcn_resnet50.pth")
    return root


@pytest.mark.parametrize("name", ["scratch", "response", "feature"])
def test_elec475_config_trains_one_epoch_from_the_cli(voc_root, name, tmp_path):
    small = "[{'Resize': {'size': [64, 64]}}]"
    opts = [*_cli_opts(voc_root / "data", tmp_path, 64, 3), "DATASET.TEST_TRANSFORMS", small,
            "FEATKD.INPUT_SIZE", "[64, 64]"]
    if name != "scratch":
        opts += ["DISTILLER.TEACHER_PRETRAINED", "", "DISTILLER.TEACHER_CKPT", str(voc_root / "fcn_resnet50.pth")]
    assert _train_tool().main(["--cfg", ELEC_CONFIGS[name], *opts]) == 0
    metrics = _metrics(str(tmp_path))
    record = metrics["history"][0]
    assert metrics["last_epoch"] == 1 and metrics["task"] == "segmentation"
    assert math.isfinite(record["train_loss"]) and 0.0 <= record["test_acc"] <= 100.0
    assert metrics["student_params"] == ELEC_STUDENT_PARAMS
    assert metrics["method"] == {"scratch": "NONE", "response": "KD", "feature": "FEATKD"}[name]
    # the seed's train.py selects and stops on the val loss, train_kd.py on the val mIoU
    assert metrics["select_metric"] == ("test_loss" if name == "scratch" else "test_acc")
    assert metrics["best_score"] == record["test_loss" if name == "scratch" else "test_acc"]
    if name == "feature":  # the seed's align layers (1x1 conv + bias), as FEATKD's connectors
        assert metrics["extra_params"] == ELEC_ALIGN_PARAMS


def test_random_apply_entry_builds_its_inner_transforms_and_refuses_bad_forms():
    from kdlab.errors import ConfigError

    entry = {"RandomApply": {"transforms": [{"GaussianBlur": {"kernel_size": 5}}], "p": 0.3}}
    (built,) = build_transforms("K", [entry])
    assert isinstance(built, v2.RandomApply) and built.p == 0.3 and isinstance(built.transforms[0], v2.GaussianBlur)
    with pytest.raises(ConfigError, match=r"K\[0\]: RandomApply takes"):
        build_transforms("K", [{"RandomApply": {"p": 0.3}}])
    with pytest.raises(ConfigError, match=r"K\[0\]: unknown transform 'GausianBlur'"):
        build_transforms("K", [{"RandomApply": {"transforms": ["GausianBlur"]}}])


def _seed_kd(student_logits, teacher_logits, t: float) -> torch.Tensor:
    """The seeds' KLDivLoss(batchmean)(log_softmax(s / T), softmax(t / T)) * T^2 (both seeds write this)."""
    log_p = torch.nn.functional.log_softmax(student_logits / t, dim=1)
    q = torch.nn.functional.softmax(teacher_logits / t, dim=1)
    return torch.nn.functional.kl_div(log_p, q, reduction="batchmean") * t**2


def test_elec475_losses_are_the_seed_formulas():
    from kdlab.distillers import DatasetFacts, build_distiller

    facts = DatasetFacts(num_classes=21, input_size=(64, 64), in_channels=3, task="segmentation")
    torch.manual_seed(0)
    student, teacher = build_model("elec475_light", 21, dropout=(0.0, 0.0)), build_model("fcn_resnet50", 21)
    x, target = torch.randn(2, 3, 64, 64), torch.randint(0, 21, (2, 64, 64))
    target[:, :4] = 255
    cfg = load_cfg(ELEC_CONFIGS["response"], ["FEATKD.INPUT_SIZE", "[64, 64]"])
    distiller = build_distiller(cfg, student, teacher, facts=facts).train()
    _, losses = distiller(x, target, epoch=1)
    s_logits = student(x)[0]
    with torch.no_grad():
        t_logits, t_feats = teacher.eval()(x)
    ce = torch.nn.functional.cross_entropy(s_logits, target, ignore_index=255)
    seed = 0.3 * _seed_kd(s_logits, t_logits, 4.0) + 0.7 * ce  # train_kd.py, kd_method response
    assert sum(losses.values()).item() == pytest.approx(seed.item(), rel=1e-4)

    cfg = load_cfg(ELEC_CONFIGS["feature"], ["FEATKD.INPUT_SIZE", "[64, 64]"])
    distiller = build_distiller(cfg, student, teacher, facts=facts).train()
    _, losses = distiller(x, target, epoch=1)
    s_logits, s_feats = student(x)
    hidden = 0.0
    for conn, tf, sf in zip(distiller.connectors, t_feats["feats"][1:4], s_feats["feats"][1:4]):
        aligned = conn.conv(torch.nn.functional.interpolate(sf, size=tf.shape[2:], mode="bilinear"))
        hidden = hidden + (1 - torch.nn.functional.cosine_similarity(aligned, tf, dim=1)).mean()
    seed = 0.5 * hidden + 0.5 * torch.nn.functional.cross_entropy(s_logits, target, ignore_index=255)
    assert sum(losses.values()).item() == pytest.approx(seed.item(), rel=1e-4)


# ---------------------------------------------------------------- cifar10_distillation
CD = os.path.join(REPO, "configs/cifar10/cifar10_distillation")
CD_CONFIGS = {name: os.path.join(CD, f"{name}.yaml") for name in ("teacher", "standard", "logits", "feature")}
# distilation.ipynb output: "Teacher model created with 2,168,362 parameters", "Student ... 1,070,874"
CD_TEACHER_PARAMS, CD_STUDENT_PARAMS = 2_168_362, 1_070_874
CD_EPOCHS = {"teacher": 25, "standard": 15, "logits": 15, "feature": 10}  # TEACHER/STUDENT/FEATURE_EPOCHS


def test_cifar10_cnn_scales_give_the_seed_parameter_counts():
    teacher, student = build_model("cifar10_cnn", 10, scale=32), build_model("cifar10_cnn", 10, scale=16)
    assert (_params(teacher), _params(student)) == (CD_TEACHER_PARAMS, CD_STUDENT_PARAMS)
    assert _within(_params(student), 1_100_000)  # README.md: student "~1.1M"
    logits, feats = student.eval()(torch.zeros(2, 3, 32, 32))
    assert logits.shape == (2, 10) and feats["pooled_feat"].shape == (2, 512)  # get_features: ELU(fc1)


def test_cifar10_distillation_configs_match_the_seed():
    from kdlab.engine.builder import model_kwargs

    class _Splits:
        in_channels = 3

    for name, path in CD_CONFIGS.items():
        cfg = load_cfg(path)
        s = cfg.SOLVER
        assert cfg.DATASET.TYPE == "cifar10" and cfg.DATASET.TRAIN_TRANSFORMS == []  # RandomCrop(32, 4) + flip
        assert (s.TYPE, s.LR, s.WEIGHT_DECAY, s.BATCH_SIZE, s.SCHEDULER) == ("Adam", 1e-3, 0.0, 128, "cosine")
        assert s.EPOCHS == CD_EPOCHS[name] and s.WARMUP_EPOCHS == 0 and s.MIN_LR == 0.0
        assert cfg.DISTILLER.STUDENT == "cifar10_cnn"
        student = build_model("cifar10_cnn", 10, **model_kwargs(cfg, _Splits()))
        want = CD_TEACHER_PARAMS if name == "teacher" else CD_STUDENT_PARAMS
        assert _params(student) == want and student.dropout.p == 0.5
        if name in ("logits", "feature"):
            teacher = build_model("cifar10_cnn", 10, **model_kwargs(cfg, _Splits(), teacher=True))
            assert _params(teacher) == CD_TEACHER_PARAMS
    kd = load_cfg(CD_CONFIGS["logits"]).KD  # DistillationLoss(alpha=0.5, temperature=3)
    assert (kd.LOSS.CE_WEIGHT, kd.LOSS.KD_WEIGHT, kd.TEMPERATURE) == (0.5, 0.5, 3.0)
    fk = load_cfg(CD_CONFIGS["feature"]).FEATKD  # FeatureDistillationLoss(alpha=0.5, beta=0.4, temperature=3)
    assert (fk.CE_WEIGHT, fk.ALPHA, fk.BETA, fk.TEMPERATURE) == (0.5, 0.1, 0.4, 3.0)
    assert list(fk.STUDENT_LAYERS) == ["pooled_feat"] == list(fk.TEACHER_LAYERS) and list(fk.PAIR_LOSSES) == ["mse"]


def test_cifar10_distillation_losses_are_the_seed_formulas():
    from kdlab.distillers import DatasetFacts, build_distiller

    facts = DatasetFacts(num_classes=10, input_size=(32, 32), in_channels=3, task="classification")
    torch.manual_seed(0)
    student = build_model("cifar10_cnn", 10, scale=16, dropout=0.0)
    teacher = build_model("cifar10_cnn", 10, scale=32).eval()
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    s_logits, s_feats = student(x)
    with torch.no_grad():
        t_logits, t_feats = teacher(x)
    ce = torch.nn.functional.cross_entropy(s_logits, y)
    soft = _seed_kd(s_logits, t_logits, 3.0)
    mse = torch.nn.functional.mse_loss(s_feats["pooled_feat"], t_feats["pooled_feat"])
    expected = {"logits": 0.5 * ce + 0.5 * soft, "feature": 0.5 * ce + 0.1 * soft + 0.4 * mse}
    for name, want in expected.items():
        distiller = build_distiller(load_cfg(CD_CONFIGS[name]), student, teacher, facts=facts).train()
        _, losses = distiller(x, y, epoch=1)
        assert sum(losses.values()).item() == pytest.approx(want.item(), rel=1e-5), name


@pytest.fixture(scope="module")
def cd_runs(tmp_path_factory):
    from fixtures_data import write_cifar

    root = tmp_path_factory.mktemp("cifar10_distillation")
    write_cifar(root / "data", kind="cifar10", n_train=20, n_test=10)
    prefix = root / "logs"
    opts = _cli_opts(root / "data", prefix, 32, 8)
    tool = _train_tool()
    assert tool.main(["--cfg", CD_CONFIGS["teacher"], *opts]) == 0
    ckpt = os.path.join(prefix, "cifar10_distillation", "teacher", "student_best")
    for name in ("standard", "logits", "feature"):
        assert tool.main(["--cfg", CD_CONFIGS[name], *opts, "DISTILLER.TEACHER_CKPT", ckpt]) == 0
    return root


def test_cifar10_distillation_configs_train_one_epoch_from_the_cli(cd_runs):
    for name in CD_CONFIGS:
        metrics = json.load(open(os.path.join(cd_runs, "logs", "cifar10_distillation", name, "metrics.json")))
        assert metrics["last_epoch"] == 1 and math.isfinite(metrics["history"][0]["train_loss"])
        assert metrics["student_params"] == (CD_TEACHER_PARAMS if name == "teacher" else CD_STUDENT_PARAMS)
        assert metrics["method"] == {"teacher": "NONE", "standard": "NONE", "logits": "KD", "feature": "FEATKD"}[name]
        assert metrics["extra_params"] == 0  # 512 -> 512: no connector, as the seed


def test_report_draws_the_seed_figures_with_one_row_per_scale(cd_runs):
    tool = load_script("tools/report.py", "kdlab_report_tool")
    out = cd_runs / "reports"
    assert tool.main([str(cd_runs / "logs"), "--out", str(out), "--curves", "dataset"]) == 0
    # accuracy_comparison.png -> compare_cifar10.png; distillation_comparison.png (every run) -> curves_cifar10.png
    assert sorted(os.listdir(out)) == ["compare_cifar10.png", "curves_cifar10.png", "results.csv", "results.md"]
    for png in ("compare_cifar10.png", "curves_cifar10.png"):
        assert open(out / png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    import csv

    rows = list(csv.DictReader(open(out / "results.csv")))
    big, small = "cifar10_cnn(dropout=0.5, scale=32)", "cifar10_cnn(dropout=0.5, scale=16)"
    got = sorted((r["teacher"], r["student"], r["method"]) for r in rows)
    assert got == sorted([("", big, "NONE"), ("", small, "NONE"), ("cifar10_cnn(scale=32)", small, "KD"),
                          ("cifar10_cnn(scale=32)", small, "FEATKD")])
