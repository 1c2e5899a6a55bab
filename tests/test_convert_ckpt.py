"""tools/convert_ckpt.py: mdistiller, DataParallel-distiller, torchvision and bare files to kdlab weights."""

from __future__ import annotations

import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import torchvision
from conftest import load_script

from kdlab.models import build_model

REPO = Path(__file__).resolve().parents[1]
TOOL = REPO / "tools" / "convert_ckpt.py"


convert_ckpt = load_script("tools/convert_ckpt.py", "convert_ckpt")


def _random_state(name: str, num_classes: int) -> OrderedDict[str, torch.Tensor]:
    torch.manual_seed(0)
    return build_model(name, num_classes).state_dict()


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        convert_ckpt.run_cli(convert_ckpt.main, argv, prog="convert_ckpt")
    out, err = capsys.readouterr()
    return info.value.code, out, err


def _assert_kdlab_file(path: Path, name: str, num_classes: int, expected: dict) -> None:
    saved = torch.load(path, map_location="cpu", weights_only=True)
    assert (
        saved["arch"] == name and saved["num_classes"] == num_classes and saved["format"] == "kdlab-weights"
    )
    assert list(saved["model"]) == list(expected)
    for key, value in expected.items():
        assert torch.equal(saved["model"][key], value), key
    model = build_model(name, num_classes, pretrained=str(path))  # and it loads strictly
    assert torch.equal(model.state_dict()[next(iter(expected))], next(iter(expected.values())))


def test_mdistiller_teacher_file(tmp_path, capsys):
    state = _random_state("resnet8x4", 100)
    torch.save({"model": state}, tmp_path / "ckpt_epoch_240.pth")
    code, out, _ = _run(
        [
            str(tmp_path / "ckpt_epoch_240.pth"),
            str(tmp_path / "r8x4.pth"),
            "--model",
            "resnet8x4",
            "--num-classes",
            "100",
        ],
        capsys,
    )
    assert code == 0 and "resnet8x4" in out
    _assert_kdlab_file(tmp_path / "r8x4.pth", "resnet8x4", 100, state)


def test_dataparallel_distiller_checkpoint_keeps_the_student(tmp_path, capsys):
    student, teacher = _random_state("wrn_16_1", 100), _random_state("wrn_40_1", 100)
    model = {f"module.student.{k}": v for k, v in student.items()}
    model.update({f"module.teacher.{k}": v + 1 for k, v in teacher.items()})
    torch.save(
        {"model": model, "optimizer": {"state": {}, "param_groups": []}, "epoch": 240, "best_acc": 71.2},
        tmp_path / "latest",
    )
    code, _, err = _run(
        [
            str(tmp_path / "latest"),
            str(tmp_path / "student.pth"),
            "--model",
            "wrn_16_1",
            "--num-classes",
            "100",
        ],
        capsys,
    )
    assert code == 0, err
    _assert_kdlab_file(tmp_path / "student.pth", "wrn_16_1", 100, student)


def test_torchvision_and_bare_state_dicts(tmp_path, capsys):
    state = torchvision.models.mobilenet_v3_small(num_classes=10).state_dict()
    torch.save(state, tmp_path / "mobilenet_v3_small.pth")
    code, _, err = _run(
        [
            str(tmp_path / "mobilenet_v3_small.pth"),
            str(tmp_path / "out" / "mnv3.pth"),
            "--model",
            "mobilenet_v3_small",
            "--num-classes",
            "10",
        ],
        capsys,
    )
    assert code == 0, err
    _assert_kdlab_file(tmp_path / "out" / "mnv3.pth", "mobilenet_v3_small", 10, state)


class _NotWeights:
    pass


@pytest.mark.parametrize("case", ["wrong_arch", "wrong_classes", "unsafe", "missing", "unknown_model"])
def test_errors_are_one_line_and_exit_2(tmp_path, capsys, case):
    src, model, classes = tmp_path / "src.pth", "resnet8", "100"
    torch.save({"model": _random_state("resnet8", 100)}, src)
    if case == "wrong_arch":
        model = "resnet14"
    elif case == "wrong_classes":
        classes = "10"
    elif case == "unsafe":
        torch.save({"model": _NotWeights()}, src)
    elif case == "missing":
        src = tmp_path / "nope.pth"
    else:
        model = "resnet9"
    code, _, err = _run(
        [str(src), str(tmp_path / "dst.pth"), "--model", model, "--num-classes", classes], capsys
    )
    assert code == 2
    assert err.startswith("convert_ckpt: error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "dst.pth").exists()


def test_command_line_error_exits_2_without_traceback(tmp_path):
    torch.save({"model": _random_state("resnet8", 100)}, tmp_path / "t.pth")
    bad = subprocess.run(
        [
            sys.executable,
            str(TOOL),
            str(tmp_path / "t.pth"),
            str(tmp_path / "o2.pth"),
            "--model",
            "vgg8",
            "--num-classes",
            "100",
        ],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
