"""The training-step benchmark behind tools/bench.py.

`bench_step` builds the real Trainer for a config (student and teacher with random weights, so no
checkpoint is needed) and times `Trainer.train_step` -- the very step `fit` runs -- on batches of
the config's shape. CIFAR configs need no dataset: a few synthetic images are written in the real
python-pickle layout to a temporary folder and read through the same dataset classes and batch
transform. `SOLVER.AMP` / `CHANNELS_LAST` `auto` are resolved as training resolves them (a fresh
trial, no cache), and every candidate setting auto chooses among is timed too, interleaved with the
step as shipped in the same process and on the same batch, together with the step with the fast
path off (fp32, NCHW, eager) and optionally the reference mdistiller step, so that load from other
processes affects all of them alike and their ratios stay meaningful.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch
from yacs.config import CfgNode

from kdlab.benchmark.cache import cached_step, summarize_cached
from kdlab.benchmark.data import dataset_for_bench, sync, with_options
from kdlab.benchmark.reference import load_reference, reference_input
from kdlab.data import build_dataloaders
from kdlab.engine import precision
from kdlab.engine.builder import build_everything, select_device
from kdlab.engine.run import configure_backends, prepare_distiller, resolve_precision
from kdlab.engine.trainer import Trainer

PLAIN = {"SOLVER.AMP": False, "SOLVER.CHANNELS_LAST": False, "SOLVER.COMPILE": False}


def _built(cfg: CfgNode, device: torch.device, splits=None):
    configure_backends(cfg)
    splits, distiller = build_everything(cfg, splits, load_teacher_weights=False)
    distiller.to(device)
    train_loader, val_loader, _ = build_dataloaders(cfg, splits=splits)
    return distiller, train_loader, val_loader


def auto_decision(cfg: CfgNode, device: torch.device, splits=None) -> precision.Decision:
    """What `auto` picks for cfg here, decided as a training run decides (a fresh trial: no cache)."""
    distiller, train_loader, _ = _built(cfg, device, splits)
    return resolve_precision(cfg, distiller, train_loader, device, train_loader.splits, use_cache=False)


def make_trainer(cfg: CfgNode, device: torch.device, run_dir: str, splits=None) -> Trainer:
    """The Trainer `kdlab.engine.run.train` would build (teacher with random weights), in train mode.

    `auto` keys are resolved as a run resolves them (no cache); trainer.cfg holds the values used.
    """
    distiller, train_loader, val_loader = _built(cfg, device, splits)
    decision = resolve_precision(cfg, distiller, train_loader, device, train_loader.splits, use_cache=False)
    cfg = precision.apply(cfg, decision.choice)
    prepare_distiller(cfg, distiller, device)
    trainer = Trainer(cfg, distiller, train_loader, val_loader, run_dir, device,
                      facts={"precision": decision.record()})
    trainer._begin_epoch(1)
    distiller.train()
    return trainer


def first_batch(trainer: Trainer):
    return next(iter(trainer.train_loader))


def trainer_step(trainer: Trainer, batch) -> Callable[[], None]:
    """Trainer.train_step on batch; each call is the next step of epoch 1 (its own augmentation draw)."""
    sums = torch.zeros(4, dtype=torch.float64, device=trainer.device)
    counter = itertools.count()
    return lambda: trainer.train_step(batch, 1, next(counter), sums)


def time_interleaved(steps: dict[str, Callable[[], None]], n: int, device: torch.device) -> dict[str, list[float]]:
    """Seconds per call of each function, n rounds; each round calls all of them, in a rotating order."""
    names = list(steps)
    times: dict[str, list[float]] = {k: [] for k in names}
    for i in range(n):
        for name in names[i % len(names):] + names[: i % len(names)]:
            sync(device)
            start = time.perf_counter()
            steps[name]()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def _memory_mb(device: torch.device, peak: bool = False) -> float:
    """CUDA memory allocated (or its peak since the last reset); else this process's RSS (or its peak)."""
    if device.type == "cuda":
        return (torch.cuda.max_memory_allocated(device) if peak else torch.cuda.memory_allocated(device)) / 2**20
    if peak:
        import resource

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss / 2**20 if sys.platform == "darwin" else rss / 2**10
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return _memory_mb(device, peak=True)


def _load_average() -> float | None:
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def _warm(step: Callable[[], None], n: int, device: torch.device) -> float:
    """Run step n times (at least once); return the seconds it took (compilation included)."""
    start = time.perf_counter()
    for _ in range(max(1, n)):
        step()
    sync(device)
    return time.perf_counter() - start


def _eval_seconds_per_image(trainer: Trainer) -> float:
    """Trainer.evaluate over the (small) val split, after one warm-up pass; seconds per image."""
    n = len(trainer.val_loader.dataset)
    trainer.evaluate()
    sync(trainer.device)
    start = time.perf_counter()
    trainer.evaluate()
    sync(trainer.device)
    trainer.distiller.train()
    return (time.perf_counter() - start) / max(n, 1)


def _setting(cfg: CfgNode) -> tuple:
    s = cfg.SOLVER
    return (s.AMP and s.AMP_DTYPE, bool(s.CHANNELS_LAST), bool(s.COMPILE))


def timed_settings(shipped: CfgNode, cands: list[precision.Choice], plain: bool) -> dict[str, CfgNode]:
    """Name -> resolved config of each step to time: as shipped, every candidate, the plain fp32 step."""
    named = {"kdlab": shipped}
    named.update({c.label: precision.apply(shipped, c) for c in cands})
    if plain:
        named["plain"] = with_options(shipped, PLAIN)
    return named


def bench_step(
    cfg: CfgNode,
    steps: int = 10,
    warmup: int = 3,
    reference_repo: str | None = None,
    plain: bool = True,
    estimate: bool = True,
    all_candidates: bool = False,
    teacher_cache: bool = False,
    cache_images: int = 0,
    build_images: int = 0,
    build_batch: int = 0,
) -> dict[str, Any]:
    """Median seconds per Trainer.train_step for cfg as shipped, for each candidate setting of `auto` (every
    setting this device runs with all_candidates), the plain step and mdistiller's step, interleaved;
    with teacher_cache also the shipped step reading the teacher's logits from a real cache over
    cache_images images of the batch (default: all of them), and the build's throughput (kdlab.benchmark.cache).

    Steps with the same setting are timed once (the shipped step is one of the candidates). Peak memory
    is measured over the shipped step's warm-up, before the other steps are built.
    """
    cfg = with_options(cfg, {"DATASET.NUM_WORKERS": 0, "LOG.PROGRESS": False})
    device = select_device(cfg)
    make_reference = load_reference(reference_repo, cfg) if reference_repo else None
    load_start = _load_average()
    cap = precision.detect_capability(device)
    request = precision.Request.from_cfg(cfg)
    cands = precision.every_choice(cap) if all_candidates else precision.candidates(cap, request)
    with contextlib.ExitStack() as stack:
        data_cfg, source, sizes = stack.enter_context(
            dataset_for_bench(cfg, n_train=2 * cfg.SOLVER.BATCH_SIZE, n_test=2 * cfg.DATASET.TEST.BATCH_SIZE)
        )
        run_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="kdlab-bench-run-"))
        decision = auto_decision(data_cfg, device)
        named = timed_settings(precision.apply(data_cfg, decision.choice), cands, plain)
        gc.collect()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        memory_before = _memory_mb(device)
        trainer = make_trainer(named["kdlab"], device, os.path.join(run_dir, "kdlab"))
        stack.callback(trainer.logger.close)
        batch = first_batch(trainer)
        runners = {"kdlab": trainer_step(trainer, batch)}
        warmup_s = _warm(runners["kdlab"], warmup, device)
        peak_mb = _memory_mb(device, peak=True) - memory_before
        eval_s = _eval_seconds_per_image(trainer) if estimate else None
        alias = {"kdlab": "kdlab"}
        for name, setting_cfg in list(named.items())[1:]:
            same = next((n for n in runners if _setting(named[n]) == _setting(setting_cfg)), None)
            if same is not None:
                alias[name] = same
                continue
            other = make_trainer(setting_cfg, device, os.path.join(run_dir, name), splits=trainer.train_loader.splits)
            stack.callback(other.logger.close)
            runners[name] = trainer_step(other, batch)
            alias[name] = name
            _warm(runners[name], warmup, device)
        if teacher_cache:
            cached = make_trainer(named["kdlab"], device, os.path.join(run_dir, "cached"),
                                  splits=trainer.train_loader.splits)
            stack.callback(cached.logger.close)
            runners["cached"], build = cached_step(cached, batch, cache_images, run_dir, build_images, build_batch)
            _warm(runners["cached"], warmup, device)
        if make_reference is not None:
            target = batch[1].to(device)
            runners["reference"] = make_reference(reference_input(trainer, batch), target, trainer.num_classes)
            alias["reference"] = "reference"
            _warm(runners["reference"], warmup, device)
        measured = time_interleaved(runners, steps, device)
    times = {name: measured[key] for name, key in alias.items()}
    result = summarize(named["kdlab"], times, device, [c.label for c in cands])
    result["auto"] = {"pick": decision.choice.label, **decision.record()}
    result.update(peak_mem_mb=round(peak_mb, 1), steps=steps, warmup=warmup, warmup_s=round(warmup_s, 2), data=source)
    if estimate:
        n_train, n_test = sizes or (len(trainer.train_loader.dataset), len(trainer.val_loader.dataset))
        result.update(run_estimate(cfg, result["step_s"], eval_s, n_train, n_test))
    if teacher_cache:
        result.update(summarize_cached(result, measured["cached"], build))
    result["load_avg_1m"] = [load_start, _load_average()]
    return result


def summarize(cfg: CfgNode, times: dict[str, list[float]], device: torch.device,
              candidates: list[str] = ()) -> dict[str, Any]:
    """Medians, images/s and ratios of the timed steps, with what was timed (cfg: the resolved shipped config)."""
    bs = cfg.SOLVER.BATCH_SIZE
    step_s = statistics.median(times["kdlab"])
    out: dict[str, Any] = dict(
        config=cfg.DISTILLER.TYPE, teacher=cfg.DISTILLER.TEACHER if cfg.DISTILLER.TYPE != "NONE" else None,
        student=cfg.DISTILLER.STUDENT, dataset=cfg.DATASET.TYPE,
        step_s=step_s, step_s_min=min(times["kdlab"]), images_per_s=bs / step_s,
        amp=cfg.SOLVER.AMP_DTYPE if cfg.SOLVER.AMP else False, channels_last=bool(cfg.SOLVER.CHANNELS_LAST),
        compile=bool(cfg.SOLVER.COMPILE), device=str(device), batch_size=bs, threads=torch.get_num_threads(),
    )
    fixed = {name: statistics.median(times[name]) for name in candidates if name in times}
    if "plain" in times:
        plain_s = statistics.median(times["plain"])
        fixed.setdefault("plain", plain_s)
        out.update(plain_step_s=plain_s, plain_images_per_s=bs / plain_s, speedup_vs_plain=plain_s / step_s)
    if fixed:
        best = min(fixed, key=fixed.get)
        out.update(candidates_step_s={name: fixed[name] for name in candidates if name in fixed},
                   best_fixed=best, best_fixed_step_s=fixed[best], ratio_vs_best_fixed=step_s / fixed[best])
    if "reference" in times:
        ref_s = statistics.median(times["reference"])
        per_round = statistics.median(k / r for k, r in zip(times["kdlab"], times["reference"]))
        out.update(reference_step_s=ref_s, reference_images_per_s=bs / ref_s, ratio=step_s / ref_s,
                   ratio_per_round=per_round)
    return out


def run_estimate(cfg: CfgNode, step_s: float, eval_s_per_image: float, n_train: int, n_test: int) -> dict:
    """Hours of a whole run: ceil(n_train / batch) steps x epochs x step_s, plus an evaluation per epoch."""
    epochs = cfg.SOLVER.EPOCHS
    train_h = math.ceil(n_train / cfg.SOLVER.BATCH_SIZE) * epochs * step_s / 3600
    eval_h = n_test * epochs * eval_s_per_image / 3600
    return dict(eval_s_per_image=eval_s_per_image, epochs=epochs, train_images=n_train, test_images=n_test,
                run_estimate_h=round(train_h + eval_h, 2), run_estimate_train_h=round(train_h, 2))
