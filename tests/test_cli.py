"""Command-line behaviour: --print-config without data, one-line errors with exit code 2.

Most tests call a tool's main() in this process through kdlab.cli.run_cli, the same wrapper its
`__main__` block uses (`call_tool`); test_real_process_* starts the real interpreter (`run_tool`), as
do test_e2e_digits.py and test_faults.py.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import subprocess
import sys

import pytest
from conftest import REPO, load_script

from kdlab.cli import run_cli

KD_CFG = os.path.join(REPO, "configs/cifar100/kd/resnet32x4_resnet8x4.yaml")


def run_tool(tool: str, *args: str, cwd: str = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", tool), *args],
        capture_output=True, text=True, cwd=cwd, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"),
    )


@functools.cache
def _tool_module(tool: str):
    return load_script(f"tools/{tool}", f"kdlab_tool_{tool[:-3]}")


def call_tool(tool: str, *args: str) -> subprocess.CompletedProcess:
    """tools/<tool> run in this process by run_cli (exit code, one-line errors); stdout and stderr captured."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            run_cli(_tool_module(tool).main, list(args), prog=tool)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return subprocess.CompletedProcess([tool, *args], code, out.getvalue(), err.getvalue())


def test_print_config_works_without_data(tmp_path):
    res = call_tool("train.py", "--cfg", KD_CFG, "--print-config", "DATASET.ROOT", str(tmp_path / "nothing"))
    assert res.returncode == 0, res.stderr
    assert "TYPE: KD" in res.stdout and "STUDENT: resnet8x4" in res.stdout
    assert "logit standardization off" in res.stdout


def test_print_config_names_a_teacher_only_for_methods_that_use_one():
    vanilla = os.path.join(REPO, "configs/digits/vanilla/digits_teacher.yaml")
    assert call_tool("train.py", "--cfg", vanilla, "--print-config").stdout.startswith(
        "# NONE digits_teacher on digits,")
    assert call_tool("train.py", "--cfg", KD_CFG, "--print-config").stdout.startswith("# KD resnet32x4 -> resnet8x4 on")
    assert "AMP: auto" in call_tool("train.py", "--cfg", KD_CFG, "--print-config").stdout


def test_print_config_shows_logit_stand(tmp_path):
    res = call_tool("train.py", "--cfg", KD_CFG, "--print-config", "--logit-stand", "--base-temp", "3")
    assert res.returncode == 0, res.stderr
    assert "logit standardization ON" in res.stdout
    assert "LOGIT_STAND: true" in res.stdout and "TEMPERATURE: 3.0" in res.stdout and "KD_WEIGHT: 9.0" in res.stdout


@pytest.mark.parametrize(
    "args, needle",
    [
        (["SOLVER.LRR", "0.1"], "LRR"),
        (["DISTILLER.STUDENT", "resnet9"], "resnet9"),
        (["SOLVER.TYPE", "Adagrad"], "Adagrad"),
        (["SOLVER.LR", "fast"], "SOLVER.LR"),
    ],
)
def test_bad_override_is_one_line_exit_2(args, needle):
    res = call_tool("train.py", "--cfg", KD_CFG, *args)
    assert res.returncode == 2
    err = res.stderr.strip().splitlines()
    assert len(err) == 1, res.stderr
    assert needle in err[0] and "Traceback" not in res.stderr


def test_missing_dataset_is_one_line_error(tmp_path):
    res = call_tool("train.py", "--cfg", os.path.join(REPO, "configs/cifar100/vanilla/resnet8x4.yaml"),
                   "DATASET.ROOT", str(tmp_path), "LOG.PREFIX", str(tmp_path / "logs"))
    assert res.returncode == 2, res.stderr
    lines = [ln for ln in res.stderr.strip().splitlines() if "error" in ln]
    assert len(lines) == 1 and "cifar-100-python" in lines[0] and "Traceback" not in res.stderr


def test_real_process_missing_teacher_checkpoint_is_one_line_error(tmp_path):
    res = run_tool("train.py", "--cfg", os.path.join(REPO, "configs/digits/kd/digits_teacher_digits_student.yaml"),
                   "DISTILLER.TEACHER_CKPT", str(tmp_path / "none.pth"), "LOG.PREFIX", str(tmp_path))
    assert res.returncode == 2
    assert "teacher checkpoint not found" in res.stderr and "none.pth" in res.stderr
    assert "Traceback" not in res.stderr


def test_eval_requires_ckpt():
    res = call_tool("eval.py", "--cfg", KD_CFG)
    assert res.returncode == 2 and "--ckpt" in res.stderr


def test_flags_after_overrides_are_recognized():
    from kdlab.cli import hoist_flags

    argv = ["--cfg", "a.yaml", "SOLVER.LR", "0.1", "--resume", "SOLVER.LR_DECAY_STAGES", "[1, 2]", "--base-temp=3"]
    out = hoist_flags(argv, {"--cfg", "--base-temp"}, {"--resume"})
    assert out == ["--cfg", "a.yaml", "--resume", "--base-temp=3", "SOLVER.LR", "0.1",
                   "SOLVER.LR_DECAY_STAGES", "[1, 2]"]
    # a negative number is an override value, not a flag
    assert hoist_flags(["SOLVER.LR", "-0.1"], {"--cfg"}, {"--resume"}) == ["SOLVER.LR", "-0.1"]
