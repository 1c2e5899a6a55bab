"""Teacher/student weights load from mdistiller, bare, DataParallel and kdlab files, safely and strictly."""

from __future__ import annotations

import os
from collections import OrderedDict

import pytest
import torch

from kdlab.errors import CheckpointError, TeacherCheckpointNotFound
from kdlab.models import build_model, load_weights


def _model():
    torch.manual_seed(0)
    return build_model("digits_student", 10)


def _same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize(
    "layout",
    [
        lambda sd: {"model": sd, "epoch": 240, "best_acc": 79.0},  # mdistiller teacher
        lambda sd: sd,  # bare state dict
        lambda sd: OrderedDict(("module." + k, v) for k, v in sd.items()),  # DataParallel
        lambda sd: {"model": OrderedDict(("module.student." + k, v) for k, v in sd.items())},  # mdistiller student
        lambda sd: {"format": "kdlab", "student": sd, "model": {"student." + k: v for k, v in sd.items()}},
        lambda sd: {"state_dict": sd},
    ],
)
def test_layouts_load_strictly(tmp_path, layout):
    src = _model()
    torch.nn.init.normal_(src.fc.weight)
    path = str(tmp_path / "w.pth")
    torch.save(layout(src.state_dict()), path)
    dst = build_model("digits_student", 10)
    load_weights(dst, path)
    assert _same(src, dst)


def test_shape_mismatch_names_key_and_both_shapes(tmp_path):
    path = str(tmp_path / "w.pth")
    torch.save({"model": build_model("digits_student", 7).state_dict()}, path)
    with pytest.raises(CheckpointError, match=r"'fc.weight' has shape \(7, 32\) in the file but \(10, 32\)"):
        load_weights(build_model("digits_student", 10), path)


def test_other_architecture_names_missing_key(tmp_path):
    path = str(tmp_path / "w.pth")
    torch.save({"model": build_model("digits_teacher", 10).state_dict()}, path)
    with pytest.raises(CheckpointError, match="does not fit"):
        load_weights(build_model("digits_student", 10), path)


def test_missing_file():
    with pytest.raises(TeacherCheckpointNotFound, match="not found"):
        load_weights(_model(), "/nonexistent/ckpt.pth")


def test_corrupt_file(tmp_path):
    path = tmp_path / "w.pth"
    path.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match="corrupt"):
        load_weights(_model(), str(path))


class _Evil:
    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_code_in_checkpoint_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = str(tmp_path / "evil.pth")
    torch.save({"model": _Evil(str(marker))}, path)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="refusing to load"):
        load_weights(_model(), path)
    assert not os.path.exists(marker)
