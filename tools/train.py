"""Train a model or distill a student: python tools/train.py --cfg configs/... [--logit-stand] [KEY VALUE ...]."""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kdlab.cli import hoist_flags, run_cli  # noqa: E402
from kdlab.config import load_cfg  # noqa: E402

VALUE_FLAGS = {"--cfg", "--base-temp", "--kd-weight"}
BOOL_FLAGS = {"--resume", "--logit-stand", "--print-config", "--debug", "-h", "--help"}


def parse_args(argv: list[str]) -> argparse.Namespace:
    argv = hoist_flags(argv, VALUE_FLAGS, BOOL_FLAGS)
    p = argparse.ArgumentParser("tools/train.py", description="kdlab training / knowledge distillation")
    p.add_argument("--cfg", default="", help="YAML config file")
    p.add_argument("--resume", action="store_true", help="continue the run in the configured run directory")
    p.add_argument("--logit-stand", action="store_true", help="logit standardization (KD, DKD, MLKD, CONKD)")
    p.add_argument("--base-temp", type=float, default=2.0, help="temperature used with --logit-stand")
    p.add_argument("--kd-weight", type=float, default=9.0, help="KD weight used with --logit-stand")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides, e.g. SOLVER.LR 0.1")
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    cfg = load_cfg(args.cfg or None, args.opts, args.logit_stand, args.base_temp, args.kd_weight)
    if args.print_config:
        from kdlab.engine.run import describe

        print(f"# {describe(cfg)}")
        print(cfg.dump(), end="")
        return 0
    from kdlab.engine.distributed_launch import maybe_init_distributed, shutdown_distributed
    from kdlab.engine.run import train

    maybe_init_distributed(cfg)
    try:
        train(cfg, resume=args.resume, install_signal_handlers=True)
    finally:
        shutdown_distributed()
    return 0


if __name__ == "__main__":
    run_cli(main, prog="train.py")
