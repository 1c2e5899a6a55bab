"""tools/eval.py --plots on segmentation: prediction figures (image | ground truth | teacher | student) with the
masks in VOC's palette, on the tiny VOC fixture."""

from __future__ import annotations

import json
import os

import matplotlib.image
import numpy as np
import pytest
import torch
from conftest import REPO, load_script
from fixtures_data import voc_palette, write_voc

from kdlab.errors import ConfigError
from kdlab.models import build_model
from kdlab.reports.segmentation import colorize, display_image, normalization_of

VANILLA = os.path.join(REPO, "configs/voc/vanilla/seg_small.yaml")
PALETTE = np.array(voc_palette(), dtype=np.uint8).reshape(256, 3)
CREAM = (224, 224, 192)  # label 255


def _eval_main(argv):
    return load_script("tools/eval.py", "kdlab_eval_tool_pred").main(argv)


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    root = tmp_path_factory.mktemp("voc_pred")
    info = write_voc(root / "data", n_train=2, n_val=3)
    ckpts = {}
    for name, seed in (("student", 0), ("teacher", 1)):
        torch.manual_seed(seed)
        ckpts[name] = str(root / f"{name}.pth")
        torch.save(build_model("seg_small", 21).state_dict(), ckpts[name])
    opts = ["DATASET.ROOT", str(root / "data"), "DATASET.IMAGE_SIZE", "48", "DATASET.NUM_WORKERS", "0",
            "DATASET.TEST.BATCH_SIZE", "4", "SOLVER.DEVICE", "cpu", "DISTILLER.TEACHER", "seg_small"]
    return root, info, ckpts, opts


def _panels(path: str) -> list[np.ndarray]:
    """The panels of a one-row figure: the runs of non-white columns along the middle row, as RGB uint8 rows."""
    rgb = (matplotlib.image.imread(path)[..., :3] * 255).round().astype(np.uint8)
    row = rgb[rgb.shape[0] // 2]
    inked = (row < 250).any(1)
    edges = np.flatnonzero(np.diff(np.r_[0, inked.astype(int), 0]))
    return [row[a:b] for a, b in zip(edges[::2], edges[1::2]) if b - a > 10]


def _palette_share(pixels: np.ndarray) -> float:
    colours = {tuple(c) for c in PALETTE[list(range(21)) + [255]]}
    return float(np.mean([tuple(p) in colours for p in pixels]))


def test_colorize_is_the_voc_palette():
    mask = np.array([[0, 1, 2], [15, 20, 255]])
    assert colorize(mask).tolist() == PALETTE[mask].tolist()
    assert colorize(mask)[1, 2].tolist() == list(CREAM) and colorize(mask)[0, 1].tolist() == [128, 0, 0]


def test_display_image_undoes_normalize():
    from torchvision.transforms import v2

    norm = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.5, 0.4, 0.3], [0.2, 0.1, 0.25])])
    mean, std = normalization_of(norm)
    image = torch.rand(3, 4, 5)
    shown = display_image(v2.Normalize(mean, std)(image).numpy(), mean, std)
    np.testing.assert_allclose(shown, image.permute(1, 2, 0).numpy(), atol=1e-6)


@pytest.mark.parametrize("teacher", [True, False])
def test_prediction_figures(voc, tmp_path, capsys, teacher):
    root, info, ckpts, opts = voc
    out = tmp_path / "plots"
    argv = ["--cfg", VANILLA, "--ckpt", ckpts["student"], "--json", "--plots", str(out), "--num-images", "2", *opts]
    assert _eval_main(argv + (["--teacher-ckpt", ckpts["teacher"]] if teacher else [])) == 0
    report = json.loads(capsys.readouterr().out)
    figures = [p for p in report["plots"] if os.path.basename(p).startswith("prediction_")]
    assert [os.path.basename(p) for p in figures] == ["prediction_00.png", "prediction_01.png"]
    for k, path in enumerate(figures):
        panels = _panels(path)
        assert len(panels) == (4 if teacher else 3), path
        for mask_row in panels[1:]:  # ground truth, (teacher,) student: VOC palette colours, pixel for pixel
            assert _palette_share(mask_row[2:-2]) > 0.97
        gt = {tuple(c) for c in panels[1]}
        cls = int(info["labels"][info["val_ids"][k]].max(initial=0, where=info["labels"][info["val_ids"][k]] < 255))
        assert tuple(PALETTE[cls]) in gt and tuple(PALETTE[0]) in gt  # the object's colour and background


def test_teacher_flags_need_plots(voc):
    root, info, ckpts, opts = voc
    with pytest.raises(ConfigError, match="--plots"):
        _eval_main(["--cfg", VANILLA, "--ckpt", ckpts["student"], "--teacher", *opts])
