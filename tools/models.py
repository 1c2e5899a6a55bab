"""Model report: python tools/models.py (--model NAME | --all) [--input-size 32] [--num-classes 100] [--json].

Parameters, MACs and FLOPs of one batch-1 forward (torch.utils.flop_counter; MACs = FLOPs / 2)
and the median latency on the chosen device, as a Markdown table or JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from kdlab.cli import run_cli  # noqa: E402
from kdlab.errors import ConfigError, KdlabError  # noqa: E402
from kdlab.evaluation.model_info import model_info  # noqa: E402
from kdlab.models import MODELS, build_model  # noqa: E402


def report(name: str, args: argparse.Namespace) -> dict:
    """Build `name` for the requested input and return its model_info row."""
    model = _build(name, args)
    info = model_info(model, args.input_size, args.in_channels, args.device, args.runs)
    return {"model": name, "input_size": args.input_size, "device": args.device, **info}


def _build(name: str, args: argparse.Namespace) -> torch.nn.Module:
    kwargs = {"image_size": args.input_size} if name.startswith("vit_") else {}  # ViT is built per size
    try:
        return build_model(name, args.num_classes, in_channels=args.in_channels, **kwargs)
    except (ConfigError, TypeError):
        if args.in_channels != 3:
            raise
        return build_model(name, args.num_classes, **kwargs)  # a model without in_channels (RGB only)


def markdown(rows: list[dict]) -> str:
    """One Markdown table: parameters, MACs and FLOPs in millions, latency in ms."""
    lines = [
        "| model | params (M) | MACs (M) | FLOPs (M) | latency (ms) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        latency = "-" if r["latency_ms"] is None else f"{r['latency_ms']:.2f}"
        millions = [f"{r['params'] / 1e6:.3f}", f"{r['macs'] / 1e6:.2f}", f"{r['flops'] / 1e6:.2f}"]
        cells = [r["model"], *millions, latency]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        "tools/models.py", description="parameters, MACs and latency of registered models"
    )
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help="one registered model name")
    which.add_argument("--all", action="store_true", help="every registered model")
    p.add_argument("--input-size", type=int, default=32, help="input height and width (default 32)")
    p.add_argument("--in-channels", type=int, default=3, help="input channels (default 3)")
    p.add_argument("--num-classes", type=int, default=100, help="classifier outputs (default 100)")
    p.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu, cuda, cuda:1 ..."
    )
    p.add_argument("--runs", type=int, default=10, help="timed forwards for the median latency (0: skip)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a Markdown table")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.input_size < 1 or args.in_channels < 1 or args.num_classes < 1 or args.runs < 0:
        raise ConfigError("--input-size, --in-channels and --num-classes must be >= 1, --runs >= 0")
    if args.model:
        MODELS.get(args.model)  # unknown name: error with the closest names
    rows = []
    for name in MODELS.names() if args.all else [args.model]:
        try:
            rows.append(report(name, args))
        except (KdlabError, RuntimeError) as exc:
            if not args.all:
                raise ConfigError(
                    f"{name} cannot run on {args.in_channels}x{args.input_size}x{args.input_size}: "
                    f"{str(exc).splitlines()[0]}"
                ) from None
            print(f"skipped {name}: {str(exc).splitlines()[0]}", file=sys.stderr)
    print(json.dumps(rows, indent=2) if args.json else markdown(rows))
    return 0


if __name__ == "__main__":
    run_cli(main, prog="models")
