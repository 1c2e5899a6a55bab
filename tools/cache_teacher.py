"""Build a run's teacher-output cache ahead of training: python tools/cache_teacher.py --cfg X.yaml [KEY VALUE ...].

The teacher (DISTILLER.TEACHER, loaded as training loads it) runs once over every view of every
training image (kdlab.data.teacher_cache); its logits go to DISTILLER.TEACHER_CACHE_DIR (--dir;
default <LOG.PREFIX>/teacher_cache)/<dataset>_<teacher>_<key digest>/, stored as --dtype
(DISTILLER.TEACHER_CACHE_DTYPE; default float32). The build shows a progress bar and resumes after
an interruption; the teacher's test accuracy is evaluated once and stored alongside.
--verify only opens the cache and checks its size and checksums. A dataset whose training
augmentation has no finite set of views exits with code 2 and the reason.

The compute precision is part of the key: SOLVER.AMP True/False as configured; auto as a run decides
it but without a trial: the device's capability where it leaves one candidate, else the run's trial
result cached for this device and config, else the capability's default (then set SOLVER.AMP
explicitly, or train once first, where a run's trial may choose otherwise). --batch-size defaults to
what a run's own build uses (64 image-views on a CPU, 512 on a GPU).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kdlab.cli import hoist_flags, run_cli  # noqa: E402
from kdlab.config import load_cfg  # noqa: E402
from kdlab.errors import ConfigError  # noqa: E402

VALUE_FLAGS = {"--cfg", "--dir", "--dtype", "--batch-size", "--device"}
BOOL_FLAGS = {"--verify", "--debug", "-h", "--help"}


def parse_args(argv: list[str]) -> argparse.Namespace:
    argv = hoist_flags(argv, VALUE_FLAGS, BOOL_FLAGS)
    p = argparse.ArgumentParser("tools/cache_teacher.py", description="build or check a run's teacher-output cache")
    p.add_argument("--cfg", default="", help="the run's YAML config")
    p.add_argument("--dir", default="", help="cache root (default DISTILLER.TEACHER_CACHE_DIR, else "
                                             "<LOG.PREFIX>/teacher_cache)")
    p.add_argument("--dtype", default="", choices=["", "float32", "bfloat16"],
                   help="storage dtype (default DISTILLER.TEACHER_CACHE_DTYPE, else float32)")
    p.add_argument("--batch-size", type=int, default=0,
                   help="image-views per teacher batch (default: 64 on a CPU, 512 on a GPU)")
    p.add_argument("--device", default="", choices=["", "cpu", "cuda"], help="default: SOLVER.DEVICE")
    p.add_argument("--verify", action="store_true", help="only open the cache and check its size and checksums")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides, e.g. DATASET.ROOT /data")
    return p.parse_args(argv)


def run_precision(cfg, device, splits):
    """(cfg with SOLVER.AMP / CHANNELS_LAST concrete, how it was decided), as the run decides them but without a trial:
    the config's values, the device's capability when it leaves one candidate, the run's trial result when one
    is cached for this device and config (~/.cache/kdlab/precision.json), else the capability's default."""
    from kdlab import distributed as dist_utils
    from kdlab.engine import precision

    request = precision.Request.from_cfg(cfg)
    cap = precision.detect_capability(device)
    batch_size = cfg.SOLVER.BATCH_SIZE // dist_utils.world_size()
    shape = (splits.in_channels, *splits.input_size)
    key = precision.cache_key(cap, cfg, batch_size, shape, precision.candidates(cap, request))

    def no_trial(cands):
        return precision.Trial(None, "tools/cache_teacher.py runs no trial; a run's trial, once cached, is followed")

    decision = precision.resolve(request, cap, no_trial, precision.PrecisionCache(), key)
    return precision.apply(cfg, decision.choice), decision.describe()


def teacher_test_acc(cfg, teacher, splits, device) -> float:
    """Top-1 of the teacher on the test split (never through the cache: test images are not augmented)."""
    import dataclasses

    from kdlab.data import build_dataloaders
    from kdlab.evaluation import evaluate_model

    if splits.test is not None:  # DATASET.VAL_SPLIT: the test split, not the held-out training images
        splits = dataclasses.replace(splits, val=splits.test, test=None)
    _, loader, _ = build_dataloaders(cfg, splits=splits)
    return round(evaluate_model(teacher, loader, device, splits)["top1"], 4)


def summary(cache, seconds: float | None) -> str:
    size_mb = os.path.getsize(os.path.join(cache.path, "logits.bin")) / 2**20
    acc = cache.meta.get("teacher_test_acc")
    lines = [f"teacher cache: {cache.path}",
             f"  {cache.num_images} images x {cache.num_views} views x {cache.num_classes} classes, {cache.dtype}, "
             f"{size_mb:.1f} MB, precision {cache.key['precision']}",
             f"  teacher test top-1: {acc:.2f}" if acc is not None else "  teacher test top-1: not measured"]
    if seconds is not None:
        lines.append(f"  build time: {seconds:.1f} s")
    return "\n".join(lines)


def plan_for(cfg, args):
    """(cfg with its precision concrete, device, splits, teacher, cache plan) of the configured run."""
    import torch

    from kdlab.data.teacher_cache import compute_precision, resolve_cache
    from kdlab.engine.builder import build_splits, build_teacher, select_device

    device = select_device(cfg)
    splits = build_splits(cfg)
    cfg, decided = run_precision(cfg, device, splits)
    teacher = build_teacher(cfg, splits)
    if cfg.SOLVER.CHANNELS_LAST:  # as the run holds it (the builder then feeds NHWC batches)
        teacher.to(memory_format=torch.channels_last)
    plan = resolve_cache(cfg, teacher, splits, root=args.dir or None, dtype=args.dtype or None,
                         precision=compute_precision(cfg))
    if isinstance(plan, str):
        raise ConfigError(f"no teacher cache for this run: {plan}")
    print(f"precision: {plan.key['precision']} ({decided}); {plan.num_images} images x {plan.num_views} views",
          file=sys.stderr)
    return cfg, device, splits, teacher, plan


def verify(plan, cfg_arg: str) -> int:
    from kdlab.data.teacher_cache import TeacherCache

    try:
        cache = TeacherCache.open(plan.path, plan.key)
    except FileNotFoundError:
        raise ConfigError(f"no teacher cache at {plan.path}; build it with tools/cache_teacher.py "
                          f"--cfg {cfg_arg or '<config>'} (without --verify)") from None
    print(summary(cache, None))
    print("verified: size and every chunk checksum match")
    return 0


def build(cfg, args, device, splits, teacher, plan) -> int:
    """Build (or finish) the cache unless a complete one is there; then measure the teacher's test accuracy once."""
    from kdlab.data.teacher_cache import CacheCorrupt, TeacherCache, build_teacher_cache
    from kdlab.engine.step_utils import autocast_context
    from kdlab.engine.teacher_cache_run import build_batch_size

    try:
        print(summary(TeacherCache.open(plan.path, plan.key), None))
        print("already complete: nothing to build")
        return 0
    except (FileNotFoundError, CacheCorrupt):
        pass
    start = time.perf_counter()
    batch_size = args.batch_size or build_batch_size(device)
    cache = build_teacher_cache(teacher, plan.images, plan.views, plan.path, plan.key, batch_size=batch_size,
                                device=device, autocast=autocast_context(cfg, device), progress=cfg.LOG.PROGRESS)
    seconds = time.perf_counter() - start
    if "teacher_test_acc" not in cache.meta:
        cache.update_meta(teacher_test_acc=teacher_test_acc(cfg, teacher, splits, device))
    print(summary(cache, seconds))
    return 0


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.batch_size < 0:
        raise ConfigError(f"--batch-size must be >= 1 (0: the device's default), got {args.batch_size}")
    opts = list(args.opts) + (["SOLVER.DEVICE", args.device] if args.device else [])
    cfg = load_cfg(args.cfg or None, opts)
    from kdlab.engine.loggers import setup_logging

    setup_logging()
    cfg, device, splits, teacher, plan = plan_for(cfg, args)
    return verify(plan, args.cfg) if args.verify else build(cfg, args, device, splits, teacher, plan)


if __name__ == "__main__":
    run_cli(main, prog="cache_teacher.py")
