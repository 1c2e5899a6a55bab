"""Time kdlab's training step (or its data pipeline) for a config.

    python tools/bench.py --cfg configs/cifar100/kd/resnet32x4_resnet8x4.yaml [--steps 10] [--warmup 3]
        [--json] [--reference-repo PATH/TO/mdistiller] [--threads N] [--all-candidates] [KEY VALUE ...]
    python tools/bench.py --cfg ... --data [--json]
    python tools/bench.py --method all|KD,AT,... [--dataset cifar100] [--pair resnet32x4_resnet8x4] [--json]

The step is Trainer.train_step as training runs it (random teacher weights: no checkpoint or dataset
needed for CIFAR), with SOLVER.AMP / CHANNELS_LAST `auto` resolved as a run resolves them (a fresh
trial). Alongside, interleaved in the same process on the same batch, it times every candidate setting
auto chose among (`candidates_step_s`; with --all-candidates also those it rules out here, e.g. bf16 on
a CPU without native bf16), the step with the fast path off (fp32, NCHW, eager: `plain_step_s`) and,
with --reference-repo, mdistiller's step (`reference_step_s`, `ratio` = step_s / reference_step_s).
`ratio_vs_best_fixed` = step_s / the fastest fixed setting. Report ratios: absolute times depend on load.
--method times the step of each method's shipped config for one teacher/student pair, interleaved,
with its ratio to KD's step (kdlab.benchmark.methods).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kdlab.cli import hoist_flags, run_cli  # noqa: E402
from kdlab.config import load_cfg  # noqa: E402

VALUE_FLAGS = {"--cfg", "--steps", "--warmup", "--reference-repo", "--threads", "--batches", "--method", "--pair",
               "--dataset", "--cache-images"}
BOOL_FLAGS = {"--json", "--data", "--no-plain", "--all-candidates", "--teacher-cache", "--debug", "-h", "--help"}


def parse_args(argv: list[str]) -> argparse.Namespace:
    argv = hoist_flags(argv, VALUE_FLAGS, BOOL_FLAGS)
    p = argparse.ArgumentParser("tools/bench.py", description="time kdlab's training step or data pipeline")
    p.add_argument("--cfg", default="", help="YAML config file")
    p.add_argument("--steps", type=int, default=10, help="timed steps (median reported)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation, allocator)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--data", action="store_true", help="time the train loader and batched augmentation instead")
    p.add_argument("--batches", type=int, default=50, help="--data: loader batches to time")
    p.add_argument("--reference-repo", default="", help="mdistiller checkout: also time its step, interleaved")
    p.add_argument("--no-plain", action="store_true", help="skip the fast-path-off baseline")
    p.add_argument("--all-candidates", action="store_true",
                   help="time every precision/memory format this device runs, also those auto rules out")
    p.add_argument("--teacher-cache", action="store_true",
                   help="also time the step reading the teacher logits from a real teacher-output cache, and its build")
    p.add_argument("--cache-images", type=int, default=0,
                   help="--teacher-cache: images in the cache (all their views; default: the batch's; fewer repeat)")
    p.add_argument("--method", default="", help="time these methods' shipped configs of one pair: all, or KD,AT,...")
    p.add_argument("--dataset", default="cifar100", help="--method: the configs/<dataset>/ folder")
    p.add_argument("--pair", default="", help="--method: config file stem, e.g. resnet32x4_resnet8x4 (the default)")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides, e.g. SOLVER.AMP False")
    return p.parse_args(argv)


def _fmt_step(name: str, seconds: float, batch: int, extra: str = "") -> str:
    return f"  {name:<22}{seconds:8.3f} s/step {batch / seconds:9.1f} images/s{extra}"


def report_step(r: dict) -> str:
    who = r["student"] if r["teacher"] is None else f"{r['teacher']} -> {r['student']}"
    fast = f"AMP {r['amp'] or 'off'}, channels_last {'on' if r['channels_last'] else 'off'}, " \
           f"compile {'on' if r['compile'] else 'off'}"
    auto = r["auto"]
    lines = [
        f"{r['config']} {who} on {r['dataset']} ({r['data']} data), batch {r['batch_size']}, {r['device']}, "
        f"{r['threads']} threads; {fast}",
        f"  precision: {auto['pick']}, decided by {auto['decided_by']} ({auto['reason']})",
        _fmt_step("kdlab as shipped", r["step_s"], r["batch_size"],
                  f"  (median of {r['steps']}, warm-up {r['warmup']})"),
    ]
    for name, seconds in r.get("candidates_step_s", {}).items():
        mark = "  <- as shipped" if name == auto["pick"] else ""
        lines.append(_fmt_step(f"  {name}", seconds, r["batch_size"], mark))
    if "best_fixed" in r:
        lines.append(f"  shipped / best fixed ({r['best_fixed']}): {r['ratio_vs_best_fixed']:.3f}")
    if "plain_step_s" in r:
        lines.append(_fmt_step("plain fp32", r["plain_step_s"], r["batch_size"],
                               f"  fast path x{r['speedup_vs_plain']:.2f}"))
    if "reference_step_s" in r:
        lines.append(_fmt_step("mdistiller", r["reference_step_s"], r["batch_size"],
                               f"  ratio kdlab/mdistiller {r['ratio']:.3f}"))
    if "cached_step_s" in r:
        lines.extend(report_cached(r))
    memory = "CUDA allocated" if "cuda" in r["device"] else "RSS growth"
    lines.append(f"  peak memory     {r['peak_mem_mb']:.0f} MB ({memory})")
    if "run_estimate_h" in r:
        hours = r["run_estimate_h"]
        took = f"{hours:.1f} h" if hours >= 1 else f"{hours * 60:.0f} min"
        lines.append(f"  {r['epochs']}-epoch run     ~{took} "
                     f"({r['train_images']} train / {r['test_images']} test images, incl. evaluation)")
    lines.append(f"  load average    {r['load_avg_1m'][0]} -> {r['load_avg_1m'][1]}")
    return "\n".join(lines)


def report_cached(r: dict) -> list[str]:
    vs_ref = f", ratio kdlab/mdistiller {r['ratio_cached']:.3f}" if "ratio_cached" in r else ""
    b = r["build"]
    lines = [_fmt_step("kdlab, teacher cache", r["cached_step_s"], r["batch_size"],
                       f"  x{r['speedup_cached']:.2f} vs as shipped{vs_ref}"),
             f"  cache build     {b['image_views_per_s']:.0f} image-views/s ({b['images']} images x {b['views']} views "
             f"in {b['build_s']:.1f} s; lookup vs teacher max |diff| {b['lookup_max_abs_diff']:.2e})"]
    if "full_build_s" in b:
        lines.append(f"  full build      {b['full_images']} x {b['views']}: {b['full_build_h']:.2f} h = "
                     f"{b['full_build_epochs']:.1f} epochs of the on-the-fly step")
    if "run_estimate_cached_h" in r:
        lines.append(f"  {r['epochs']}-epoch run     ~{r['run_estimate_cached_h']:.1f} h with the cache "
                     f"(~{r['run_estimate_h']:.1f} h without; plus the build once per teacher)")
    if "break_even_epochs" in r:
        lines.append(f"  pays off after  {r['break_even_epochs']:.0f} training epochs with this teacher "
                     f"(the cache saves {100 * r['saved_fraction']:.0f} % of each step)")
    return lines


def report_data(r: dict) -> str:
    aug = r["augment_images_per_s"]
    loader = r["loader_images_per_s"]
    return "\n".join([
        f"{r['dataset']} train loader ({r['data']} data, {r['augment']}), batch {r['batch_size']}, "
        f"{r['num_workers']} workers, {r['device']}",
        f"  loader          {loader:10.0f} images/s" if loader else "  loader          (no batches timed)",
        f"  augmentation    batched {aug['batched']:.0f} images/s | per-sample tensors {aug['per_sample']:.0f} "
        f"| per-sample PIL {aug['per_sample_pil']:.0f} -> x{r['augment_speedup_vs_pil']:.1f} vs PIL, "
        f"x{r['augment_speedup_vs_tensor']:.1f} vs tensors",
    ])


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.method:
        from kdlab.benchmark.methods import bench_methods, method_configs, report_methods, select

        configs = select(method_configs(args.dataset, args.pair or None), args.method)
        result = bench_methods(configs, args.opts, steps=args.steps, warmup=args.warmup)
        print(json.dumps(result) if args.json else report_methods(result))
        return 0
    cfg = load_cfg(args.cfg or None, args.opts)
    from kdlab.benchmark import bench_data, bench_step

    if args.data:
        result = bench_data(cfg, batches=args.batches)
        print(json.dumps(result) if args.json else report_data(result))
        return 0
    result = bench_step(cfg, steps=args.steps, warmup=args.warmup, reference_repo=args.reference_repo or None,
                        plain=not args.no_plain, all_candidates=args.all_candidates,
                        teacher_cache=args.teacher_cache, cache_images=args.cache_images)
    print(json.dumps(result) if args.json else report_step(result))
    return 0


if __name__ == "__main__":
    run_cli(main, prog="bench.py")
