"""The fast path (bf16 autocast + channels_last, optional torch.compile) trains like the plain fp32 step;
tools/bench.py times exactly Trainer.train_step and reports what it promises. No timing assertions."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from kdlab import benchmark as bench
from kdlab.config import load_cfg
from kdlab.data import build_datasets
from kdlab.engine.builder import build_everything
from kdlab.engine.run import prepare_distiller
from kdlab.engine.trainer import Trainer
from kdlab.errors import ConfigError, TeacherCheckpointNotFound

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CIFAR_KD = os.path.join(REPO, "configs", "cifar100", "kd", "resnet32x4_resnet8x4.yaml")
DIGITS_KD = os.path.join(REPO, "configs", "digits", "kd", "digits_teacher_digits_student.yaml")
FAST = {"SOLVER.AMP": True, "SOLVER.CHANNELS_LAST": True}
REFERENCE = os.environ.get("KDLAB_MDISTILLER", os.path.join(REPO, "..", "ref", "megvii-research+mdistiller"))


def tiny_cifar_cfg(method: str = "KD", **extra):
    """A CIFAR-100 config with small models (the shipped pair is too slow for a unit test)."""
    opts = ["DISTILLER.TYPE", method, "DISTILLER.TEACHER", "resnet20", "DISTILLER.STUDENT", "resnet8",
            "SOLVER.BATCH_SIZE", "16", "DATASET.TEST.BATCH_SIZE", "16", "SOLVER.DEVICE", "cpu",
            "DATASET.NUM_WORKERS", "0", "LOG.PROGRESS", "False"]
    for k, v in extra.items():
        opts += [k, str(v)]
    return load_cfg(CIFAR_KD, opts)


def one_step(cfg, run_dir: str, batch=None):
    """(loss terms, student gradients, batch) of one Trainer.train_step from the seeded initialization."""
    trainer = bench.make_trainer(cfg, torch.device("cpu"), run_dir)
    try:
        batch = batch if batch is not None else bench.first_batch(trainer)
        sums = torch.zeros(4, dtype=torch.float64)
        losses = trainer.train_step(batch, 1, 0, sums)
        grads = torch.cat([p.grad.flatten() for p in trainer.distiller.student.parameters()])
        return {k: v.item() for k, v in losses.items()}, grads, batch
    finally:
        trainer.logger.close()


@pytest.mark.parametrize("method", ["KD", "DKD", "MLKD"])
def test_fast_path_gives_the_plain_step_within_bf16_tolerance(method, tmp_path):
    cfg = tiny_cifar_cfg(method)
    with bench.dataset_for_bench(cfg, n_train=32, n_test=16) as (data_cfg, source, _):
        assert source == "synthetic"
        plain, g_plain, batch = one_step(bench.with_options(data_cfg, bench.PLAIN), str(tmp_path / "plain"))
        fast, g_fast, _ = one_step(bench.with_options(data_cfg, FAST), str(tmp_path / "fast"), batch)
    assert plain.keys() == fast.keys()
    total_plain, total_fast = sum(plain.values()), sum(fast.values())
    # observed: terms within 0.2%, gradient cosine >= 0.998, gradient difference <= 6% of its norm
    assert total_fast == pytest.approx(total_plain, rel=1e-2), (plain, fast)
    for k in plain:  # relative to the total: a near-zero term (MLKD's loss_cc) may differ by more than 1% of itself
        assert abs(fast[k] - plain[k]) <= 1e-2 * abs(total_plain), (k, plain, fast)
    cosine = torch.nn.functional.cosine_similarity(g_plain, g_fast, dim=0).item()
    assert cosine > 0.99, cosine
    assert (g_fast - g_plain).norm() < 0.15 * g_plain.norm()


def test_channels_last_alone_is_the_same_arithmetic(tmp_path):
    cfg = tiny_cifar_cfg()
    with bench.dataset_for_bench(cfg, n_train=32, n_test=16) as (data_cfg, _, _):
        plain, g_plain, batch = one_step(bench.with_options(data_cfg, bench.PLAIN), str(tmp_path / "plain"))
        cl_cfg = bench.with_options(data_cfg, {**bench.PLAIN, "SOLVER.CHANNELS_LAST": True})
        cl, g_cl, _ = one_step(cl_cfg, str(tmp_path / "cl"), batch)
    for k in plain:
        assert cl[k] == pytest.approx(plain[k], rel=1e-4, abs=1e-6)
    assert (g_cl - g_plain).norm() <= 1e-3 * g_plain.norm()  # fp32 summation order only (observed ~2e-4)


def test_teacher_without_weights_needs_no_checkpoint():
    cfg = tiny_cifar_cfg(**{"DISTILLER.TEACHER_CKPT": "/nonexistent/teacher.pth"})
    with bench.dataset_for_bench(cfg, n_train=16, n_test=16) as (data_cfg, _, _):
        splits = build_datasets(data_cfg)
        with pytest.raises(TeacherCheckpointNotFound):
            build_everything(data_cfg, splits)
        _, distiller = build_everything(data_cfg, splits, load_teacher_weights=False)
    assert not any(p.requires_grad for p in distiller.teacher.parameters())


def test_compile_gives_the_eager_step_and_keeps_state_dict_keys(tmp_path):
    """SOLVER.COMPILE compiles student and teacher in place: same numbers, same checkpoint keys (~15 s)."""
    cfg = load_cfg(DIGITS_KD, ["SOLVER.DEVICE", "cpu", "LOG.PROGRESS", "False", "DATASET.NUM_WORKERS", "0",
                               "SOLVER.AMP", "False", "SOLVER.CHANNELS_LAST", "False"])
    eager, g_eager, batch = one_step(cfg, str(tmp_path / "eager"))
    compiled_cfg = bench.with_options(cfg, {"SOLVER.COMPILE": True})
    compiled, g_compiled, _ = one_step(compiled_cfg, str(tmp_path / "compiled"), batch)
    for k in eager:
        assert compiled[k] == pytest.approx(eager[k], rel=1e-4)
    assert (g_compiled - g_eager).norm() <= 1e-3 * g_eager.norm()
    _, reference = build_everything(cfg, load_teacher_weights=False)
    _, distiller = build_everything(compiled_cfg, load_teacher_weights=False)
    prepare_distiller(compiled_cfg, distiller, torch.device("cpu"))
    assert list(distiller.state_dict()) == list(reference.state_dict())
    assert type(distiller.student) is type(reference.student)  # compiled in place, not wrapped


def test_bench_times_exactly_train_step(monkeypatch):
    """The shipped step, each candidate of auto and the plain step: each setting timed once, by train_step."""
    calls = []
    original = Trainer.train_step

    def counted(self, *args, **kwargs):
        calls.append((self.cfg.SOLVER.AMP, self.cfg.SOLVER.CHANNELS_LAST))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "train_step", counted)
    cfg = load_cfg(DIGITS_KD, ["SOLVER.DEVICE", "cpu", "SOLVER.AMP", "True"])  # CHANNELS_LAST auto
    result = bench.bench_step(cfg, steps=3, warmup=2, estimate=False)
    # no trial in tests (KDLAB_PRECISION_TRIAL_S 0): on a CPU auto's default is the simplest candidate, NCHW
    assert result["auto"]["decided_by"] == "capability" and result["auto"]["pick"] == "bf16"
    assert {k: calls.count(k) for k in set(calls)} == {(True, True): 5, (True, False): 5, (False, False): 5}
    assert result["amp"] == "bfloat16" and result["channels_last"] is False
    assert set(result["candidates_step_s"]) == {"bf16", "bf16+channels_last"}
    assert result["step_s"] == result["candidates_step_s"]["bf16"]  # the same step, timed once
    best = min(result["candidates_step_s"].values()) if result["best_fixed"] != "plain" else result["plain_step_s"]
    assert result["ratio_vs_best_fixed"] == pytest.approx(result["step_s"] / best)


def test_bench_all_candidates_include_what_auto_rules_out(monkeypatch):
    monkeypatch.setattr(bench.step.precision, "detect_capability",
                        lambda device: bench.step.precision.Capability("cpu", "test CPU", native_bf16=False))
    cfg = load_cfg(DIGITS_KD, ["SOLVER.DEVICE", "cpu"])
    result = bench.bench_step(cfg, steps=1, warmup=1, estimate=False, all_candidates=True)
    assert set(result["candidates_step_s"]) == {"fp32", "fp32+channels_last", "bf16", "bf16+channels_last"}
    assert result["auto"]["pick"] == "fp32" and result["amp"] is False  # no native bf16, no trial: plain fp32
    assert result["plain_step_s"] == result["candidates_step_s"]["fp32"]


def test_bench_cli_json(tmp_path):
    out = subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", "bench.py"), "--cfg", DIGITS_KD, "--steps", "2", "--warmup", "1",
         "--json", "SOLVER.DEVICE", "cpu", "SOLVER.CHANNELS_LAST", "True"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    for key in ("step_s", "images_per_s", "amp", "channels_last", "compile", "device", "batch_size", "peak_mem_mb",
                "plain_step_s", "run_estimate_h"):
        assert key in result, key
    assert result["channels_last"] is True and result["amp"] is False and result["compile"] is False
    assert result["device"] == "cpu" and result["batch_size"] == 64
    assert result["images_per_s"] == pytest.approx(64 / result["step_s"])
    assert result["train_images"] == 1437  # digits' real split


STAND_IN = {  # mdistiller's interface as bench's reference step uses it, on kdlab's identical CIFAR models
    "mdistiller/__init__.py": "",
    "mdistiller/distillers/_base.py": "",
    "mdistiller/distillers/__init__.py": """
import torch.nn as nn
import torch.nn.functional as F


class KD(nn.Module):
    def __init__(self, student, teacher, cfg):
        super().__init__()
        self.student, self.teacher, self.t = student, teacher, cfg.KD.TEMPERATURE

    def get_learnable_parameters(self):
        return list(self.student.parameters())

    def forward(self, image, target, epoch):
        s, _ = self.student(image)
        t, _ = self.teacher(image)
        kd = F.kl_div(F.log_softmax(s / self.t, 1), F.softmax(t.detach() / self.t, 1), reduction="batchmean")
        return s, {"loss_ce": F.cross_entropy(s, target), "loss_kd": kd * self.t**2}


distiller_dict = {"KD": KD}
""",
    "mdistiller/models/__init__.py": "",
    "mdistiller/models/cifar/__init__.py": """
from kdlab.models import build_model

cifar_model_dict = {n: (lambda num_classes, n=n: build_model(n, num_classes), None) for n in ("resnet8", "resnet20")}
""",
    "mdistiller/engine/utils.py": """
def accuracy(output, target, topk=(1,)):
    return [(output.topk(k, 1).indices == target[:, None]).any(1).float().mean() * 100 for k in topk]
""",
}


def _reference_repo(tmp_path) -> str:
    """A real mdistiller checkout when one is beside the project (KDLAB_MDISTILLER), else a stand-in package
    with its interface, so that the reference column's wiring is tested on every clone."""
    if os.path.isdir(os.path.join(REFERENCE, "mdistiller")):
        return REFERENCE
    for rel, text in STAND_IN.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return str(tmp_path)


def test_bench_reference_step_and_ratio(tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "mdistiller" or m.startswith("mdistiller.")]:
        monkeypatch.delitem(sys.modules, name)
    result = bench.bench_step(tiny_cifar_cfg(), steps=2, warmup=1, reference_repo=_reference_repo(tmp_path),
                              estimate=False)
    assert result["data"] == "synthetic" and result["reference_step_s"] > 0
    assert result["ratio"] == pytest.approx(result["step_s"] / result["reference_step_s"])
    with pytest.raises(ConfigError, match="expected a checkout of mdistiller"):
        bench.bench_step(tiny_cifar_cfg(), steps=1, warmup=1, reference_repo=str(tmp_path / "nowhere"))


def test_bench_data_on_synthetic_cifar(tmp_path):
    cfg = tiny_cifar_cfg(**{"DATASET.ROOT": str(tmp_path / "missing")})
    result = bench.bench_data(cfg, batches=3, aug_images=128, aug_per_sample=32)
    assert result["data"] == "synthetic" and result["augment"] == "batched on device"
    assert result["loader_batches"] == 3 and result["loader_images_per_s"] > 0
    assert set(result["augment_images_per_s"]) == {"batched", "per_sample", "per_sample_pil"}


def test_method_sweep_times_each_shipped_config_next_to_kd():
    from kdlab.benchmark.methods import bench_methods, method_configs, select
    from kdlab.distillers import build_distiller
    from kdlab.models import build_model

    configs = method_configs("digits")
    assert {"KD", "DKD", "FITNET", "AT"} <= set(configs) and "NONE" not in configs
    chosen = select(configs, "fitnet,at")
    assert list(chosen) == ["KD", "FITNET", "AT"]  # KD first: the baseline of the ratios
    with pytest.raises(ConfigError, match=r"--method: no shipped config for NOPE; available: .*KD"):
        select(configs, "NOPE")
    result = bench_methods(chosen, ["SOLVER.DEVICE", "cpu", "SOLVER.AMP", "False", "SOLVER.CHANNELS_LAST", "False"],
                           steps=2, warmup=0)
    methods = result["methods"]
    assert list(methods) == ["KD", "FITNET", "AT"] and result["precision"] == "fp32"
    assert methods["KD"]["ratio_vs_kd"] == 1.0
    for m in methods.values():
        assert m["step_s"] > 0 and m["ratio_vs_kd"] == pytest.approx(m["step_s"] / methods["KD"]["step_s"])
    cfg = load_cfg(chosen["FITNET"], ["DATASET.NUM_WORKERS", "0"])
    fitnet = build_distiller(cfg, build_model("digits_student", 10), build_model("digits_teacher", 10))
    assert methods["FITNET"]["extra_params"] == fitnet.extra_parameter_count() > 0
    assert methods["AT"]["extra_params"] == methods["KD"]["extra_params"] == 0
