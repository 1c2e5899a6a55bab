"""DISTILLER.TEACHER_CACHE in training runs: same losses as the teacher on the fly, the auto policy, refusals."""

from __future__ import annotations

import logging
import os
import shutil

import pytest
import torch
from conftest import REPO, digits_opts
from fixtures_data import write_cifar

from kdlab.config import load_cfg
from kdlab.data import teacher_cache as tc
from kdlab.distillers import Distiller
from kdlab.engine import trainer as trainer_mod
from kdlab.engine.run import train
from kdlab.engine.teacher_cache_run import DeviceRows
from kdlab.engine.trainer import TrainingInterrupted
from kdlab.errors import ConfigError
from kdlab.models import build_model

DIGITS = {m: os.path.join(REPO, f"configs/digits/{m}/digits_teacher_digits_student.yaml")
          for m in ("kd", "dkd", "dot", "fitnet")}
CIFAR_KD = os.path.join(REPO, "configs/cifar100/kd/resnet32x4_resnet8x4.yaml")
SHORT = {"SOLVER.MAX_STEPS_PER_EPOCH": 3, "SOLVER.BATCH_SIZE": 32, "DATASET.NUM_WORKERS": 0,
         "SOLVER.AMP": False, "SOLVER.CHANNELS_LAST": False, "LOG.SAVE_CHECKPOINT_FREQ": 0}


def _save(model, path) -> str:
    torch.save({"format": "kdlab-student", "model": model.state_dict(), "arch": "x", "num_classes": 10,
                "epoch": 0}, path)
    return str(path)


@pytest.fixture(scope="module")
def teachers(tmp_path_factory) -> dict:
    """Untrained teachers (the cache must reproduce whatever the teacher computes): digits x2 and CIFAR resnet8."""
    folder, out = tmp_path_factory.mktemp("teachers"), {}
    for name, arch, classes, seed in (("digits", "digits_teacher", 10, 0), ("digits2", "digits_teacher", 10, 1),
                                      ("cifar", "resnet8", 100, 0)):
        torch.manual_seed(seed)
        out[name] = _save(build_model(arch, classes, **({"in_channels": 1} if "digits" in name else {})),
                          folder / f"{name}.pth")
    write_cifar(folder / "cifar", "cifar100", n_train=8, n_test=4)
    out["cifar_root"] = str(folder / "cifar")
    return out


def _cfg(kind: str, prefix, teachers: dict, epochs: int = 2, **extra):
    if kind == "cifar":
        extra = {"DATASET.ROOT": teachers["cifar_root"], "DISTILLER.TEACHER": "resnet8", "DISTILLER.STUDENT": "resnet8",
                 "DISTILLER.TEACHER_CKPT": teachers["cifar"], "SOLVER.BATCH_SIZE": 4, "DATASET.TEST.BATCH_SIZE": 4,
                 **extra}
        path = extra.pop("CFG", CIFAR_KD)
    else:
        extra = {"DISTILLER.TEACHER_CKPT": teachers["digits"], **extra}
        path = DIGITS[extra.pop("CFG", "kd")]
    opts = {**SHORT, **extra}
    logit_stand = bool(opts.pop("LOGIT_STAND", False))
    return load_cfg(path, digits_opts(str(prefix), epochs=epochs, **opts), logit_stand=logit_stand)


@pytest.fixture
def losses(monkeypatch) -> list:
    """Every training step's loss terms, in order, and with them whether the teacher ran in that step."""
    out, step, forward = [], trainer_mod.Trainer.train_step, Distiller.teacher_forward
    calls = []

    def recorded(self, *args):
        calls.clear()
        terms = step(self, *args)
        out.append({**{k: v.item() for k, v in terms.items()}, "teacher_ran": bool(calls)})
        return terms

    def counted(self, image):
        calls.append(1)
        return forward(self, image)

    monkeypatch.setattr(trainer_mod.Trainer, "train_step", recorded)
    monkeypatch.setattr(Distiller, "teacher_forward", counted)
    return out


@pytest.fixture
def messages() -> list:
    records: list = []
    handler = logging.Handler()
    handler.emit = lambda r: records.append(r.getMessage())
    logging.getLogger("kdlab").addHandler(handler)
    yield records
    logging.getLogger("kdlab").removeHandler(handler)


def _assert_close(cached: list, on_the_fly: list) -> None:
    assert len(cached) == len(on_the_fly) and cached and cached[0].keys() == on_the_fly[0].keys()
    for x, y in zip(cached, on_the_fly):
        assert not x.pop("teacher_ran") and y.pop("teacher_ran")  # the cache stood in for the teacher
        for k in x:
            assert x[k] == pytest.approx(y[k], rel=2e-6, abs=1e-7), (k, x[k], y[k])


CASES = {"digits-kd": ("digits", {}), "digits-dkd-ls": ("digits", {"CFG": "dkd", "LOGIT_STAND": True}),
         "digits-dot": ("digits", {"CFG": "dot"}), "digits-val-split": ("digits", {"DATASET.VAL_SPLIT": 0.2}),
         "cifar-kd": ("cifar", {}),
         "cifar-kd-ls": ("cifar", {"LOGIT_STAND": True})}


@pytest.mark.parametrize("case", CASES)
def test_cached_run_equals_teacher_on_the_fly(case, tmp_path, teachers, losses):
    kind, extra = CASES[case]
    plain = train(_cfg(kind, tmp_path / "plain", teachers, **extra))
    on_the_fly = list(losses)
    losses.clear()
    cached = train(_cfg(kind, tmp_path / "cached", teachers, **extra, **{"DISTILLER.TEACHER_CACHE": "build"}))
    record = cached["teacher_cache"]
    assert record["used"] and record["built"] and os.path.isdir(record["path"])
    assert record["path"].startswith(str(tmp_path / "cached" / "teacher_cache"))
    assert plain["teacher_cache"] == {"mode": "off", "used": False, "path": None}
    _assert_close(losses, on_the_fly)
    assert len(losses) == (6 if kind == "digits" else 4)  # 2 epochs of 3 steps, or of 8 images in 4s
    assert cached["last_acc"] == plain["last_acc"]
    assert [h["test_loss"] for h in cached["history"]] == pytest.approx([h["test_loss"] for h in plain["history"]],
                                                                       rel=1e-5)


def test_auto_uses_an_existing_cache_and_resume_stays_exact(tmp_path, teachers, monkeypatch):
    opts = {"DISTILLER.TEACHER_CACHE": "auto", "DISTILLER.TEACHER_CACHE_DIR": str(tmp_path / "caches"),
            "SOLVER.MAX_STEPS_PER_EPOCH": 4}
    # 9 full epochs pay for a 9-view build: auto builds; a 2-epoch run with the same teacher then finds it
    built = train(_cfg("digits", tmp_path / "long", teachers, epochs=9, **{
        **opts, "SOLVER.MAX_STEPS_PER_EPOCH": 0, "SOLVER.BATCH_SIZE": 512}))
    assert built["teacher_cache"]["built"]
    reference = train(_cfg("digits", tmp_path / "ref", teachers, **opts))
    assert reference["teacher_cache"]["used"] and "built" not in reference["teacher_cache"]
    assert reference["teacher_cache"]["path"] == built["teacher_cache"]["path"]
    original = trainer_mod.Trainer.train_step

    def stop_mid_epoch_2(self, *args):
        out = original(self, *args)
        if self.global_step == 6:
            self.stop_requested = True
        return out

    monkeypatch.setattr(trainer_mod.Trainer, "train_step", stop_mid_epoch_2)
    with pytest.raises(TrainingInterrupted):
        train(_cfg("digits", tmp_path / "cut", teachers, **opts))
    monkeypatch.setattr(trainer_mod.Trainer, "train_step", original)
    resumed = train(_cfg("digits", tmp_path / "cut", teachers, **opts), resume=True)
    assert resumed["teacher_cache"]["used"]
    a = torch.load(os.path.join(resumed["run_dir"], "student_latest"), weights_only=True)["model"]
    b = torch.load(os.path.join(reference["run_dir"], "student_latest"), weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_auto_too_few_epochs_does_not_build_and_says_why(tmp_path, teachers, messages):
    summary = train(_cfg("digits", tmp_path, teachers, **{"DISTILLER.TEACHER_CACHE": "auto"}))
    record = summary["teacher_cache"]
    assert not record["used"] and not os.path.exists(record["path"])
    # 2 epochs of 3 steps of 32 images: 192 teacher forwards against 1437 x 9 for the build
    why = "192 teacher forwards (2 epochs x 96 images) are fewer than the 12933 of building the cache (1437 images"
    assert why in record["reason"] and "it pays from 135 epochs" in record["reason"]
    assert any(m.startswith("teacher cache not used:") and why in m for m in messages)
    assert summary["last_epoch"] == 2


def test_auto_with_a_feature_method_says_why_and_trains(tmp_path, teachers, messages):
    summary = train(_cfg("digits", tmp_path, teachers, CFG="fitnet", **{"DISTILLER.TEACHER_CACHE": "auto"}))
    assert not summary["teacher_cache"]["used"] and summary["last_epoch"] == 2
    assert any("DISTILLER.TYPE FITNET uses more of its teacher than the logits" in m for m in messages)


def test_build_refuses_ineligible_configs(tmp_path, teachers):
    with pytest.raises(ConfigError, match="DISTILLER.TEACHER_CACHE build: DISTILLER.TYPE FITNET uses more"):
        _cfg("digits", tmp_path, teachers, CFG="fitnet", **{"DISTILLER.TEACHER_CACHE": "build"})
    per_sample = _cfg("cifar", tmp_path, teachers, **{"DISTILLER.TEACHER_CACHE": "build", "DATASET.GPU_AUGMENT": False})
    with pytest.raises(ConfigError, match="DISTILLER.TEACHER_CACHE build: DATASET.GPU_AUGMENT is False"):
        train(per_sample)
    assert not os.path.exists(tmp_path / "teacher_cache")
    with pytest.raises(ConfigError, match=r"DISTILLER.TEACHER_CACHE 'sometimes': use one of off, auto, build"):
        _cfg("digits", tmp_path, teachers, **{"DISTILLER.TEACHER_CACHE": "sometimes"})
    with pytest.raises(ConfigError, match=r"DISTILLER.TEACHER_CACHE_DTYPE 'float16': use one of float32, bfloat16"):
        _cfg("digits", tmp_path, teachers, **{"DISTILLER.TEACHER_CACHE_DTYPE": "float16"})


def _key_path(cfg) -> str:
    """The cache path a run of cfg would use."""
    from kdlab.engine.builder import build_everything

    splits, distiller = build_everything(cfg)
    return tc.resolve_cache(cfg, distiller.teacher, splits).path


def test_a_cache_of_other_teacher_weights_is_refused(tmp_path, teachers, messages):
    opts = {"DISTILLER.TEACHER_CACHE_DIR": str(tmp_path / "caches"), "SOLVER.MAX_STEPS_PER_EPOCH": 1}
    first = train(_cfg("digits", tmp_path / "a", teachers, epochs=1, **opts, **{"DISTILLER.TEACHER_CACHE": "build"}))
    other = {**opts, "DISTILLER.TEACHER_CKPT": teachers["digits2"]}
    target = _key_path(_cfg("digits", tmp_path / "b", teachers, **other))
    # none at teacher 2's path: auto says so, names the cache of teacher 1 beside it and how it differs
    missing = train(_cfg("digits", tmp_path / "b0", teachers, epochs=1, **other, **{"DISTILLER.TEACHER_CACHE": "auto"}))
    assert f"no cache at {target} ({first['teacher_cache']['path']} is for other settings: teacher weights differ" in (
        missing["teacher_cache"]["reason"])
    shutil.copytree(first["teacher_cache"]["path"], target)  # teacher 1's logits where teacher 2's would be
    summary = train(_cfg("digits", tmp_path / "b", teachers, epochs=1, **other, **{"DISTILLER.TEACHER_CACHE": "auto"}))
    record = summary["teacher_cache"]
    assert not record["used"] and record["path"] == target and "teacher" in record["refused"]
    assert any(m.startswith(f"teacher cache not used: teacher cache {target} does not match this run: teacher "
                            "weights differ") for m in messages)
    with pytest.raises(tc.CacheMismatch, match="DISTILLER.TEACHER_CACHE build: teacher cache .* weights differ"):
        train(_cfg("digits", tmp_path / "c", teachers, epochs=1, **other, **{"DISTILLER.TEACHER_CACHE": "build"}))


def test_evaluation_never_uses_the_cache(tmp_path, teachers, monkeypatch):
    summary = train(_cfg("digits", tmp_path / "run", teachers, epochs=1, **{"DISTILLER.TEACHER_CACHE": "build"}))
    cache = tc.TeacherCache.open(summary["teacher_cache"]["path"])
    index, views = torch.randint(0, cache.num_images, (50,)), torch.randint(0, cache.num_views, (50,))
    resident = DeviceRows(cache, torch.device("cpu"), rows_per_copy=1000)  # what CUDA runs use, here on the CPU
    assert torch.equal(resident.lookup(index, views, "cpu"), cache.lookup(index, views, "cpu"))
    looked_up = []
    monkeypatch.setattr(type(cache), "lookup", lambda self, *a: looked_up.append(a))
    from kdlab.data import build_dataloaders
    from kdlab.engine.builder import build_everything

    cfg = _cfg("digits", tmp_path / "eval", teachers)
    splits, distiller = build_everything(cfg)
    train_loader, val_loader, _ = build_dataloaders(cfg, splits=splits)
    scores = [trainer_mod.Trainer(cfg, distiller, train_loader, val_loader, str(tmp_path / name), torch.device("cpu"),
                                  teacher_cache=c).evaluate() for name, c in (("with", cache), ("without", None))]
    assert scores[0] == scores[1] and not looked_up


def test_under_torchrun_an_existing_cache_is_used_and_a_missing_one_is_an_error(tmp_path, teachers, monkeypatch):
    from kdlab import distributed as dist_utils
    from kdlab.engine import teacher_cache_run
    from kdlab.engine.builder import build_everything

    opts = {"DISTILLER.TEACHER_CACHE_DIR": str(tmp_path / "caches"), "DISTILLER.TEACHER_CACHE": "build"}
    cfg = _cfg("digits", tmp_path, teachers, **opts)
    splits, distiller = build_everything(cfg)
    monkeypatch.setattr(dist_utils, "is_distributed", lambda: True)
    with pytest.raises(ConfigError, match=r"does not exist; under torchrun it is not built: build it first with "
                                          r"tools/cache_teacher.py --cfg"):
        teacher_cache_run.plan_teacher_cache(cfg, distiller, splits, torch.device("cpu"))
    monkeypatch.setattr(dist_utils, "is_distributed", lambda: False)
    built = teacher_cache_run.plan_teacher_cache(cfg, distiller, splits, torch.device("cpu"))
    monkeypatch.setattr(dist_utils, "is_distributed", lambda: True)
    used = teacher_cache_run.plan_teacher_cache(cfg, distiller, splits, torch.device("cpu"))
    assert built.record["built"] and used.used and "built" not in used.record
    assert used.record["path"] == built.record["path"]


def test_a_corrupt_cache_is_repaired_under_auto_and_says_so(tmp_path, teachers, messages):
    opts = {"DISTILLER.TEACHER_CACHE_DIR": str(tmp_path / "caches"), "SOLVER.MAX_STEPS_PER_EPOCH": 1}
    first = train(_cfg("digits", tmp_path / "a", teachers, epochs=1, **opts, **{"DISTILLER.TEACHER_CACHE": "build"}))
    path = first["teacher_cache"]["path"]
    good = tc.TeacherCache.open(path).lookup(torch.arange(3), torch.arange(3), "cpu")
    with open(os.path.join(path, "logits.bin"), "r+b") as f:  # flip a byte of image 0's rows
        byte = f.read(1)
        f.seek(0)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(tc.CacheCorrupt):
        tc.TeacherCache.open(path)
    # a 1-epoch run does not pay for a build, but a damaged cache is repaired whatever the run's length
    again = train(_cfg("digits", tmp_path / "b", teachers, epochs=1, **opts, **{"DISTILLER.TEACHER_CACHE": "auto"}))
    record = again["teacher_cache"]
    assert record["used"] and record["built"] and "fails its sha256 checksum" in record["repaired"]
    assert any("rebuilding the chunks that fail their checksum" in m for m in messages)
    assert torch.equal(tc.TeacherCache.open(path).lookup(torch.arange(3), torch.arange(3), "cpu"), good)


def test_logit_only_methods_take_the_teachers_logits_instead_of_running_it(monkeypatch):
    """Each method declaring teacher_logits_only computes the same losses from teacher_logits= without its teacher;
    the declaration is on exactly the methods whose only use of the teacher is the logits of the one view."""
    from kdlab.distillers import DISTILLERS, DatasetFacts, build_distiller

    logit_only = {name for name in DISTILLERS.names() if DISTILLERS.get(name).teacher_logits_only}
    assert logit_only == {"KD", "DKD", "CTKD", "CTKD_DKD", "CONKD"}
    facts = DatasetFacts(num_classes=10, num_train=64, input_size=(8, 8), in_channels=1)
    for name in sorted(logit_only):
        cfg = load_cfg(None, ["DISTILLER.TYPE", name, "DISTILLER.TEACHER", "digits_teacher", "DISTILLER.STUDENT",
                              "digits_student", "DATASET.TYPE", "digits"])
        torch.manual_seed(0)
        d = build_distiller(cfg, build_model("digits_student", 10, in_channels=1),
                            build_model("digits_teacher", 10, in_channels=1), facts=facts).train()
        image, target = torch.randn(16, 1, 8, 8), torch.arange(16) % 10
        teacher_logits = d.teacher(image)[0].detach()
        state = torch.get_rng_state()
        _, expected = d(image, target, epoch=2, index=torch.arange(16))
        torch.set_rng_state(state)
        monkeypatch.setattr(d.teacher, "forward", lambda x, name=name: pytest.fail(f"{name} ran its teacher"))
        _, got = d(image, target, epoch=2, index=torch.arange(16), teacher_logits=teacher_logits)
        monkeypatch.undo()
        assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in got), name


def test_a_cache_built_ahead_by_tools_cache_teacher_is_used_by_auto(tmp_path, teachers):
    """The tool and the trainer derive the same key and path (SOLVER.AMP auto included) for the same config."""
    from conftest import load_script

    tool = load_script("tools/cache_teacher.py", "cache_teacher_for_run")
    opts = {"SOLVER.AMP": "auto", "SOLVER.CHANNELS_LAST": "auto", "SOLVER.MAX_STEPS_PER_EPOCH": 1}
    cfg_opts = digits_opts(str(tmp_path), epochs=1, **{**SHORT, **opts, "DISTILLER.TEACHER_CKPT": teachers["digits"]})
    assert tool.main(["--cfg", DIGITS["kd"], *cfg_opts]) == 0
    summary = train(_cfg("digits", tmp_path, teachers, epochs=1, **opts, **{"DISTILLER.TEACHER_CACHE": "auto"}))
    record = summary["teacher_cache"]
    assert record["used"] and "built" not in record and os.path.isdir(record["path"])
    assert tc.TeacherCache.open(record["path"]).meta["teacher_test_acc"] is not None


def test_tools_cache_teacher_follows_the_runs_cached_precision_trial(tmp_path, teachers, monkeypatch, capsys):
    """Where a run's trial decided SOLVER.AMP / CHANNELS_LAST auto, the tool reads that decision (same key)."""
    import json

    from conftest import load_script

    monkeypatch.setenv("KDLAB_CACHE_DIR", str(tmp_path / "precision"))
    monkeypatch.setenv("KDLAB_PRECISION_TRIAL_S", "0.05")
    opts = {"SOLVER.AMP": "auto", "SOLVER.CHANNELS_LAST": "auto", "SOLVER.MAX_STEPS_PER_EPOCH": 1}
    first = train(_cfg("digits", tmp_path / "a", teachers, epochs=1, **opts))
    assert first["precision"]["decided_by"] == "trial"
    store = tmp_path / "precision" / "precision.json"
    data = json.loads(store.read_text())
    for entry in data["entries"].values():  # whatever the trial found, the cached decision is now NHWC
        entry["channels_last"] = True
    store.write_text(json.dumps(data))
    tool = load_script("tools/cache_teacher.py", "cache_teacher_precision")
    run_opts = {**SHORT, **opts, "DISTILLER.TEACHER_CKPT": teachers["digits"]}
    cfg_opts = digits_opts(str(tmp_path / "b"), epochs=1, **run_opts)
    capsys.readouterr()
    assert tool.main(["--cfg", DIGITS["kd"], *cfg_opts]) == 0
    assert "fp32+channels_last (decided by cache" in capsys.readouterr().err
    second = train(_cfg("digits", tmp_path / "b", teachers, epochs=1, **opts, **{"DISTILLER.TEACHER_CACHE": "auto"}))
    assert second["precision"]["decided_by"] == "cache" and second["precision"]["channels_last"] is True
    assert second["teacher_cache"]["used"] and "built" not in second["teacher_cache"]
