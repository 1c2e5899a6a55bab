"""Results table across runs: find run directories, group them by setting, mean ± std over seeds.

A row is one setting: (dataset, teacher, student, method, logit standardization on/off,
planned epochs). Accuracies are the mean ± sample standard deviation (n - 1) over the runs (seeds) of
that setting; with a single run the deviation is undefined and shown as "—" (an empty CSV cell).
"last" (test top-1 after the final epoch) is the headline number; "best" (the maximum over
epochs) is reported too, but it is chosen on the test set and therefore optimistic.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Optional

import yaml

from kdlab.errors import KdlabError

log = logging.getLogger("kdlab")

NO_VALUE = "—"
CSV_FIELDS = [
    "dataset", "teacher", "student", "method", "logit_stand", "epochs", "n", "seeds",
    "last_top1_mean", "last_top1_std", "best_top1_mean", "best_top1_std", "last_top5_mean", "last_top5_std",
    "best_val_mean", "best_val_std", "student_params", "extra_params", "student_macs", "train_time_s_mean", "run_dirs",
]


class NoRunsFoundError(KdlabError, FileNotFoundError):
    """No run directory (a folder holding metrics.json) was found under the given folders."""


@dataclass
class Run:
    """One finished (or stopped) training run: its folder, metrics.json and config.yaml."""

    path: str
    metrics: dict
    config: dict = field(default_factory=dict)

    @property
    def seed(self) -> Optional[int]:
        return self.metrics.get("seed", self.config.get("EXPERIMENT", {}).get("SEED"))

    @property
    def history(self) -> list[dict]:
        return self.metrics.get("history") or []

    @property
    def key(self) -> tuple:
        m, c = self.metrics, self.config
        method = m.get("method") or c.get("DISTILLER", {}).get("TYPE", "?")
        if "teacher" in m:
            teacher = m["teacher"]
        else:
            teacher = c.get("DISTILLER", {}).get("TEACHER") if method != "NONE" else None
        distiller = c.get("DISTILLER", {})
        return (
            m.get("dataset") or c.get("DATASET", {}).get("TYPE", "?"),
            model_label(teacher, distiller.get("TEACHER_KWARGS")) if teacher else None,
            model_label(m.get("student") or distiller.get("STUDENT", "?"), distiller.get("MODEL_KWARGS")),
            method,
            bool(m.get("logit_stand", c.get("EXPERIMENT", {}).get("LOGIT_STAND", False))),
            # planned epochs (SOLVER.EPOCHS), so early-stopped seeds of one setting share a row
            m.get("epochs") or c.get("SOLVER", {}).get("EPOCHS") or m.get("last_epoch", len(self.history)),
        )

    @property
    def incomplete(self) -> bool:
        """Stopped before SOLVER.EPOCHS without early stopping enabled (still running, or interrupted)."""
        epochs = self.metrics.get("epochs")
        patience = self.config.get("SOLVER", {}).get("EARLY_STOP_PATIENCE", 0)
        return epochs is not None and self.metrics.get("last_epoch", 0) < epochs and not patience


def model_label(name: str, kwargs: Optional[dict]) -> str:
    """The model name with the builder arguments the run's config set (DISTILLER.MODEL_KWARGS / TEACHER_KWARGS),
    e.g. cifar10_cnn(dropout=0.5, scale=16), so that one architecture at two sizes makes two rows; DROPOUT 0
    (unset) is left out."""
    items = [(str(k).lower(), v) for k, v in sorted((kwargs or {}).items())
             if not (str(k).upper() == "DROPOUT" and not v)]
    return f"{name}({', '.join(f'{k}={v}' for k, v in items)})" if items else name


def load_run(path: str) -> Optional[Run]:
    """Read path/metrics.json and path/config.yaml; None (with a warning) if unreadable or empty."""
    try:
        with open(os.path.join(path, "metrics.json"), encoding="utf-8") as f:
            metrics = json.load(f)
    except (OSError, ValueError) as exc:
        log.warning("skipping %s: cannot read metrics.json (%s)", path, exc)
        return None
    if not isinstance(metrics, dict) or metrics.get("last_acc") is None:
        log.warning("skipping %s: metrics.json holds no finished epoch", path)
        return None
    config: dict = {}
    cfg_path = os.path.join(path, "config.yaml")
    if os.path.isfile(cfg_path):
        try:
            with open(cfg_path, encoding="utf-8") as f:
                config = yaml.safe_load(f) or {}
        except (OSError, yaml.YAMLError) as exc:
            log.warning("%s: cannot read config.yaml (%s); using metrics.json only", path, exc)
    return Run(path=path, metrics=metrics, config=config if isinstance(config, dict) else {})


def find_runs(logdirs: Iterable[str], include_incomplete: bool = False) -> list[Run]:
    """Every run directory (a folder holding metrics.json) under the given folders, each once."""
    seen: set[str] = set()
    runs: list[Run] = []
    for top in logdirs:
        if not os.path.isdir(top):
            raise NoRunsFoundError(f"log folder not found: {top}; pass folders that hold run directories")
        for folder, dirs, files in os.walk(top):
            dirs.sort()
            real = os.path.realpath(folder)
            if "metrics.json" not in files or real in seen:
                continue
            seen.add(real)
            run = load_run(folder)
            if run is None:
                continue
            if run.incomplete and not include_incomplete:
                log.warning("skipping %s: stopped at epoch %s of %s (use --include-incomplete to count it)",
                            folder, run.metrics.get("last_epoch"), run.metrics.get("epochs"))
                continue
            runs.append(run)
    if not runs:
        raise NoRunsFoundError(f"no finished runs (folders with metrics.json) under {', '.join(logdirs)}")
    return runs


def mean_std(values: list[float]) -> tuple[float, Optional[float]]:
    """Mean and sample standard deviation (n - 1); the deviation is None for a single value."""
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else None)


def group_runs(runs: list[Run]) -> dict[tuple, list[Run]]:
    """Runs grouped by setting, in a stable order (dataset, student, teacher, method, LS off before on)."""
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.key, []).append(run)
    setting_order = lambda k: (k[0], k[2], k[1] or "", k[3] != "NONE", k[3], k[4], k[5])
    run_order = lambda r: (r.seed is None, r.seed or 0, r.path)
    return {k: sorted(groups[k], key=run_order) for k in sorted(groups, key=setting_order)}


def summarize(runs: list[Run]) -> list[dict]:
    """One row per setting with mean/std of last top-1, best top-1 and last top-5 over its runs."""
    rows = []
    for key, members in group_runs(runs).items():
        dataset, teacher, student, method, ls, epochs = key
        seeds = [r.seed for r in members]
        if len(set(seeds)) < len(seeds):
            log.warning("%s %s: %d runs share a seed (%s); all are counted", method, student, len(seeds), seeds)
        row = {"dataset": dataset, "teacher": teacher, "student": student, "method": method, "logit_stand": ls,
               "epochs": epochs, "n": len(members), "seeds": seeds, "runs": members,
               "run_dirs": [r.path for r in members]}
        for name, field_name in (("last_top1", "last_acc"), ("best_top1", "best_acc"), ("last_top5", "last_acc_top5"),
                                 ("best_val", "best_val_acc")):  # best_val: runs with a held-out split only
            values = [float(r.metrics[field_name]) for r in members if r.metrics.get(field_name) is not None]
            row[f"{name}_mean"], row[f"{name}_std"] = mean_std(values) if values else (math.nan, None)
        row["student_params"] = members[0].metrics.get("student_params")
        row["extra_params"] = members[0].metrics.get("extra_params") or 0
        row["student_macs"] = members[0].metrics.get("student_macs")
        row["train_time_s_mean"] = statistics.fmean(float(r.metrics.get("train_time_s") or 0.0) for r in members)
        rows.append(row)
    return rows


def variant_label(row: dict) -> str:
    """Short name of a setting's method: 'vanilla', 'KD', 'KD + LS'."""
    name = "vanilla" if row["method"] == "NONE" else row["method"]
    return f"{name} + LS" if row["logit_stand"] else name


def format_mean_std(mean: float, std: Optional[float]) -> str:
    if mean is None or math.isnan(mean):
        return NO_VALUE
    return f"{mean:.2f} ± {NO_VALUE if std is None else f'{std:.2f}'}"


def format_count(n: Optional[int]) -> str:
    """Parameter counts as 7.5 K / 11.2 M."""
    if n is None:
        return NO_VALUE
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}" if n < 10 * scale else f"{n / scale:.1f} {unit}"
    return str(n)


def format_macs(macs: Optional[float]) -> str:
    """MACs as M or G (runs written before MACs were recorded show a dash)."""
    if macs is None:
        return NO_VALUE
    return f"{macs / 1e9:.3f} G" if macs >= 1e9 else f"{macs / 1e6:.2f} M"


def format_duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


TABLE_HEADER = ["Dataset", "Teacher", "Student", "Method", "LS", "Epochs", "n",
                "Top-1 last", "Top-1 best", "Top-5 last", "Params", "MACs", "Train time"]
TABLE_NOTE = (
    "Top-1/top-5: test accuracy (%), mean ± sample std (n − 1) over the n runs (seeds); "
    "'—' for the std means a single run. **last** = after the final epoch (the headline number); "
    "best = maximum over epochs, selected on the test set, hence optimistic. LS = logit standardization. "
    "Params: student (+ extra modules the method trains). MACs: student, one image at the training resolution. "
    "Train time: mean per run."
)


VAL_NOTE = (
    "Runs with a held-out validation split (DATASET.VAL_SPLIT): Val best is the best held-out accuracy, and "
    "their Top-1 best is the test accuracy of the epoch it chose, not a maximum over the test set."
)


def _has_val(rows: list[dict]) -> bool:
    return any(not math.isnan(r.get("best_val_mean", math.nan)) for r in rows)


def markdown_table(rows: list[dict]) -> str:
    """The rows as a GitHub-flavoured Markdown table (no surrounding text); a Val best column where a run has one."""
    val = _has_val(rows)
    header = TABLE_HEADER[:9] + ["Val best"] + TABLE_HEADER[9:] if val else TABLE_HEADER
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 5 + ["---:"] * (len(header) - 5)) + "|"]
    for r in rows:
        params = format_count(r["student_params"])
        if r["extra_params"]:
            params += f" (+{format_count(r['extra_params'])})"
        cells = [
            r["dataset"], r["teacher"] or NO_VALUE, r["student"], "vanilla" if r["method"] == "NONE" else r["method"],
            "on" if r["logit_stand"] else "off", str(r["epochs"]), str(r["n"]),
            f"**{format_mean_std(r['last_top1_mean'], r['last_top1_std'])}**",
            format_mean_std(r["best_top1_mean"], r["best_top1_std"]),
            format_mean_std(r["last_top5_mean"], r["last_top5_std"]),
            *([format_mean_std(r["best_val_mean"], r["best_val_std"])] if val else []),
            params, format_macs(r.get("student_macs")), format_duration(r["train_time_s_mean"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_report(rows: list[dict], figures: Iterable[str] = (), title: str = "Results") -> str:
    """results.md: title, table, the note on how to read it, and the figures (paths relative to the file)."""
    parts = [f"# {title}", "", markdown_table(rows), "", TABLE_NOTE + (" " + VAL_NOTE if _has_val(rows) else ""), ""]
    for fig in figures:
        name = os.path.splitext(os.path.basename(fig))[0].replace("_", " ")
        parts += [f"![{name}]({os.path.basename(fig)})", ""]
    return "\n".join(parts)


def _csv_number(value: Optional[float]) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.6f}"


def write_csv(rows: list[dict], path: str) -> None:
    """results.csv: one line per row, full-precision numbers, empty std cell for a single run."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for r in rows:
            out = {k: r.get(k) for k in CSV_FIELDS}
            for k in CSV_FIELDS:
                if k.endswith(("_mean", "_std")):
                    out[k] = _csv_number(r[k])
            out["teacher"] = r["teacher"] or ""
            out["logit_stand"] = int(r["logit_stand"])
            out["seeds"] = " ".join(str(s) for s in r["seeds"])
            out["run_dirs"] = " ".join(r["run_dirs"])
            writer.writerow(out)
