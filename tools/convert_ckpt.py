"""Convert a checkpoint to kdlab weights: python tools/convert_ckpt.py SRC DST --model NAME --num-classes N.

SRC may be an mdistiller teacher file ({"model": state_dict}), an mdistiller student/distiller
checkpoint saved through DataParallel ("module.student." keys), a torchvision .pth, a kdlab file
or a bare state dict. It is read with weights_only=True and must fit NAME exactly (strict
loading). DST holds {"model", "arch", "num_classes", "format": "kdlab-weights"}.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kdlab.cli import run_cli  # noqa: E402
from kdlab.engine.checkpoint import atomic_save  # noqa: E402
from kdlab.errors import ConfigError  # noqa: E402
from kdlab.models import build_model, load_state_dict_file, load_weights  # noqa: E402

WEIGHTS_FORMAT = "kdlab-weights"


def convert(src: str, dst: str, model_name: str, num_classes: int) -> dict:
    """Load src strictly into model_name with num_classes and write dst; return what was written."""
    if num_classes < 1:
        raise ConfigError(f"--num-classes must be >= 1, got {num_classes}")
    model = build_model(model_name, num_classes)
    state = load_state_dict_file(src, what="source checkpoint")
    load_weights(model, state, what=f"source checkpoint {src}")
    out = {
        "model": model.state_dict(),
        "arch": model_name,
        "num_classes": num_classes,
        "format": WEIGHTS_FORMAT,
    }
    folder = os.path.dirname(os.path.abspath(dst))
    os.makedirs(folder, exist_ok=True)
    atomic_save(out, dst)
    return out


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser("tools/convert_ckpt.py", description=__doc__.splitlines()[0])
    p.add_argument("src", help="source checkpoint (mdistiller, torchvision, kdlab or a bare state dict)")
    p.add_argument("dst", help="kdlab weights file to write")
    p.add_argument("--model", required=True, help="registered model name, e.g. resnet32x4 or resnet50")
    p.add_argument("--num-classes", type=int, required=True, help="classes of the checkpoint's head")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    out = convert(args.src, args.dst, args.model, args.num_classes)
    tensors = len(out["model"])
    print(f"wrote {args.dst}: {args.model} with {args.num_classes} classes ({tensors} tensors)")
    return 0


if __name__ == "__main__":
    run_cli(main, prog="convert_ckpt")
