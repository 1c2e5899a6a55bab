"""Every key of the defaults does something: given a value other than its context's, it (a) changes a short
digits run, or an explicit small check, or (b) is refused at load time.
The keys are walked from the defaults, so a new key nobody wired up fails here.

A run is in-process: 2 epochs of 2 steps (batch 16) of the key's method on digits (method groups under their
method, KD's also under MLKD; the rest under KD), compared by a fingerprint with the same context's run.
"""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest
import torch
from conftest import REPO

from kdlab.config import flatten, get_cfg, load_cfg
from kdlab.engine import trainer as trainer_mod
from kdlab.engine.loggers import RunLogger
from kdlab.engine.run import train
from kdlab.errors import ConfigError

METHOD_CONFIGS = {m: os.path.join(REPO, f"configs/digits/{m.lower()}/digits_teacher_digits_student.yaml")
                  for m in ("KD", "MLKD", "DKD", "FITNET", "CONKD", "FEATKD", "PKT", "RKD", "KDSVD", "AT", "SP", "NST",
                            "REVIEWKD", "OFD", "VID", "CRD", "CTKD", "LG")}
METHOD_GROUPS = {"KD": ("KD", "MLKD"), "DKD": ("DKD",), "FITNET": ("FITNET",), "CONKD": ("CONKD",),
                 "FEATKD": ("FEATKD",), "PKT": ("PKT",), "RKD": ("RKD",), "KDSVD": ("KDSVD",),
                 "AT": ("AT",), "SP": ("SP",), "NST": ("NST",), "REVIEWKD": ("REVIEWKD",),
                 "OFD": ("OFD",), "VID": ("VID",), "CRD": ("CRD",), "CTKD": ("CTKD",), "LG": ("LG",)}
# Short runs in which warm-up (epoch 1) and an LR decay (epoch 2) both happen.
COMMON = {"SOLVER.EPOCHS": 2, "SOLVER.MAX_STEPS_PER_EPOCH": 2, "SOLVER.BATCH_SIZE": 16, "SOLVER.SCHEDULER": "multistep",
          "SOLVER.WARMUP_EPOCHS": 1, "SOLVER.LR_DECAY_STAGES": [1], "DATASET.NUM_WORKERS": 0, "SOLVER.DEVICE": "cpu",
          "LOG.PROGRESS": False, "LOG.SAVE_CHECKPOINT_FREQ": 0, "LOG.TENSORBOARD_FREQ": 500}
# Keys that act only together with another setting: that setting joins their context.
CONTEXT = {"SOLVER.MIN_LR": {"SOLVER.SCHEDULER": "cosine", "SOLVER.WARMUP_EPOCHS": 0},
           "SOLVER.BETAS": {"SOLVER.TYPE": "Adam"}, "SOLVER.AMP_DTYPE": {"SOLVER.AMP": True},
           "SOLVER.DOT.DELTA": {"SOLVER.TRAINER": "dot"},
           "DISTILLER.TEACHER_CACHE_DIR": {"DISTILLER.TEACHER_CACHE": "build"},
           "DISTILLER.TEACHER_CACHE_DTYPE": {"DISTILLER.TEACHER_CACHE": "build"},
           "CTKD.HIDDEN": {"CTKD.MODE": "instance"}, "LG.EXTRA_WEIGHT_IN": {"EXPERIMENT.LOGIT_STAND": True},
           "CLASSIFIER.BATCHNORM": {"CLASSIFIER.HIDDEN": "[16]"}, "CLASSIFIER.DROPOUT": {"CLASSIFIER.HIDDEN": "[16]"},
           **{f"LG.{k}": {"LG.ENABLE_INTER": True} for k in ("INTER_TRANSFORM", "INTER_TEACHER_INDEX",
                                                             "INTER_STUDENT_INDEX", "INTER_WEIGHT")}}
REFUSED_AT_LOAD = {"DATASET.IMAGE_SIZE",  # digits images are 8x8 and never resized
                   "DATASET.PIPELINE",  # tiny_transformers is CIFAR's (test_lg.py builds it)
                   "SOLVER.AMP_DTYPE",  # float16 autocast needs CUDA
                   "SOLVER.TRAINER"}  # aug/ours feed two views, which KD does not take (MLKD takes them anyway)


def _check_root(tmp_path, value):
    from kdlab.data.build import build_datasets
    from kdlab.errors import DatasetNotFoundError

    cfg = load_cfg(None, ["DATASET.TYPE", "cifar10", "DATASET.ROOT", str(tmp_path / "elsewhere")])
    with pytest.raises(DatasetNotFoundError, match=str(tmp_path / "elsewhere")):
        build_datasets(cfg)


def _check_device(tmp_path, value):
    from kdlab.engine.builder import select_device

    def outcome(device):
        try:
            return str(select_device(load_cfg(None, ["SOLVER.DEVICE", device])))
        except ConfigError as exc:
            return str(exc)
    assert outcome("cuda") != outcome("cpu")  # the GPU, or an error naming SOLVER.DEVICE where there is none


def _check_compile(tmp_path, value):
    from kdlab.engine.run import prepare_distiller

    def compiled(on):
        net = torch.nn.Module()
        net.student, net.teacher = torch.nn.Linear(2, 2), None
        prepare_distiller(load_cfg(None, ["SOLVER.COMPILE", str(on)]), net, torch.device("cpu"))
        return net.student._compiled_call_impl is not None
    assert compiled(True) and not compiled(False)


def _check_plateau(tmp_path, value):
    from kdlab.engine.optim import build_scheduler

    def lrs(*opts):
        sched = build_scheduler(load_cfg(None, ["SOLVER.SCHEDULER", "plateau", *opts]))
        out = []
        for epoch in range(1, 12):  # accuracy falls while the loss improves: the metric matters
            out.append(sched.lr(epoch))
            sched.observe({"test_acc": 50.0 - epoch, "test_loss": 1.0 / epoch})
        return out
    base = lrs()
    for opts in (["SOLVER.PLATEAU_METRIC", "test_loss"], ["SOLVER.PLATEAU_PATIENCE", "6"],
                 ["SOLVER.PLATEAU_FACTOR", "0.5"]):
        assert lrs(*opts) != base, opts


def _check_early_stop(tmp_path, value):
    stops = lambda p: trainer_mod.Trainer._early_stop(  # noqa: E731
        SimpleNamespace(cfg=load_cfg(None, ["SOLVER.EARLY_STOP_PATIENCE", str(p)]), bad_epochs=1))
    assert stops(1) and not stops(0)


def _reviewkd_distiller(*opts):
    from kdlab.distillers import DatasetFacts, build_distiller
    from kdlab.models import build_model

    cfg = load_cfg(METHOD_CONFIGS["REVIEWKD"], list(opts))
    return build_distiller(cfg, build_model("digits_student", 10, in_channels=1),
                           build_model("digits_teacher", 10, in_channels=1), facts=DatasetFacts(input_size=(8, 8)))


def _check_reviewkd_list(tmp_path, key):
    """The per-pair lists must be the models' own: another value is a ConfigError naming the key and the models'."""
    right = {"REVIEWKD.SHAPES": [1, 4, 8, 8], "REVIEWKD.OUT_SHAPES": [1, 2, 4, 8],
             "REVIEWKD.IN_CHANNELS": [16, 16, 32, 32], "REVIEWKD.OUT_CHANNELS": [32, 64, 128, 128]}[key]
    _reviewkd_distiller()  # the shipped values build
    with pytest.raises(ConfigError) as info:
        _reviewkd_distiller(key, str([v * 2 for v in right]))
    assert f"{key} {[v * 2 for v in right]} does not match" in str(info.value) and str(right) in str(info.value)


def _check_reviewkd_mid(tmp_path, key):
    """mdistiller reads MAX_MID_CHANNEL but never uses it: kdlab warns and builds the same ABFs."""
    import logging

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("kdlab").addHandler(handler)
    try:
        torch.manual_seed(0)
        same = _reviewkd_distiller("REVIEWKD.MAX_MID_CHANNEL", "16").abfs.state_dict()
    finally:
        logging.getLogger("kdlab").removeHandler(handler)
    torch.manual_seed(0)
    default = _reviewkd_distiller().abfs.state_dict()
    assert all(torch.equal(default[k], same[k]) for k in default) and default.keys() == same.keys()
    assert any("REVIEWKD.MAX_MID_CHANNEL 16 is not used" in r.getMessage() for r in records)


def _check_vid_input_size(tmp_path, value):
    """It sizes the zero batch that probes the stage channels (which do not depend on it on digits): a size the
    models cannot take is a ConfigError naming it, and empty asks for the dataset's size."""
    from kdlab.distillers import DISTILLERS, DatasetFacts, build_distiller
    from kdlab.models import build_model

    def build(size):
        cfg = load_cfg(METHOD_CONFIGS["VID"], ["VID.INPUT_SIZE", str(size)])
        return build_distiller(cfg, build_model("digits_student", 10, in_channels=1),
                               build_model("digits_teacher", 10, in_channels=1), facts=DatasetFacts(input_size=(8, 8)))
    build([8, 8])
    with pytest.raises(ConfigError, match=r"VID\.INPUT_SIZE \[0, 0\]"):
        build([0, 0])
    assert DISTILLERS.get("VID").needed_facts(load_cfg(METHOD_CONFIGS["VID"], ["VID.INPUT_SIZE", "[]"])) == (
        "input_size",)


def _check_crd_dims(tmp_path, key):
    """CRD.FEAT.STUDENT_DIM / TEACHER_DIM state the models' pooled-feature sizes: the heads follow the models,
    and a value that differs is reported (a digits run cannot show it: the right value changes nothing)."""
    import logging

    from kdlab.distillers import build_distiller
    from kdlab.models import build_model

    path = os.path.join(REPO, "configs/digits/crd/digits_teacher_digits_student.yaml")
    head, right = {"CRD.FEAT.STUDENT_DIM": ("embed_s", 32), "CRD.FEAT.TEACHER_DIM": ("embed_t", 128)}[key]
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("kdlab").addHandler(handler)
    try:
        for value in (right, 2 * right):
            cfg = load_cfg(path, ["SOLVER.DEVICE", "cpu", key, str(value)])
            distiller = build_distiller(cfg, build_model("digits_student", 10), build_model("digits_teacher", 10))
            assert getattr(distiller, head).linear.in_features == right
            warned = [r.getMessage() for r in records if key in r.getMessage()]
            if value == right:
                assert not warned, warned
            else:
                assert len(warned) == 1 and f"{key} {value} differs" in warned[0], warned
    finally:
        logging.getLogger("kdlab").removeHandler(handler)


def _check_ctkd_lambda(tmp_path, key):
    """The lambda keys scale the temperature's (reversed) gradient, by less than float32 resolves in a 4-step run
    from an untrained teacher: the check is the gradient itself."""
    from kdlab.distillers import DatasetFacts, build_distiller
    from kdlab.models import build_model

    def grad(*opts):
        cfg = load_cfg(METHOD_CONFIGS["CTKD"], list(opts))
        torch.manual_seed(0)
        d = build_distiller(cfg, build_model("digits_student", 10, in_channels=1),
                            build_model("digits_teacher", 10, in_channels=1), facts=DatasetFacts()).train()
        _, losses = d(torch.randn(8, 1, 8, 8), torch.arange(8), epoch=3)
        sum(losses.values()).backward()
        return d.temp_module.global_T.grad.item()
    value = {"CTKD.COSINE_DECAY": "False", "CTKD.DECAY_MAX": "0.5", "CTKD.DECAY_MIN": "-0.5",
             "CTKD.DECAY_LOOPS": "20"}[key]
    assert grad() != 0 and grad(key, value) != grad()


def _check_pixels(tmp_path, key):
    """Segmentation only: the KD term over all pixels (sum / batch) differs from the mean over labelled ones."""
    from kdlab.distillers import DatasetFacts, build_distiller
    from kdlab.models import build_model

    def loss_kd(*opts):
        cfg = load_cfg(None, ["DATASET.TYPE", "voc", "DISTILLER.TYPE", key.split(".")[0], "FEATKD.STUDENT_LAYERS",
                              "[2]", "FEATKD.TEACHER_LAYERS", "[2]", *opts])
        torch.manual_seed(0)
        d = build_distiller(cfg, build_model("seg_small", 21), build_model("seg_small", 21),
                            facts=DatasetFacts(num_classes=21, input_size=(16, 16))).train()
        target = torch.randint(0, 21, (2, 16, 16))
        target[:, :4] = 255
        return d(torch.randn(2, 3, 16, 16), target, epoch=1)[1]["loss_kd"].item()
    assert loss_kd(key, "all") > 10 * loss_kd()  # 256 pixels summed vs 192 labelled ones averaged


def _check_normalize(tmp_path, value):
    """digits has one channel (imagenet is refused there): on CIFAR the statistics follow the key."""
    from fixtures_data import write_cifar

    from kdlab.data.build import build_datasets
    from kdlab.data.transforms import CIFAR10_MEAN, IMAGENET_MEAN

    write_cifar(tmp_path / "cifar", "cifar10", n_train=20, n_test=10)
    means = {}
    for choice in ("auto", "dataset", "imagenet"):
        cfg = load_cfg(None, ["DATASET.TYPE", "cifar10", "DATASET.ROOT", str(tmp_path / "cifar"),
                              "DATASET.NORMALIZE", choice])
        means[choice] = build_datasets(cfg).val_batch_transform.mean
    assert means == {"auto": CIFAR10_MEAN, "dataset": CIFAR10_MEAN, "imagenet": IMAGENET_MEAN}


# (a) by an explicit check, or a reason why no digits run can show the key (keep this short and honest).
NOT_SEEN_IN_A_DIGITS_RUN = {
    "DATASET.TYPE": "picks the dataset; each builder has its own tests (test_data_*.py, test_voc.py)",
    "DATASET.ROOT": _check_root,
    "DATASET.DOWNLOAD": "fetches a missing dataset; tested with a faked downloader in test_data_cifar.py",
    "DATASET.VARIANT": "imagenette only: picks the on-disk variant (test_data_imagenet.py)",
    "DATASET.GPU_AUGMENT": "CIFAR only: augments whole batches on the device (test_data_cifar.py)",
    "DATASET.NORMALIZE": _check_normalize,
    "DISTILLER.TEACHER_PRETRAINED": "torchvision weights of ImageNet teachers (test_models_torchvision.py, "
                                    "test_pretrained_cifar.py)",
    "SOLVER.DEVICE": _check_device,
    "SOLVER.COMPILE": _check_compile,
    "SOLVER.SKIP_NONFINITE": "acts on a NaN/Inf loss only (test_faults.py::test_skip_nonfinite_skips_the_batch)",
    "SOLVER.DIST_BACKEND": "torchrun only (test_distributed.py)",
    "SOLVER.SYNC_BN": "torchrun on CUDA only; refused on CPU by run.wrap_distributed",
    "SOLVER.PLATEAU_METRIC": _check_plateau,
    "SOLVER.PLATEAU_PATIENCE": _check_plateau,
    "SOLVER.PLATEAU_FACTOR": _check_plateau,
    "SOLVER.EARLY_STOP_PATIENCE": _check_early_stop,
    "LOG.WANDB": "logs to Weights & Biases (test_wandb.py runs it offline)",
    "FITNET.INPUT_SIZE": "sizes the zero batch that probes feature shapes; it changes the connector only for "
                         "pairs whose feature maps differ in size at the hint layer, which the digits pair does not",
    "FEATKD.INPUT_SIZE": "as FITNET.INPUT_SIZE (FEATKD's connectors pool or upsample to the teacher's size)",
    **{f"REVIEWKD.{k}": _check_reviewkd_list for k in ("SHAPES", "OUT_SHAPES", "IN_CHANNELS", "OUT_CHANNELS")},
    "REVIEWKD.MAX_MID_CHANNEL": _check_reviewkd_mid,
    "VID.INPUT_SIZE": _check_vid_input_size,
    "CRD.FEAT.STUDENT_DIM": _check_crd_dims,  # the heads follow the models; another value is reported
    "CRD.FEAT.TEACHER_DIM": _check_crd_dims,
    **{f"CTKD.{k}": _check_ctkd_lambda for k in ("COSINE_DECAY", "DECAY_MAX", "DECAY_MIN", "DECAY_LOOPS")},
    "KD.PIXELS": _check_pixels,
    "FEATKD.PIXELS": _check_pixels,
    "CONKD.KD_ON": "embeddings needs a teacher file holding a projection head (a SUPCON run's student_best); "
                   "test_probe_and_selection.py::test_conkd_embeddings_distils_the_teachers_saved_head runs it",
}


def _value(key: str, current, ckpts: dict):
    """A value other than `current` that is valid on digits; extra opts it needs."""
    special = {
        "EXPERIMENT.NAME": "renamed", "EXPERIMENT.TAG": "retagged", "EXPERIMENT.PROJECT": "elsewhere",
        "DATASET.IMAGE_SIZE": 16, "DATASET.PIPELINE": "tiny_transformers",
        "DATASET.TRAIN_TRANSFORMS": [{"RandomRotation": {"degrees": 30}}],
        "DATASET.TEST_TRANSFORMS": [{"RandomHorizontalFlip": {"p": 1.0}}],
        "DISTILLER.TYPE": "DKD", "DISTILLER.STUDENT": "digits_teacher",
        "DISTILLER.TEACHER": ("digits_student", {"DISTILLER.TEACHER_CKPT": ckpts["student"]}),
        "DISTILLER.TEACHER_CKPT": ckpts["teacher2"], "DISTILLER.STUDENT_PRETRAINED": ckpts["student"],
        "DISTILLER.TEACHER_CACHE": "build", "DISTILLER.TEACHER_CACHE_DIR": "{root}/caches",
        "DISTILLER.TEACHER_CACHE_DTYPE": "bfloat16",
        "SOLVER.TRAINER": "aug", "SOLVER.TYPE": "Adam", "SOLVER.SCHEDULER": "cosine", "SOLVER.LR_DECAY_STAGES": [],
        "SOLVER.BETAS": [0.5, 0.9], "SOLVER.AMP_DTYPE": "float16", "CONKD.SUPCON_VARIANT": "seed",
        "CTKD.MODE": "instance", "SOLVER.SELECT_METRIC": "test_loss", "CLASSIFIER.HIDDEN": [16],
        "FITNET.HINT_LAYER": 2, "FEATKD.STUDENT_LAYERS": [0, 2], "FEATKD.TEACHER_LAYERS": [1, 2],
        "FEATKD.PAIR_LOSSES": ["cosine"], "FEATKD.PAIR_WEIGHTS": [0.25, 1.0], "FEATKD.CONNECTOR": "conv",
        "CRD.MODE": "relax",
        "LG.LOGIT_LOSS": "hard", "LG.INTER_TRANSFORM": "attention", "LG.INTER_TEACHER_INDEX": [0, 1],
        "LG.INTER_STUDENT_INDEX": [0, 1],
        "RKD.PDIST.EPSILON": 1.0,  # a floor above some squared distances (halving 1e-12 touches none of them)
        "OFD.CONNECTOR.KERNEL_SIZE": 3,  # an odd kernel keeps the size ('same' padding)
        "LOG.PREFIX": "{root}/elsewhere",
        "LOG.TENSORBOARD_FREQ": 1,
        "SOLVER.AMP": True, "SOLVER.CHANNELS_LAST": True,  # auto resolves to fp32 NCHW in tests (no trial)
    }
    if key in special:
        value = special[key]
        return value if isinstance(value, tuple) else (value, {})
    if isinstance(current, bool):
        return not current, {}
    if isinstance(current, (int, float)):
        return (current * 2 if current else 1) if isinstance(current, int) else (current * 0.5 if current else 0.01), {}
    raise AssertionError(f"{key}: add a non-default value for it to _value() in this test")


def _context(key: str) -> list[tuple[str, dict]]:
    group = key.split(".")[0]
    methods = METHOD_GROUPS.get(group, ("KD",))
    return [(m, CONTEXT.get(key, {})) for m in methods]


class Recorder:
    """What one run did, collected through patched Trainer/RunLogger methods."""

    def __init__(self, monkeypatch) -> None:
        self.reset()
        step, fit, scalars = trainer_mod.Trainer.train_step, trainer_mod.Trainer.fit, RunLogger.scalars
        progress = RunLogger.progress
        rec = self

        def train_step(self, *args):
            out = step(self, *args)
            rec.losses.append({k: v.item() for k, v in out.items()})
            return out

        def fit_(self):
            opt = self.optimizer
            rec.settings = {
                "channels_last": self.channels_last, "every_step": self.check_finite_every_step,
                "autocast": repr(getattr(self.autocast(), "fast_dtype", None)), "scaler": self.scaler.is_enabled(),
                "optimizer": (type(opt).__name__, [{k: v for k, v in g.items() if k != "params"}
                                                   for g in opt.param_groups]),
                "loaders": (self.train_loader.batch_size, self.train_loader.num_workers, self.val_loader.batch_size),
                "deterministic": torch.are_deterministic_algorithms_enabled(),
            }
            return fit(self)

        def scalars_(self, values, step_):
            rec.scalars.append((sorted(values), step_))
            return scalars(self, values, step_)

        def progress_(self, total, desc):
            bar = progress(self, total, desc)
            rec.bars.append(type(bar).__name__)
            return bar

        for cls, name, fn in ((trainer_mod.Trainer, "train_step", train_step), (trainer_mod.Trainer, "fit", fit_),
                              (RunLogger, "scalars", scalars_), (RunLogger, "progress", progress_)):
            monkeypatch.setattr(cls, name, fn)

    def reset(self) -> None:
        self.losses, self.scalars, self.bars, self.settings = [], [], [], {}


def fingerprint(rec: Recorder, cfg, root: str) -> dict:
    rec.reset()
    deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        summary = train(cfg)
    finally:
        torch.use_deterministic_algorithms(deterministic)
    run_dir = summary["run_dir"]
    files = sorted("events" if f.startswith("events.out") else os.path.relpath(os.path.join(d, f), root)
                   for d, _, fs in os.walk(root) for f in fs)
    metrics = json.load(open(os.path.join(run_dir, "metrics.json")))
    metrics.pop("train_time_s")
    for h in metrics["history"]:
        h.pop("time_s")
    student = torch.load(os.path.join(run_dir, "student_latest"), weights_only=True)["model"]
    return {"losses": rec.losses, "scalars": rec.scalars, "bars": rec.bars, "settings": rec.settings,
            "files": files, "metrics": metrics, "student": {k: v.double().sum().item() for k, v in student.items()},
            "student_exact": student}


def differences(a: dict, b: dict) -> list[str]:
    out = [k for k in a if k != "student_exact" and a[k] != b[k]]
    sa, sb = a["student_exact"], b["student_exact"]
    if sa.keys() != sb.keys() or any(not torch.equal(sa[k], sb[k]) for k in sa):
        out.append("student weights")
    return out


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict:
    """Untrained digits networks saved as kdlab student files (a fingerprint needs no trained teacher)."""
    from kdlab.models import build_model

    folder, out = tmp_path_factory.mktemp("ckpts"), {}
    for name, arch, seed in (("teacher", "digits_teacher", 0), ("teacher2", "digits_teacher", 1),
                             ("student", "digits_student", 2)):
        torch.manual_seed(seed)
        model = build_model(arch, 10, in_channels=1)
        out[name] = str(folder / f"{name}.pth")
        torch.save({"format": "kdlab-student", "model": model.state_dict(), "arch": arch, "num_classes": 10,
                    "epoch": 0}, out[name])
    return out


def test_every_key_changes_behaviour_or_is_refused(tmp_path, monkeypatch, ckpts):
    rec = Recorder(monkeypatch)
    bases: dict = {}
    contexts: dict = {}
    runs = 0

    def run(method, extra, key=None, value=None):
        nonlocal runs
        runs += 1
        root = str(tmp_path / f"run{runs}")
        opts = {**COMMON, "DISTILLER.TEACHER_CKPT": ckpts["teacher"], "LOG.PREFIX": f"{root}/logs", **extra}
        if key is not None:
            opts[key] = value.format(root=root) if isinstance(value, str) else value
        cfg = load_cfg(METHOD_CONFIGS[method], [t for k, v in opts.items() for t in (k, str(v))])
        return fingerprint(rec, cfg, root)

    outcome, unchanged = {}, []
    for key in list(flatten(get_cfg())):
        if key in NOT_SEEN_IN_A_DIGITS_RUN:
            check = NOT_SEEN_IN_A_DIGITS_RUN[key]
            if callable(check):
                check(tmp_path, key)
            outcome[key] = "explained"
            continue
        for method, extra in _context(key):
            where = (method, tuple(sorted(extra.items())))
            if where not in contexts:
                contexts[where] = load_cfg(METHOD_CONFIGS[method], [t for k, v in {**COMMON, **extra}.items()
                                                                    for t in (k, str(v))])
            node = contexts[where]
            for part in key.split("."):
                node = node[part]
            value, more = _value(key, node, ckpts)
            assert value != node, f"{key}: the test's value {value!r} is the context's; pick another in _value()"
            if key in REFUSED_AT_LOAD:
                opts = {**COMMON, **extra, **more, key: value}
                with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
                    load_cfg(METHOD_CONFIGS[method], [t for k, v in opts.items() for t in (k, str(v))])
                outcome[key] = "refused"
                continue
            if where not in bases:
                bases[where] = run(method, extra)
            changed = differences(bases[where], run(method, {**extra, **more}, key, value))
            if not changed:
                unchanged.append(f"{key} = {value!r} (context {method} {extra})")
            outcome[key] = "changes"
    assert not unchanged, f"these changed nothing in a digits run: {unchanged}"
    assert set(outcome) == set(list(flatten(get_cfg())))
    assert {k for k, v in outcome.items() if v == "refused"} == REFUSED_AT_LOAD
