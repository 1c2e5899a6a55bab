"""The teacher-output cache on a device: KD step with the teacher on the fly vs from the cache, and the build.

    python tools/bench_teacher_cache.py [--device cuda] [--json] [--steps 20] [--warmup 5] [--build-images 2048]
        [--build-batch N] [--reference-repo PATH/TO/mdistiller] [--tiny] [KEY VALUE ...]

On synthetic CIFAR-100 data (no dataset or checkpoint needed), for KD resnet32x4 -> resnet8x4
(configs/cifar100/kd/resnet32x4_resnet8x4.yaml; SOLVER.AMP / CHANNELS_LAST `auto` resolved as a run
resolves them): Trainer.train_step as shipped, the same step reading the teacher's logits from a real
cache (kdlab.data.teacher_cache, built over --build-images images x 162 views; the timed batch's images
are among them), interleaved, and mdistiller's step with --reference-repo. The build's throughput gives
the cost of a full CIFAR-100 build (50000 x 162 image-views) in hours and in epochs of the on-the-fly step,
and the 240-epoch estimates with and without the cache. A few minutes on a GPU; --tiny (resnet8 pair,
batch 8, a few images) takes seconds on a CPU and is what the test suite runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kdlab.cli import hoist_flags, run_cli  # noqa: E402
from kdlab.config import load_cfg  # noqa: E402

CONFIG = "configs/cifar100/kd/resnet32x4_resnet8x4.yaml"
TINY = {"DISTILLER.TEACHER": "resnet8", "DISTILLER.STUDENT": "resnet8", "SOLVER.BATCH_SIZE": 8,
        "DATASET.TEST.BATCH_SIZE": 8, "SOLVER.AMP": False, "SOLVER.CHANNELS_LAST": False}
VALUE_FLAGS = {"--device", "--steps", "--warmup", "--build-images", "--build-batch", "--reference-repo"}
BOOL_FLAGS = {"--json", "--tiny", "--debug", "-h", "--help"}


def parse_args(argv: list[str]) -> argparse.Namespace:
    argv = hoist_flags(argv, VALUE_FLAGS, BOOL_FLAGS)
    p = argparse.ArgumentParser("tools/bench_teacher_cache.py", description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    p.add_argument("--steps", type=int, default=20, help="timed steps of each kind (median reported)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    p.add_argument("--build-images", type=int, default=2048, help="images in the cache whose build is timed")
    p.add_argument("--build-batch", type=int, default=0,
                   help="image-views per teacher batch while building (default: as a run builds on the device)")
    p.add_argument("--reference-repo", default="", help="mdistiller checkout: also time its step, interleaved")
    p.add_argument("--tiny", action="store_true", help="seconds on a CPU: resnet8 pair, batch 8, 4 cache images")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides")
    return p.parse_args(argv)


def report(r: dict) -> str:
    b = r["build"]
    rows = [("teacher on the fly", r["step_s"], ""),
            ("teacher cache", r["cached_step_s"], f"x{r['speedup_cached']:.2f}")]
    if "reference_step_s" in r:
        rows.append(("mdistiller", r["reference_step_s"], ""))
    device = f"{r['device']} ({r['device_name']})" if "device_name" in r else r["device"]
    lines = [f"KD {r['teacher']} -> {r['student']}, {r['dataset']} (synthetic), batch {r['batch_size']}, {device}, "
             f"{r['threads']} threads; precision {r['auto']['pick']}",
             f"  {'step':<20}{'s/step':>10}{'images/s':>12}"]
    lines += [f"  {name:<20}{s:10.4f}{r['batch_size'] / s:12.1f}  {note}" for name, s, note in rows]
    if "ratio_cached" in r:
        lines.append(f"  kdlab / mdistiller: {r['ratio']:.3f} on the fly, {r['ratio_cached']:.3f} with the cache")
    lines.append(f"  build: {b['image_views_per_s']:.0f} image-views/s ({b['images']} images x {b['views']} views in "
                 f"{b['build_s']:.2f} s, batch {b['build_batch']}); lookup vs teacher max |diff| "
                 f"{b['lookup_max_abs_diff']:.2e}")
    if "full_build_h" in b:
        pays = (f"; pays off after {r['break_even_epochs']:.0f} training epochs with this teacher"
                if "break_even_epochs" in r else "; the cached step is not faster here: it never pays off")
        lines.append(f"  full CIFAR-100 build: {b['full_build_h']:.2f} h = {b['full_build_epochs']:.1f} epochs of the "
                     f"on-the-fly step{pays}")
    if "run_estimate_cached_h" in r:
        lines.append(f"  {r['epochs']}-epoch run: {r['run_estimate_h']:.2f} h on the fly, "
                     f"{r['run_estimate_cached_h']:.2f} h with the cache")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    opts = {"SOLVER.DEVICE": args.device, **(TINY if args.tiny else {})}
    pairs = [t for k, v in opts.items() for t in (k, str(v))] + list(args.opts)
    cfg = load_cfg(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), CONFIG), pairs)
    from kdlab.benchmark import bench_step

    steps, warmup = (2, 1) if args.tiny else (args.steps, args.warmup)
    build_images, build_batch = (4, 64) if args.tiny else (args.build_images, args.build_batch)
    result = bench_step(cfg, steps=steps, warmup=warmup, reference_repo=args.reference_repo or None, plain=False,
                        teacher_cache=True, cache_images=2 if args.tiny else 0, build_images=build_images,
                        build_batch=build_batch)
    if result["device"].startswith("cuda"):
        import torch

        result["device_name"] = torch.cuda.get_device_name(torch.device(result["device"]))
    print(json.dumps(result) if args.json else report(result))
    return 0


if __name__ == "__main__":
    run_cli(main, prog="bench_teacher_cache.py")
