"""Logit views of a teacher and a student, raw and standardized (the logit-standardization paper's pictures).

python tools/visualize.py --cfg CFG --student-ckpt S [--teacher-ckpt T] [--out DIR] [KEY VALUE ...]

The teacher is DISTILLER.TEACHER loaded from --teacher-ckpt (default: DISTILLER.TEACHER_CKPT), the
student DISTILLER.STUDENT loaded from --student-ckpt; both run on the test split of DATASET.TYPE.
Writes logit_values.png, logit_sample_stats.png, logit_scatter.png, logit_example.png and
logit_stats.json into --out (default ./reports/logits).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kdlab.cli import run_cli  # noqa: E402
from kdlab.config import load_cfg  # noqa: E402
from kdlab.errors import ConfigError  # noqa: E402


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser("tools/visualize.py", description="teacher/student logit distributions")
    p.add_argument("--cfg", default="", help="YAML config (teacher: DISTILLER.TEACHER, student: DISTILLER.STUDENT)")
    p.add_argument("--teacher-ckpt", default="", help="teacher weights (default: DISTILLER.TEACHER_CKPT)")
    p.add_argument("--student-ckpt", default="", help="student weights, e.g. a run's student_best")
    p.add_argument("--out", default=os.path.join("reports", "logits"), help="output folder")
    p.add_argument("--max-samples", type=int, default=10000, help="test samples used (first N)")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides, e.g. DATASET.ROOT /data")
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if not args.student_ckpt:
        raise ConfigError("--student-ckpt PATH is required (e.g. a kdlab run's student_best)")
    if args.max_samples < 2:
        raise ConfigError(f"--max-samples {args.max_samples}: use at least 2")
    cfg = load_cfg(args.cfg or None, args.opts)

    from kdlab.distillers import get_distiller_class

    no_teacher = not get_distiller_class(cfg.DISTILLER.TYPE).needs_teacher
    if not cfg.DISTILLER.TEACHER or (no_teacher and "DISTILLER.TEACHER" not in args.opts):
        raise ConfigError(f"{args.cfg or 'the default config'} trains without a teacher (DISTILLER.TYPE "
                          f"{cfg.DISTILLER.TYPE}): use a distillation config or pass DISTILLER.TEACHER NAME")

    from kdlab.engine.loggers import setup_logging
    from kdlab.reports.logits import save_logit_views, teacher_student_logits

    setup_logging()
    logits, targets, class_names = teacher_student_logits(cfg, args.student_ckpt, args.teacher_ckpt or None,
                                                          args.max_samples)
    stats = save_logit_views(logits, targets, args.out, class_names)
    print(f"{stats['num_samples']} test samples, {stats['num_classes']} classes "
          f"(teacher {cfg.DISTILLER.TEACHER}, student {cfg.DISTILLER.STUDENT})")
    for name in logits:
        raw = stats[name]["raw"]
        print(f"  {name:<8} top-1 {stats[name]['top1']:6.2f} %   per-sample logit mean "
              f"{raw['sample_mean']['mean']:7.3f} ± {raw['sample_mean']['std']:.3f}   std "
              f"{raw['sample_std']['mean']:7.3f} ± {raw['sample_std']['std']:.3f}")
    print(f"  Pearson r teacher/student logits: raw {stats['pearson_r']['raw']:.3f}, "
          f"standardized {stats['pearson_r']['standardized']:.3f}")
    print("wrote " + ", ".join(stats["figures"]) + f", {os.path.join(args.out, 'logit_stats.json')}")
    return 0


if __name__ == "__main__":
    run_cli(main, prog="visualize.py")
