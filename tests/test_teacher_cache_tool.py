"""tools/cache_teacher.py on digits: build, --verify, a rerun finding it complete, damage, refusal; kill -9 resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import REPO, load_script

from kdlab.data.digits import load_digits_split
from kdlab.data.teacher_cache import TeacherCache
from kdlab.models import build_model

CFG = os.path.join(REPO, "configs/digits/kd/digits_teacher_digits_student.yaml")


@pytest.fixture(scope="module")
def tool():
    return load_script("tools/cache_teacher.py", "cache_teacher_tool")


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory) -> str:
    torch.manual_seed(0)
    path = str(tmp_path_factory.mktemp("teacher") / "digits_teacher.pth")
    torch.save(build_model("digits_teacher", 10, in_channels=1).state_dict(), path)
    return path


def run(tool, capsys, *argv: str) -> tuple[int, str, str]:
    """The tool as its command line runs it: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        tool.run_cli(tool.main, list(argv), prog="cache_teacher.py")
    out = capsys.readouterr()
    return exit_info.value.code, out.out, out.err


def test_build_verify_rerun_damage_and_refusal(tool, teacher_ckpt, tmp_path, capsys):
    opts = ["--cfg", CFG, "DISTILLER.TEACHER_CKPT", teacher_ckpt, "LOG.PREFIX", str(tmp_path), "LOG.PROGRESS", "False"]
    code, out, err = run(tool, capsys, *opts, "--batch-size", "1000")
    assert code == 0, err
    path = out.splitlines()[0].removeprefix("teacher cache: ")
    assert path.startswith(os.path.join(str(tmp_path), "teacher_cache", "digits_digits_teacher_"))
    assert "1437 images x 9 views x 10 classes, float32, 0.5 MB, precision fp32" in out and "build time:" in out
    assert "fp32+channels_last" not in err and "(decided by capability:" in err, err
    cache = TeacherCache.open(path)
    teacher = build_model("digits_teacher", 10, in_channels=1)
    teacher.load_state_dict(torch.load(teacher_ckpt))
    _, _, x_te, y_te = load_digits_split()
    with torch.no_grad():
        acc = 100.0 * (teacher.eval()(x_te)[0].argmax(1) == y_te).float().mean().item()
    assert cache.meta["teacher_test_acc"] == pytest.approx(acc, abs=1e-3)
    assert f"teacher test top-1: {acc:.2f}" in out

    code, out, _ = run(tool, capsys, *opts, "--verify")
    assert code == 0 and "verified: size and every chunk checksum match" in out
    code, out, _ = run(tool, capsys, *opts)
    assert code == 0 and "already complete: nothing to build" in out

    with open(os.path.join(path, "logits.bin"), "r+b") as f:  # damage the last byte: the last chunk
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 1]))
    code, _, err = run(tool, capsys, *opts, "--verify")
    assert code == 2 and "chunk 1 of 2 (images 910-1436) fails its sha256 checksum" in err
    code, out, _ = run(tool, capsys, *opts)  # a build recomputes that chunk
    assert code == 0 and "build time:" in out
    assert run(tool, capsys, *opts, "--verify")[0] == 0

    code, out, _ = run(tool, capsys, *opts, "--dtype", "bfloat16", "--dir", str(tmp_path / "bf16"))
    assert code == 0 and "bfloat16, 0.2 MB" in out and str(tmp_path / "bf16") in out
    code, _, err = run(tool, capsys, *opts, "DATASET.TRAIN_TRANSFORMS", "['RandomHorizontalFlip']")
    assert code == 2 and "no teacher cache for this run: DATASET.TRAIN_TRANSFORMS is set" in err
    code, _, err = run(tool, capsys, *opts, "--verify", "--dir", str(tmp_path / "none"))
    assert code == 2 and "no teacher cache at" in err


SETUP = """
import sys, time, torch
sys.path.insert(0, {repo!r})
from kdlab.data.batch_augment import BatchCropFlipNormalize
from kdlab.data.teacher_cache import build_teacher_cache, cache_key
torch.manual_seed(0)
teacher = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                              torch.nn.Linear(4, 10))
images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
views = BatchCropFlipNormalize((0.5,) * 3, (0.25,) * 3)
key = cache_key(teacher, images, views, dataset="t", teacher_name="t", num_classes=10, dtype="float32",
                precision="fp32")
"""
KILLED_BUILD = """
def hook(module, inputs, calls=[]):
    calls.append(1)
    print(len(calls), flush=True)
    if len(calls) == 5:
        time.sleep(60)  # killed here, at the first batch of the third chunk
teacher.register_forward_pre_hook(hook)
build_teacher_cache(teacher, images, views, sys.argv[1], key, batch_size=162, progress=False, chunk_images=2)
"""


def test_kill_9_in_the_middle_resumes_from_the_finished_chunks(tmp_path):
    setup = SETUP.format(repo=REPO)
    script = tmp_path / "build.py"
    script.write_text(setup + KILLED_BUILD)
    cache_dir = str(tmp_path / "cache")
    proc = subprocess.Popen([sys.executable, str(script), cache_dir], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        for line in proc.stdout:  # teacher calls 1-4 are chunks 0 and 1 (2 images x 162 views, batches of 162)
            if line.strip() == "5":
                break
        time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    meta = json.load(open(os.path.join(cache_dir, "meta.json")))
    assert sorted(meta["chunks"]) == ["0", "1"] and not meta["complete"]
    names: dict = {}
    exec(setup, names)  # the same teacher, images and key, in this process
    calls = []
    names["teacher"].register_forward_pre_hook(lambda m, i: calls.append(len(i[0])))
    cache = names["build_teacher_cache"](names["teacher"], names["images"], names["views"], cache_dir, names["key"],
                                         batch_size=162, progress=False)
    assert calls == [162] * 4  # chunks 2 and 3 only
    assert TeacherCache.open(cache_dir).num_images == 8 and cache.meta["complete"]
    index, view = torch.tensor([0, 1, 6, 7]), torch.tensor([0, 161, 5, 80])  # rows of killed and resumed chunks
    with torch.no_grad():
        expected = names["teacher"](names["views"].render(names["images"][index], view))
    torch.testing.assert_close(cache.lookup(index, view, "cpu"), expected, rtol=1e-5, atol=1e-5)
