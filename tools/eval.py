"""Evaluate a checkpoint: python tools/eval.py --cfg X.yaml --ckpt PATH [--json] [KEY VALUE ...].

Classification prints top-1/top-5, per-class accuracy, the confusion matrix and scikit-learn's
classification report (precision, recall, F1, support; --json: "classification_report"); segmentation (voc)
prints mIoU, pixel accuracy and per-class IoU (--json: "miou", "pixel_acc" in percent, "per_class_iou").

mdistiller's form also works: python tools/eval.py -m resnet8x4 -c CKPT -d cifar100.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kdlab.cli import hoist_flags, run_cli  # noqa: E402
from kdlab.config import load_cfg  # noqa: E402
from kdlab.errors import ConfigError  # noqa: E402

VALUE_FLAGS = {"--cfg", "--ckpt", "-c", "-m", "--model", "-d", "--dataset", "-bs", "--batch-size", "--plots"}
BOOL_FLAGS = {"--json", "--debug", "--model-info", "-h", "--help"}


def parse_args(argv: list[str]) -> argparse.Namespace:
    argv = hoist_flags(argv, VALUE_FLAGS, BOOL_FLAGS)
    p = argparse.ArgumentParser("tools/eval.py", description="evaluate a kdlab / mdistiller checkpoint")
    p.add_argument("--cfg", default="", help="YAML config (the model is DISTILLER.STUDENT)")
    p.add_argument("--ckpt", "-c", default="", help="checkpoint file (kdlab, mdistiller or a bare state dict)")
    p.add_argument("-m", "--model", default="", help="model name (overrides DISTILLER.STUDENT)")
    p.add_argument("-d", "--dataset", default="", help="dataset type (overrides DATASET.TYPE)")
    p.add_argument("-bs", "--batch-size", type=int, default=0, help="evaluation batch size")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--plots", default="", metavar="DIR", help="save confusion-matrix and per-class plots (PNG) in DIR")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides, e.g. DATASET.ROOT /data")
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    opts = list(args.opts)
    if args.model:
        opts += ["DISTILLER.STUDENT", args.model]
    if args.dataset:
        opts += ["DATASET.TYPE", args.dataset]
    if args.batch_size:
        opts += ["DATASET.TEST.BATCH_SIZE", str(args.batch_size)]
    if not args.ckpt:
        raise ConfigError("--ckpt PATH is required (a kdlab run's student_best, or an mdistiller checkpoint)")
    cfg = load_cfg(args.cfg or None, opts)

    from kdlab.engine.builder import evaluate_checkpoint
    from kdlab.evaluation import format_report, format_segmentation_report

    report = evaluate_checkpoint(cfg, args.ckpt)
    if args.plots:
        from kdlab.reports.plots import save_eval_plots

        report["plots"] = save_eval_plots(report, args.plots)
        print("plots: " + ", ".join(report["plots"]), file=sys.stderr)
    if args.json:
        print(json.dumps(report))
    else:
        print(f"model: {report['model']}  checkpoint: {args.ckpt}  dataset: {report['dataset']}")
        segmentation = report.get("task") == "segmentation"
        print(format_segmentation_report(report) if segmentation else format_report(report))
    return 0


if __name__ == "__main__":
    run_cli(main, prog="eval.py")
