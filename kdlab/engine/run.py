"""The training job end to end: run directory, builders, Trainer; used by tools/train.py and tests."""

from __future__ import annotations

import copy
import gc
import itertools
import logging
import os
import signal
import tempfile
from typing import Optional

import yaml
from yacs.config import CfgNode

from kdlab import distributed as dist_utils
from kdlab.config import flatten, get_cfg, hooks
from kdlab.config import run_dir as configured_run_dir
from kdlab.data import build_dataloaders
from kdlab.engine import precision
from kdlab.engine.builder import build_everything, select_device
from kdlab.engine.checkpoint import load_training_state
from kdlab.engine.loggers import setup_logging
from kdlab.engine.step_utils import autocast_context
from kdlab.engine.teacher_cache_run import deliver_view_ids, plan_teacher_cache
from kdlab.engine.trainer import Trainer
from kdlab.errors import ConfigError

log = logging.getLogger("kdlab")

# Keys that may differ between a run and its --resume (a prefix ending in "." covers a group):
# where files live, how the run is executed and logged, and how long it goes on. None of them
# changes what a training step computes (SOLVER.EPOCHS does move a cosine schedule's end).
RESUME_NEUTRAL_KEYS = ("LOG.", "DATASET.ROOT", "DATASET.DOWNLOAD", "DATASET.NUM_WORKERS", "DATASET.TEST.BATCH_SIZE",
                       "SOLVER.DEVICE", "SOLVER.DIST_BACKEND", "SOLVER.EPOCHS", "DISTILLER.TEACHER_CACHE_DIR")
# Keys whose "auto" is resolved at start-up; a run's saved config holds the resolved value.
RESOLVED_AT_START = ("SOLVER.AMP", "SOLVER.CHANNELS_LAST")


def _holds_run(path: str) -> bool:
    return os.path.isdir(path) and any(
        os.path.exists(os.path.join(path, f)) for f in ("latest", "metrics.json", "student_best")
    )


def choose_run_dir(cfg: CfgNode, resume: bool) -> str:
    """The configured run dir. If it already holds a run and we are not resuming, that run is
    moved aside to `<dir>-N` (never overwritten), so the configured path always holds the newest run."""
    base = configured_run_dir(cfg)
    if resume or not _holds_run(base) or not dist_utils.is_main():
        return base
    n = 1
    while os.path.exists(f"{base}-{n}"):
        n += 1
    os.rename(base, f"{base}-{n}")
    log.warning("run directory %s already held a run: moved it to %s-%d (use --resume to continue a run)",
                base, base, n)
    return base


def student_facts(student, splits) -> dict:
    """Student MACs for one image at the training resolution (recorded in metrics.json for reports)."""
    from kdlab.evaluation.model_info import model_info

    info = model_info(student, list(splits.input_size), in_channels=splits.in_channels, latency_runs=0)
    return {"student_macs": info["macs"], "input_size": list(splits.input_size), "in_channels": splits.in_channels}


def check_writable(prefix: str) -> None:
    """Fail early if LOG.PREFIX cannot be created or written (checks the nearest existing folder)."""
    path = os.path.abspath(prefix)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    if not os.path.isdir(path) or not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(
            f"LOG.PREFIX {prefix} is not writable ({path} is not a writable folder); "
            "set LOG.PREFIX to a writable folder"
        )


def prepare_run_dir(path: str) -> None:
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, ".write-test")
        with open(probe, "w") as f:
            f.write("")
        os.unlink(probe)
    except OSError as exc:
        raise ConfigError(
            f"cannot write the run directory {path} ({exc.strerror}); set LOG.PREFIX to a writable folder"
        ) from None


def _resume_neutral(key: str) -> bool:
    return any(key == n or (n.endswith(".") and key.startswith(n)) for n in RESUME_NEUTRAL_KEYS)


def check_resume_config(cfg: CfgNode, saved_yaml: str, source: str) -> None:
    """Refuse --resume with a config other than the run's, naming the first differing key.

    Keys in RESUME_NEUTRAL_KEYS may differ; "auto" for a RESOLVED_AT_START key matches the value
    the run resolved; a key the run's config lacks (an older kdlab) counts as its default.
    """
    saved = flatten(yaml.safe_load(saved_yaml) or {})
    defaults = flatten(yaml.safe_load(get_cfg().dump()))
    for key, value in flatten(yaml.safe_load(cfg.dump())).items():
        old = saved.get(key, defaults.get(key, value))
        if _resume_neutral(key) or (key in RESOLVED_AT_START and value == "auto") or old == value:
            continue
        raise ConfigError(
            f"--resume: {key} is {value!r} but the run was started with {old!r} ({source}); "
            f"resume with the run's config, or start a new run without --resume"
        )


def _saved_config(run_dir: str, state: dict) -> tuple[str, str]:
    if state.get("config"):
        return state["config"], os.path.join(run_dir, "latest")
    path = os.path.join(run_dir, "config.yaml")
    if not os.path.isfile(path):
        raise ConfigError(f"--resume: {run_dir} holds no config of the run to compare with (config.yaml is missing)")
    with open(path, encoding="utf-8") as f:
        return f.read(), path


def describe(cfg: CfgNode, has_teacher: Optional[bool] = None) -> str:
    """One line saying what this run does, including whether logit standardization is on."""
    method = cfg.DISTILLER.TYPE
    if has_teacher is None:  # as the method declares (a method kdlab does not implement: as configured)
        cls = hooks.method_class(method)
        has_teacher = cls is None or cls.needs_teacher
    who = f"{cfg.DISTILLER.TEACHER} -> {cfg.DISTILLER.STUDENT}" if has_teacher else cfg.DISTILLER.STUDENT
    ls = "ON" if cfg.EXPERIMENT.LOGIT_STAND else "off"
    return f"{method} {who} on {cfg.DATASET.TYPE}, logit standardization {ls}"


def train(cfg: CfgNode, resume: bool = False, install_signal_handlers: bool = False) -> dict:
    """Train the configured run; return the metrics summary (also written to metrics.json)."""
    setup_logging()
    # Everything that can fail on bad input runs before the run directory is touched.
    resume_state = None
    if resume:
        latest = os.path.join(configured_run_dir(cfg), "latest")
        if not os.path.isfile(latest):
            raise ConfigError(f"--resume: no checkpoint {latest}; run without --resume")
        resume_state = load_training_state(latest)  # refuse a bad file before any work starts
        check_resume_config(cfg, *_saved_config(configured_run_dir(cfg), resume_state))
    check_writable(cfg.LOG.PREFIX)
    configure_backends(cfg)
    device = select_device(cfg, int(os.environ.get("LOCAL_RANK", "0")) if dist_utils.is_distributed() else None)
    splits, distiller = build_everything(cfg)
    facts = student_facts(distiller.student, splits)
    distiller.to(device)
    train_loader, val_loader, _ = build_dataloaders(
        cfg, rank=dist_utils.rank(), world_size=dist_utils.world_size(), splits=splits
    )
    decision = resolve_precision(cfg, distiller, train_loader, device, splits, resume_state)
    cfg = precision.apply(cfg, decision.choice)  # from here on SOLVER.AMP / CHANNELS_LAST are concrete
    facts["precision"] = decision.record()
    done = resume_state["epoch"] if resume_state is not None else 0
    cache_plan = plan_teacher_cache(cfg, distiller, splits, device, autocast_context(cfg, device),
                                    remaining_epochs=cfg.SOLVER.EPOCHS - done)
    facts["teacher_cache"] = cache_plan.record
    deliver_view_ids(train_loader, cache_plan)
    prepare_distiller(cfg, distiller, device)
    model = wrap_distributed(cfg, distiller, device)
    run_dir = choose_run_dir(cfg, resume)
    if dist_utils.is_main():
        prepare_run_dir(run_dir)
        with open(os.path.join(run_dir, "config.yaml"), "w", encoding="utf-8") as f:
            f.write(f"# {describe(cfg, distiller.teacher is not None)}\n{decision.header()}\n")
            f.write(cfg.dump())
    trainer = Trainer(cfg, distiller, train_loader, val_loader, run_dir, device, model=model, facts=facts,
                      teacher_cache=cache_plan.cache)
    log.info("run: %s", describe(cfg, distiller.teacher is not None))
    log.info("precision: %s", decision.describe())
    log.info("run directory: %s | device: %s | AMP: %s", run_dir, device,
             cfg.SOLVER.AMP_DTYPE if cfg.SOLVER.AMP else "off")
    if distiller.teacher is not None:
        log.info("extra parameters of %s: %d", cfg.DISTILLER.TYPE, distiller.extra_parameter_count())
    if resume_state is not None:
        trainer.load_state_dict(resume_state)
        log.info("resumed from %s (epoch %d%s)", os.path.join(run_dir, "latest"), trainer.epoch,
                 f" + {trainer._resume_step} steps" if trainer._resume_step else "")
    previous = _install_handlers(trainer) if install_signal_handlers else None
    try:
        summary = trainer.fit()
    finally:
        if previous:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    log.info("done: last top-1 %.2f, best top-1 %.2f (epoch %d); %s",
             summary["last_acc"] or 0.0, summary["best_acc"] or 0.0, summary["best_epoch"], run_dir)
    summary["run_dir"] = run_dir
    return summary


def configure_backends(cfg: CfgNode) -> None:
    """cuDNN autotuning for speed, or deterministic algorithms when EXPERIMENT.DETERMINISTIC is set."""
    import torch

    if cfg.EXPERIMENT.DETERMINISTIC:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True


def resolve_precision(cfg: CfgNode, distiller, train_loader, device, splits,
                      resume_state: Optional[dict] = None, use_cache: bool = True) -> precision.Decision:
    """SOLVER.AMP / CHANNELS_LAST for this run (see kdlab.engine.precision): rank 0 decides, all ranks use it.

    A trial times Trainer.train_step on copies of the distiller (fresh optimizers), so the model, its
    BatchNorm statistics and every RNG stream of the run are left as they were.
    """
    decision = None
    if dist_utils.is_main():
        request = precision.Request.from_cfg(cfg)
        cap = precision.detect_capability(device)
        batch_size = cfg.SOLVER.BATCH_SIZE // dist_utils.world_size()
        shape = (splits.in_channels, *splits.input_size)
        key = precision.cache_key(cap, cfg, batch_size, shape, precision.candidates(cap, request))
        saved = precision.saved_choice(resume_state) if resume_state is not None else None
        cache = precision.PrecisionCache() if use_cache else None

        def measure(cands: list) -> precision.Trial:
            return precision_trial(cfg, distiller, train_loader, device, cands, precision.trial_budget(len(cands)))

        decision = precision.resolve(request, cap, measure, cache, key, saved)
    return dist_utils.broadcast_object(decision)


def precision_trial(cfg: CfgNode, distiller, train_loader, device, cands: list, budget_s: float) -> precision.Trial:
    """precision.run_trial on the first training batch, each candidate a Trainer on a copy of the distiller."""
    import torch

    if budget_s <= 0:
        return precision.Trial(None, f"{precision.BUDGET_ENV} is 0")
    with precision.preserved_rng(), tempfile.TemporaryDirectory(prefix="kdlab-trial-") as tmp:
        batch = first_batch(train_loader)
        eager = cfg.clone()
        eager.defrost()
        eager.SOLVER.COMPILE = False  # compiling every candidate would cost more than the trial

        def make_step(choice: precision.Choice):
            trial_cfg = precision.apply(eager, choice)
            clone = prepare_distiller(trial_cfg, copy.deepcopy(distiller), device)
            trainer = Trainer(trial_cfg, clone, train_loader, None, os.path.join(tmp, choice.label), device)
            trainer.logger.close()
            clone.train()
            sums = torch.zeros(4, dtype=torch.float64, device=device)
            steps = itertools.count()
            return lambda n: trainer.train_step(head(batch, n), 1, next(steps), sums)

        sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
        trial = precision.run_trial(make_step, cands, len(batch[1]), budget_s, sync)
    gc.collect()  # the copies and their optimizers
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return trial


def first_batch(loader):
    """The first batch of epoch 0 as the loader would give it, read in this process (no workers started)."""
    if loader.batch_size is None:
        return next(iter(loader))
    indices = list(itertools.islice(iter(loader.sampler), loader.batch_size))
    return loader.collate_fn([loader.dataset[i] for i in indices])


def head(batch, n: int):
    """The first n samples of a (possibly nested) batch."""
    if isinstance(batch, (tuple, list)):
        return type(batch)(head(x, n) for x in batch)
    return batch[:n] if hasattr(batch, "dim") and batch.dim() > 0 else batch


def prepare_distiller(cfg: CfgNode, distiller, device):
    """Move the distiller to the device in SOLVER.CHANNELS_LAST layout; SOLVER.COMPILE compiles its networks.

    Student and teacher are compiled in place (`nn.Module.compile`), so parameters, state_dict
    keys, checkpoints and DDP see the same modules as without compilation. Static shapes: a short
    last batch and evaluation each add one compiled graph rather than a slower dynamic one.
    """
    import torch

    distiller.to(device)
    if cfg.SOLVER.CHANNELS_LAST:
        distiller.to(memory_format=torch.channels_last)
    if cfg.SOLVER.COMPILE:
        for net in (distiller.student, distiller.teacher):
            if net is not None:
                net.compile(dynamic=False)
    return distiller


def wrap_distributed(cfg: CfgNode, distiller, device):
    """Under torchrun: DDP over the trainable parts only (student, connectors, heads).

    The frozen teacher is excluded from DDP (no gradient buckets, no buffer broadcasts),
    so it can never trigger unused-parameter errors. Checkpoints are saved from the
    unwrapped distiller, so they never carry a `module.` prefix.
    """
    if not dist_utils.is_distributed():
        return distiller
    import torch
    from torch.nn.parallel import DistributedDataParallel as DDP

    world = dist_utils.world_size()
    if cfg.SOLVER.BATCH_SIZE % world:
        raise ConfigError(
            f"SOLVER.BATCH_SIZE {cfg.SOLVER.BATCH_SIZE} is the global batch and must be divisible by the "
            f"number of processes ({world}); each rank loads BATCH_SIZE / {world} images per step"
        )
    if cfg.SOLVER.SYNC_BN:
        if device.type != "cuda":
            raise ConfigError(
                "SOLVER.SYNC_BN needs CUDA (torch's SyncBatchNorm runs on GPUs only); set it False on CPU"
            )
        distiller.student = torch.nn.SyncBatchNorm.convert_sync_batchnorm(distiller.student)
    ignored = distiller.self_synced_buffers()  # e.g. CRD's bank, updated from all ranks' gathered batches
    if distiller.teacher is not None:
        ignored += [f"teacher.{n}" for n, _ in distiller.teacher.named_parameters()]
        ignored += [f"teacher.{n}" for n, _ in distiller.teacher.named_buffers()]
    if ignored:
        DDP._set_params_and_buffers_to_ignore_for_model(distiller, ignored)
    device_ids = [device.index if device.index is not None else 0] if device.type == "cuda" else None
    return DDP(distiller, device_ids=device_ids)


def _install_handlers(trainer: Trainer) -> Optional[dict]:
    """First Ctrl-C/SIGTERM: finish the current step, save a resumable checkpoint, stop. Second: abort."""

    def handler(signum, frame):
        if trainer.stop_requested:
            raise KeyboardInterrupt
        trainer.stop_requested = True
        log.warning("stop requested; saving a resumable checkpoint after this step (Ctrl-C again to abort)")

    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, handler)
    return previous
