"""Seed recipes: Elec475 VOC (EYErbil/Knowledge-Distillation) and cifar10_distillation (danieldutu).

Each config's resolved values are checked against the seed's code (models' parameter counts, optimizer,
LR, batch, epochs, loss weights, augmentations), and each config trains one epoch from tools/train.py on
tiny data in the real dataset layout.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os

import pytest
import torch
from conftest import REPO
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
    spec = importlib.util.spec_from_file_location("kdlab_train_tool", os.path.join(REPO, "tools/train.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
    # train.py: Adam, plateau on the val loss; train_kd.py: AdamW, plateau on the val mIoU
    assert (cfgs["scratch"].SOLVER.TYPE, cfgs["scratch"].SOLVER.PLATEAU_METRIC) == ("Adam", "test_loss")
    for name in ("response", "feature"):
        cfg = cfgs[name]
        assert (cfg.SOLVER.TYPE, cfg.SOLVER.PLATEAU_METRIC) == ("AdamW", "test_acc")
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
