"""SOLVER.AMP / CHANNELS_LAST auto: the decision with faked capabilities, timings and clocks (no timing
assertions), the cache, the config keys, and what a digits run records and reuses on resume."""

from __future__ import annotations

import json
import logging
import os

import pytest
import torch
import yaml
from conftest import REPO, digits_opts, load_script

from kdlab.config import load_cfg
from kdlab.engine import precision as P
from kdlab.engine import trainer as trainer_mod
from kdlab.engine.run import train
from kdlab.engine.trainer import TrainingInterrupted
from kdlab.errors import ConfigError

CPU = P.Capability("cpu", "test CPU without bf16", native_bf16=False)
CPU_BF16 = P.Capability("cpu", "test CPU with AVX512_BF16", native_bf16=True)
AUTO = P.Request("auto", "auto")
FP32, FP32_CL = P.Choice(None, False), P.Choice(None, True)
BF16, BF16_CL = P.Choice("bfloat16", False), P.Choice("bfloat16", True)
DIGITS = os.path.join(REPO, "configs/digits/vanilla/digits_teacher.yaml")


def cuda(cc):
    return P.Capability("cuda", f"test GPU sm{cc[0]}{cc[1]}", cuda_capability=cc)


def timings(**by_label):
    """A fake measure: the given seconds per step by label; records the candidates it was asked for."""
    asked = []

    def measure(cands):
        asked.append([c.label for c in cands])
        return P.Trial({c: by_label[c.label.replace("+channels_last", "_cl")] for c in cands}, "fake trial")

    measure.asked = asked
    return measure


def no_trial(cands):
    raise AssertionError("the trial must not run")


# ---------------------------------------------------------------- the decision
def test_cpu_without_native_bf16_never_tries_bf16():
    measure = timings(fp32=1.0, fp32_cl=0.7)
    decision = P.resolve(AUTO, CPU, measure)
    assert measure.asked == [["fp32", "fp32+channels_last"]]
    assert decision.choice == FP32_CL and decision.decided_by == "trial"
    assert decision.timings_s == {"fp32": 1.0, "fp32+channels_last": 0.7}
    assert P.resolve(AUTO, CPU, timings(fp32=0.7, fp32_cl=1.0)).choice == FP32


def test_cpu_with_native_bf16_picks_bf16_when_it_is_faster():
    measure = timings(fp32=1.0, fp32_cl=0.8, bf16=0.5, bf16_cl=0.3)
    decision = P.resolve(AUTO, CPU_BF16, measure)
    assert measure.asked == [["fp32", "fp32+channels_last", "bf16", "bf16+channels_last"]]
    assert decision.choice == BF16_CL
    assert P.resolve(AUTO, CPU_BF16, timings(fp32=0.6, fp32_cl=0.8, bf16=0.9, bf16_cl=0.7)).choice == FP32


def test_near_ties_go_to_the_simpler_setting():
    # bf16+channels_last 2% faster than fp32: within TIE_MARGIN, so fp32 (no reduced precision) wins
    assert P.resolve(AUTO, CPU_BF16, timings(fp32=1.0, fp32_cl=1.2, bf16=1.1, bf16_cl=0.98)).choice == FP32
    assert P.pick([FP32, FP32_CL], {FP32: 1.0, FP32_CL: 0.9}) == FP32_CL


@pytest.mark.parametrize("cc, dtype", [((9, 0), "bfloat16"), ((8, 0), "bfloat16"), ((7, 5), "float16"),
                                       ((7, 0), "float16"), ((6, 1), None)])
def test_cuda_precision_by_compute_capability(cc, dtype):
    measure = timings(fp32=1.0, fp32_cl=1.5, bf16=1.0, bf16_cl=0.5, fp16=1.0, fp16_cl=0.5)
    decision = P.resolve(AUTO, cuda(cc), measure)
    assert [c.amp for c in P.candidates(cuda(cc), AUTO)] == [dtype, dtype]  # only the memory format is timed
    assert decision.choice.amp == dtype and decision.decided_by == "trial"
    assert decision.choice.channels_last is (dtype is not None)
    fixed_format = P.resolve(P.Request("auto", False), cuda(cc), no_trial)
    assert fixed_format.choice == P.Choice(dtype, False) and fixed_format.decided_by == "capability"


def test_skipped_trial_falls_back_to_the_capability_default_and_says_why():
    def too_slow(cands):
        return P.Trial(None, "one step took 9 s")

    cpu = P.resolve(AUTO, CPU, too_slow)
    assert cpu.choice == FP32 and cpu.decided_by == "capability" and "9 s" in cpu.reason
    assert P.resolve(AUTO, CPU_BF16, too_slow).choice == FP32  # untried bf16 could be slower than fp32
    assert P.resolve(AUTO, cuda((8, 6)), too_slow).choice == BF16_CL
    assert P.resolve(AUTO, cuda((6, 1)), too_slow).choice == FP32


def test_explicit_true_false_bypass_auto():
    on = P.resolve(P.Request(True, True, "float16"), CPU, no_trial)
    assert on.choice == P.Choice("float16", True) and on.decided_by == "config" and on.auto_keys == ()
    off = P.resolve(P.Request(False, False), CPU_BF16, no_trial)
    assert off.choice == FP32 and off.decided_by == "config"
    measure = timings(fp32=1.0, fp32_cl=0.5, bf16=0.1, bf16_cl=0.1)
    half = P.resolve(P.Request(False, "auto"), CPU_BF16, measure)  # only the format is chosen
    assert measure.asked == [["fp32", "fp32+channels_last"]] and half.choice == FP32_CL
    assert half.auto_keys == ("SOLVER.CHANNELS_LAST",)


def test_resume_reuses_the_runs_choice_for_auto_keys_only():
    decision = P.resolve(AUTO, CPU_BF16, no_trial, saved=BF16_CL)
    assert decision.choice == BF16_CL and decision.decided_by == "resume"
    partly = P.resolve(P.Request("auto", False), CPU_BF16, no_trial, saved=BF16_CL)
    assert partly.choice == BF16  # CHANNELS_LAST False as configured; AMP as the run chose


def test_saved_choice_from_a_checkpoint():
    assert P.saved_choice({"precision": {"amp": "bfloat16", "channels_last": True}}) == BF16_CL
    cfg = P.apply(load_cfg(DIGITS), FP32_CL)  # an older checkpoint: the resolved config only
    assert P.saved_choice({"config": cfg.dump()}) == FP32_CL
    assert P.saved_choice({"config": load_cfg(DIGITS).dump()}) is None  # unresolved: nothing to reuse


def test_apply_gives_a_concrete_frozen_config():
    cfg = P.apply(load_cfg(DIGITS), P.Choice("float16", True))
    assert (cfg.SOLVER.AMP, cfg.SOLVER.AMP_DTYPE, cfg.SOLVER.CHANNELS_LAST) == (True, "float16", True)
    assert cfg.is_frozen()
    fp32 = P.apply(load_cfg(DIGITS), FP32)
    assert fp32.SOLVER.AMP is False and fp32.SOLVER.CHANNELS_LAST is False
    with pytest.raises(ValueError, match="resolved"):
        trainer_mod.autocast_context(load_cfg(DIGITS), torch.device("cpu"))


# ---------------------------------------------------------------- capability
@pytest.mark.parametrize("flags, native", [({"avx2", "fma"}, False), ({"avx512f", "avx512bw"}, False),
                                           ({"avx512f", "avx512_bf16"}, True), ({"amx_bf16", "amx_tile"}, True)])
def test_cpu_native_bf16_from_cpu_flags(monkeypatch, flags, native):
    monkeypatch.setattr(P, "_cpuinfo", lambda: ("Some CPU", flags))
    cap = P.detect_capability(torch.device("cpu"))
    assert cap.native_bf16 is native and cap.name == "Some CPU"


# ---------------------------------------------------------------- cache
def test_cache_hit_avoids_the_trial(tmp_path):
    cache = P.PrecisionCache(str(tmp_path))
    first = P.resolve(AUTO, CPU, timings(fp32=1.0, fp32_cl=0.6), cache, key="k")
    again = P.resolve(AUTO, CPU, no_trial, cache, key="k")
    assert first.decided_by == "trial" and again.decided_by == "cache"
    assert again.choice == first.choice == FP32_CL and again.timings_s == first.timings_s
    other = timings(fp32=0.5, fp32_cl=0.6)
    assert P.resolve(AUTO, CPU, other, cache, key="other").choice == FP32 and other.asked  # per key
    entries = json.loads((tmp_path / P.CACHE_FILE).read_text())["entries"]
    assert set(entries) == {"k", "other"}


def test_corrupt_cache_is_ignored_with_a_warning_and_rewritten(tmp_path, caplog, monkeypatch):
    # a run earlier in the session may have set up kdlab's console handler, which stops propagation
    monkeypatch.setattr(logging.getLogger("kdlab"), "propagate", True)
    (tmp_path / P.CACHE_FILE).write_text("{not json")
    cache = P.PrecisionCache(str(tmp_path))
    measure = timings(fp32=1.0, fp32_cl=0.6)
    with caplog.at_level("WARNING", logger="kdlab"):
        decision = P.resolve(AUTO, CPU, measure, cache, key="k")
    assert measure.asked and decision.decided_by == "trial"
    assert "precision cache" in caplog.text and "ignored" in caplog.text
    assert P.resolve(AUTO, CPU, no_trial, cache, key="k").decided_by == "cache"


def test_cache_key_names_device_pair_method_batch_and_input():
    cfg = load_cfg(os.path.join(REPO, "configs/digits/kd/digits_teacher_digits_student.yaml"))
    key = P.cache_key(CPU, cfg, 64, (1, 8, 8), [FP32, FP32_CL])
    for part in ("test CPU without bf16", torch.__version__, "KD", "digits_teacher->digits_student", "batch 64",
                 "1x8x8", f"threads {torch.get_num_threads()}"):
        assert part in key, part
    assert key != P.cache_key(CPU, cfg, 32, (1, 8, 8), [FP32, FP32_CL])
    dot = load_cfg(os.path.join(REPO, "configs/digits/kd/digits_teacher_digits_student.yaml"),
                   ["SOLVER.TRAINER", "dot"])
    assert "trainer base" in key and key != P.cache_key(CPU, dot, 64, (1, 8, 8), [FP32, FP32_CL])  # KD+DOT: its own


# ---------------------------------------------------------------- trial loop (fake clock)
class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def fake_steps(clock, per_image):
    """make_step for run_trial: a step on n images advances the fake clock by n * per_image[label]."""
    calls = []

    def make_step(choice):
        def step(n):
            calls.append((choice.label, n))
            clock.now += n * per_image[choice.label]
        return step

    return make_step, calls


def test_trial_times_candidates_interleaved_and_grows_the_batch():
    clock = FakeClock()
    make_step, calls = fake_steps(clock, {"fp32": 0.001, "fp32+channels_last": 0.0005})
    trial = P.run_trial(make_step, [FP32, FP32_CL], batch_size=64, budget_s=6.0, clock=clock)
    assert trial.timings_s == {FP32: pytest.approx(0.064), FP32_CL: pytest.approx(0.032)}
    assert calls[:2] == [("fp32", P.PROBE_IMAGES), ("fp32+channels_last", P.PROBE_IMAGES)]
    assert {n for _, n in calls[2:]} == {64} and "on 64 of 64 images" in trial.note
    assert [label for label, _ in calls[4:8]] == ["fp32", "fp32+channels_last", "fp32+channels_last", "fp32"]


def test_trial_that_does_not_fit_the_budget_is_skipped():
    clock = FakeClock()
    make_step, calls = fake_steps(clock, {"fp32": 1.0, "fp32+channels_last": 1.0})  # 8 s per probe step
    trial = P.run_trial(make_step, [FP32, FP32_CL], batch_size=64, budget_s=6.0, clock=clock)
    assert trial.timings_s is None and "budget" in trial.note and len(calls) == 2
    assert P.run_trial(make_step, [FP32, FP32_CL], 64, budget_s=0.0, clock=clock).timings_s is None


def test_a_candidate_that_fails_is_dropped_but_fp32_failing_is_an_error():
    clock = FakeClock()
    make_step, _ = fake_steps(clock, {"fp32": 0.001, "fp32+channels_last": 0.001, "bf16": 0.0001})

    def bf16_unsupported(choice):
        if choice.amp:
            raise RuntimeError('"slow_conv2d" not implemented for BFloat16')
        return make_step(choice)

    trial = P.run_trial(bf16_unsupported, [FP32, FP32_CL, BF16], batch_size=64, budget_s=6.0, clock=clock)
    assert set(trial.timings_s) == {FP32, FP32_CL}
    assert P.pick([FP32, FP32_CL, BF16], trial.timings_s) == FP32

    def nothing_runs(choice):
        raise RuntimeError("the model does not run at all")

    with pytest.raises(RuntimeError, match="does not run"):
        P.run_trial(nothing_runs, [FP32, FP32_CL], batch_size=64, budget_s=6.0, clock=clock)


def test_trial_budget_from_the_environment(monkeypatch):
    monkeypatch.setenv(P.BUDGET_ENV, "1.5")
    assert P.trial_budget(4) == 6.0
    monkeypatch.setenv(P.BUDGET_ENV, "soon")
    assert P.trial_budget(2) == 2 * P.TRIAL_BUDGET_S


# ---------------------------------------------------------------- the real trial
def _voc_opts(tmp_path):
    from fixtures_data import write_voc

    write_voc(tmp_path / "data", n_train=6, n_val=4)
    return ["DATASET.ROOT", str(tmp_path / "data"), "DATASET.IMAGE_SIZE", "32", "SOLVER.BATCH_SIZE", "4",
            "DATASET.NUM_WORKERS", "0"]


@pytest.mark.parametrize("config, extra", [
    ("configs/digits/kd/digits_teacher_digits_student.yaml", ["DISTILLER.MODEL_KWARGS.DROPOUT", "0.3"]),
    ("configs/digits/mlkd/digits_teacher_digits_student.yaml", []),  # two views
    ("configs/voc/vanilla/seg_small.yaml", None),  # segmentation
])
def test_trial_leaves_model_statistics_and_rng_untouched(tmp_path, monkeypatch, config, extra):
    import random

    import numpy as np

    from kdlab.data import build_dataloaders
    from kdlab.engine.builder import build_everything
    from kdlab.engine.run import resolve_precision

    monkeypatch.setenv(P.BUDGET_ENV, "0.5")
    cfg = load_cfg(os.path.join(REPO, config), ["SOLVER.DEVICE", "cpu"] + (extra if extra is not None
                                                                           else _voc_opts(tmp_path)))
    splits, distiller = build_everything(cfg, load_teacher_weights=False)
    train_loader, _, _ = build_dataloaders(cfg, splits=splits)
    before = {k: v.clone() for k, v in distiller.state_dict().items()}  # BatchNorm statistics included
    rng = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    decision = resolve_precision(cfg, distiller, train_loader, torch.device("cpu"), splits, use_cache=False)
    assert decision.decided_by == "trial" and len(decision.timings_s) >= 2, decision
    after = distiller.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(torch.get_rng_state(), rng[0]) and (np.random.get_state()[1] == rng[1]).all()
    assert random.getstate() == rng[2]
    assert distiller.student.training and all(p.grad is None for p in distiller.parameters())


# ---------------------------------------------------------------- config
@pytest.mark.parametrize("text, value", [("auto", "auto"), ("True", True), ("false", False), ("AUTO", "auto")])
def test_auto_true_false_load(text, value):
    cfg = load_cfg(DIGITS, ["SOLVER.AMP", text, "SOLVER.CHANNELS_LAST", text])
    assert cfg.SOLVER.AMP == value and cfg.SOLVER.CHANNELS_LAST == value
    assert load_cfg(DIGITS).SOLVER.AMP == "auto"  # the default


@pytest.mark.parametrize("key", ["SOLVER.AMP", "SOLVER.CHANNELS_LAST"])
@pytest.mark.parametrize("bad", ["maybe", "1", "[True]"])
def test_other_values_are_refused(key, bad):
    with pytest.raises(ConfigError, match=f"{key}: expected True, False or auto"):
        load_cfg(DIGITS, [key, bad])


def test_yaml_auto_and_print_config(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("SOLVER:\n  AMP: auto\n  CHANNELS_LAST: true\nDATASET:\n  TYPE: digits\n"
                    "DISTILLER:\n  TYPE: NONE\n  STUDENT: digits_student\n")
    cfg = load_cfg(str(path))
    assert cfg.SOLVER.AMP == "auto" and cfg.SOLVER.CHANNELS_LAST is True
    tool = load_script("tools/train.py", "train_tool")
    assert tool.main(["--cfg", DIGITS, "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["SOLVER"]["AMP"] == "auto" and printed["SOLVER"]["CHANNELS_LAST"] == "auto"


# ---------------------------------------------------------------- a digits run
def _run_files(run_dir):
    metrics = json.load(open(os.path.join(run_dir, "metrics.json")))
    text = open(os.path.join(run_dir, "config.yaml")).read()
    ckpt = torch.load(os.path.join(run_dir, "latest"), weights_only=True)
    return metrics, text, ckpt


def _choice(record: dict) -> tuple:
    return record["amp"], record["channels_last"]


def test_digits_run_records_resolves_and_reuses_its_choice(tmp_path, monkeypatch):
    """A real (short) trial: recorded in metrics.json, config.yaml and the checkpoint; cached; reused on resume."""
    monkeypatch.setenv(P.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(P.BUDGET_ENV, "1")
    native = P.detect_capability(torch.device("cpu")).native_bf16
    opts = lambda logs: digits_opts(str(tmp_path / logs), epochs=1, **{"SOLVER.MAX_STEPS_PER_EPOCH": 4})  # noqa: E731
    first = train(load_cfg(DIGITS, opts("logs")))
    metrics, text, ckpt = _run_files(first["run_dir"])
    rec = metrics["precision"]
    assert rec["decided_by"] == "trial", rec
    bf16 = {"bf16", "bf16+channels_last"} if native else set()
    assert set(rec["timings_s"]) == {"fp32", "fp32+channels_last"} | bf16
    assert rec["amp"] in ((False, "bfloat16") if native else (False,))
    assert ckpt["precision"] == rec
    saved = yaml.safe_load(text)["SOLVER"]  # the resolved values, with a comment saying auto chose them
    assert saved["AMP"] is bool(rec["amp"]) and saved["CHANNELS_LAST"] is rec["channels_last"]
    assert "# SOLVER.AMP, SOLVER.CHANNELS_LAST: auto in the config; here " in text
    assert yaml.safe_load(ckpt["config"])["SOLVER"]["CHANNELS_LAST"] is rec["channels_last"]

    # a second run of the same pair, batch and input: the cached choice, no trial
    monkeypatch.setattr(P, "run_trial", no_trial)
    second = train(load_cfg(DIGITS, opts("logs2")))
    again = _run_files(second["run_dir"])[0]["precision"]
    assert again["decided_by"] == "cache" and _choice(again) == _choice(rec)

    # interrupted mid-epoch, then resumed with no cache: the run's own choice, no trial
    original = trainer_mod.Trainer.train_step

    def stop_after_two_steps(self, batch, epoch, step, sums):
        out = original(self, batch, epoch, step, sums)
        self.stop_requested = self.global_step >= 1
        return out

    monkeypatch.setattr(trainer_mod.Trainer, "train_step", stop_after_two_steps)
    with pytest.raises(TrainingInterrupted):
        train(load_cfg(DIGITS, opts("logs3")))
    monkeypatch.setattr(trainer_mod.Trainer, "train_step", original)
    monkeypatch.setenv(P.CACHE_ENV, str(tmp_path / "empty-cache"))
    resumed = train(load_cfg(DIGITS, opts("logs3")), resume=True)
    rec3 = _run_files(resumed["run_dir"])[0]["precision"]
    assert rec3["decided_by"] == "resume" and _choice(rec3) == _choice(rec)
