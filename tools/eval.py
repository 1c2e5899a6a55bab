"""Evaluate a checkpoint: python tools/eval.py --cfg X.yaml --ckpt PATH [--json] [KEY VALUE ...].

Classification prints top-1/top-5, per-class accuracy, the confusion matrix and scikit-learn's
classification report (precision, recall, F1, support; --json: "classification_report"); segmentation (voc)
prints mIoU, pixel accuracy and per-class IoU (--json: "miou", "pixel_acc" in percent, "per_class_iou").

--plots DIR saves the confusion matrix and per-class bars; on segmentation also prediction_NN.png for the
first --num-images validation images: image | ground truth | teacher | student masks in VOC's palette, the
teacher (DISTILLER.TEACHER, loaded as training loads it) only with --teacher or --teacher-ckpt PATH.

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

VALUE_FLAGS = {"--cfg", "--ckpt", "-c", "-m", "--model", "-d", "--dataset", "-bs", "--batch-size", "--plots",
               "--num-images", "--teacher-ckpt"}
BOOL_FLAGS = {"--json", "--debug", "--model-info", "-h", "--help", "--teacher"}


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
    p.add_argument("--num-images", type=int, default=4, metavar="N",
                   help="segmentation --plots: prediction figures of the first N validation images (default 4)")
    p.add_argument("--teacher", action="store_true",
                   help="segmentation --plots: add the teacher's masks (DISTILLER.TEACHER, as training loads it)")
    p.add_argument("--teacher-ckpt", default="", metavar="PATH",
                   help="as --teacher, with DISTILLER.TEACHER_CKPT PATH")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides, e.g. DATASET.ROOT /data")
    return p.parse_args(argv)


def prediction_figures(cfg, args) -> list[str]:
    """prediction_NN.png in args.plots: the first args.num_images validation images with the masks."""
    from kdlab.data import build_datasets
    from kdlab.engine.builder import build_student, build_teacher, select_device
    from kdlab.evaluation.segmentation import segmentation_samples
    from kdlab.models import load_weights
    from kdlab.reports.segmentation import normalization_of, save_prediction_figures

    splits = build_datasets(cfg)
    device = select_device(cfg)
    models = {}
    if args.teacher or args.teacher_ckpt:
        models[f"teacher ({cfg.DISTILLER.TEACHER})"] = build_teacher(cfg, splits)
    student = build_student(cfg, splits)
    load_weights(student, args.ckpt, what="checkpoint")
    models[f"student ({cfg.DISTILLER.STUDENT})"] = student
    vt = splits.val_batch_transform
    samples = segmentation_samples(models, splits.val, device, args.num_images,
                                   batch_transform=(lambda x: vt(x.to(device))) if vt else None)
    mean, std = normalization_of(getattr(splits.val, "transform", None))
    return save_prediction_figures(samples, args.plots, mean, std, f"{cfg.DISTILLER.STUDENT} on {cfg.DATASET.TYPE}")


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    opts = list(args.opts)
    if args.model:
        opts += ["DISTILLER.STUDENT", args.model]
    if args.dataset:
        opts += ["DATASET.TYPE", args.dataset]
    if args.batch_size:
        opts += ["DATASET.TEST.BATCH_SIZE", str(args.batch_size)]
    if args.teacher_ckpt:
        opts += ["DISTILLER.TEACHER_CKPT", args.teacher_ckpt]
    if not args.ckpt:
        raise ConfigError("--ckpt PATH is required (a kdlab run's student_best, or an mdistiller checkpoint)")
    if (args.teacher or args.teacher_ckpt) and not args.plots:
        raise ConfigError("--teacher / --teacher-ckpt add the teacher's masks to the prediction figures; "
                          "give --plots DIR too")
    if args.num_images < 0:
        raise ConfigError(f"--num-images must be >= 0, got {args.num_images}")
    cfg = load_cfg(args.cfg or None, opts)

    from kdlab.engine.builder import evaluate_checkpoint
    from kdlab.evaluation import format_report, format_segmentation_report

    report = evaluate_checkpoint(cfg, args.ckpt)
    if args.plots:
        from kdlab.reports.plots import save_eval_plots

        report["plots"] = save_eval_plots(report, args.plots)
        if report.get("task") == "segmentation":
            report["plots"] += prediction_figures(cfg, args)
        elif args.teacher or args.teacher_ckpt:
            raise ConfigError("--teacher / --teacher-ckpt: prediction figures are drawn for segmentation only")
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
