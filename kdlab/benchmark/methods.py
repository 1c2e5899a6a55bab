"""The per-method sweep behind `tools/bench.py --method`: what each distillation method costs per step.

Every shipped config of one teacher/student pair (configs/<dataset>/<method>/<pair>.yaml, e.g.
resnet32x4_resnet8x4 on CIFAR-100) is built as a run builds it (random teacher weights, synthetic
CIFAR files in the real layout) and its `Trainer.train_step` is timed, all methods interleaved in one
process on batches of the same shape, so that load from other processes affects them alike. All steps
use one precision setting: `auto` decided once, on the first method's config (a fresh trial), or what
SOLVER.AMP / CHANNELS_LAST say when they are fixed. The result gives each method's median seconds
per step and its ratio to KD's (the cost of the method next to plain logit distillation), plus the
extra trainable parameters it adds. Memory-bank methods (CRD) get a bank the size of the synthetic
training split, not of the real dataset.
"""

from __future__ import annotations

import contextlib
import glob
import os
import statistics
import tempfile
from typing import Any, Optional

import torch

from kdlab.benchmark.data import dataset_for_bench
from kdlab.benchmark.step import _warm, auto_decision, make_trainer, time_interleaved, trainer_step
from kdlab.config import load_cfg
from kdlab.config.load import read_yaml
from kdlab.engine import precision
from kdlab.engine.builder import select_device
from kdlab.errors import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_PAIR = {"cifar100": "resnet32x4_resnet8x4", "cifar10": "resnet32x4_resnet8x4",
                "digits": "digits_teacher_digits_student"}


def method_label(path: str) -> str:
    """DISTILLER.TYPE of a config, with its trainer when that is not the plain one (e.g. "KD+dot")."""
    node = read_yaml(path)  # follows _BASE_
    name = (node.get("DISTILLER") or {}).get("TYPE", "NONE")
    trainer = (node.get("SOLVER") or {}).get("TRAINER", "base")
    return name if trainer in ("base", "crd", "ours", "aug") else f"{name}+{trainer}"


def method_configs(dataset: str = "cifar100", pair: Optional[str] = None, root: str = REPO) -> dict[str, str]:
    """{method label: config path} of every shipped config of `pair` on `dataset`, the vanilla student excluded."""
    pair = pair or DEFAULT_PAIR.get(dataset, "")
    found = {}
    for path in sorted(glob.glob(os.path.join(root, "configs", dataset, "*", f"{pair}.yaml"))):
        label = method_label(path)
        if label != "NONE":
            found.setdefault(label, path)
    if not found:
        raise ConfigError(f"--method: no configs/{dataset}/*/{pair}.yaml; pass --pair with a pair that has configs")
    return found


def select(configs: dict[str, str], wanted: str) -> dict[str, str]:
    """The configs named by a comma-separated --method value ("all": every one); KD always comes first."""
    if wanted.lower() == "all":
        names = list(configs)
    else:
        names = [n.strip() for n in wanted.split(",") if n.strip()]
        lower = {k.lower(): k for k in configs}
        unknown = [n for n in names if n.lower() not in lower]
        if unknown:
            raise ConfigError(f"--method: no shipped config for {', '.join(unknown)}; available: {', '.join(configs)}")
        names = [lower[n.lower()] for n in names]
    if "KD" in configs and "KD" not in names:
        names.insert(0, "KD")  # the baseline of the ratios
    names.sort(key=lambda n: n != "KD")
    return {n: configs[n] for n in names}


def bench_methods(
    configs: dict[str, str],
    opts: list[str] = (),
    steps: int = 10,
    warmup: int = 3,
) -> dict[str, Any]:
    """Median Trainer.train_step seconds of each config, interleaved; ratios to KD's step."""
    base = ["DATASET.NUM_WORKERS", "0", "LOG.PROGRESS", "False", *opts]
    cfgs = {name: load_cfg(path, base) for name, path in configs.items()}
    first = next(iter(cfgs.values()))
    device = select_device(first)
    runners, extra, setting = {}, {}, None
    with contextlib.ExitStack() as stack:
        run_root = stack.enter_context(tempfile.TemporaryDirectory(prefix="kdlab-bench-methods-"))
        for name, cfg in cfgs.items():
            n_train, n_test = 2 * cfg.SOLVER.BATCH_SIZE, 2 * cfg.DATASET.TEST.BATCH_SIZE
            data_cfg, source, _ = stack.enter_context(dataset_for_bench(cfg, n_train=n_train, n_test=n_test))
            if setting is None:  # one precision setting for every method
                setting = auto_decision(data_cfg, device).choice
            data_cfg = precision.apply(data_cfg, setting)
            trainer = make_trainer(data_cfg, device, os.path.join(run_root, name.replace("+", "_")))
            stack.callback(trainer.logger.close)
            runners[name] = trainer_step(trainer, next(iter(trainer.train_loader)))
            extra[name] = trainer.distiller.extra_parameter_count()
            _warm(runners[name], warmup, device)
        times = time_interleaved(runners, steps, device)
    medians = {name: statistics.median(t) for name, t in times.items()}
    kd = medians.get("KD")
    return {
        "dataset": first.DATASET.TYPE, "teacher": first.DISTILLER.TEACHER, "student": first.DISTILLER.STUDENT,
        "batch_size": first.SOLVER.BATCH_SIZE, "device": str(device), "threads": torch.get_num_threads(),
        "precision": setting.label, "data": source, "steps": steps, "warmup": warmup,
        "methods": {name: {"config": os.path.relpath(configs[name], REPO), "step_s": medians[name],
                           "ratio_vs_kd": medians[name] / kd if kd else None, "extra_params": extra[name]}
                    for name in medians},
    }


def report_methods(r: dict) -> str:
    lines = [f"{r['teacher']} -> {r['student']} on {r['dataset']} ({r['data']} data), batch {r['batch_size']}, "
             f"{r['device']}, {r['threads']} threads, {r['precision']}; median of {r['steps']} steps each, "
             "interleaved",
             f"  {'method':<12}{'s/step':>9}{'x KD':>8}{'extra params':>15}  config"]
    for name, m in r["methods"].items():
        ratio = f"{m['ratio_vs_kd']:.2f}" if m["ratio_vs_kd"] is not None else "-"
        lines.append(f"  {name:<12}{m['step_s']:9.3f}{ratio:>8}{m['extra_params']:>15,}  {m['config']}")
    return "\n".join(lines)

