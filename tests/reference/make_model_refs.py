"""Write tests/reference/model_refs.json: mdistiller's CIFAR model outputs for seeded weights.

    python tests/reference/make_model_refs.py /path/to/mdistiller [--out tests/reference/model_refs.json]

Weights come from `seeded_state_dict`, which fills each state-dict entry from its key name and
shape alone, so kdlab's models (same keys and shapes) get bit-identical weights without sharing
any code with mdistiller. tests/test_models_cifar.py imports the helpers below and compares
kdlab's outputs with the stored summaries. Only this script imports mdistiller.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import subprocess
import sys
import zlib
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn as nn

SEED = 20240601
BATCH, SIZE, NUM_CLASSES = 2, 32, 100
DTYPE = torch.float64  # both sides run in float64, so only a real difference shows up
DIGITS = 12  # significant digits kept in the JSON file


def seeded_tensor(key: str, shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
    """A tensor determined by (key, shape) only: He-scaled weights, BN-like 1-D parameters and statistics."""
    if key.endswith("num_batches_tracked"):
        return torch.zeros(shape, dtype=dtype)
    g = torch.Generator().manual_seed(SEED + zlib.crc32(key.encode()))
    if key.endswith("running_var"):
        return torch.rand(shape, generator=g, dtype=dtype) + 0.5
    if len(shape) >= 2:
        return torch.randn(shape, generator=g, dtype=dtype) * math.sqrt(1.0 / math.prod(shape[1:]))
    if key.endswith("weight"):
        return torch.rand(shape, generator=g, dtype=dtype) * 0.5 + 0.5
    return torch.randn(shape, generator=g, dtype=dtype) * 0.1  # biases and running means


def seeded_state_dict(template: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Seeded values for every entry of a state dict (filled in sorted key order)."""
    return {k: seeded_tensor(k, template[k].shape, template[k].dtype) for k in sorted(template)}


def fixed_input() -> torch.Tensor:
    """The input batch every model sees: N(0, 1), BATCH x 3 x SIZE x SIZE, seeded."""
    return torch.randn(BATCH, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(SEED)).to(DTYPE)


def summarize(t: torch.Tensor) -> list:
    """[shape, sum, L2 norm, position-weighted sum]: the last catches permuted channels or pixels."""
    flat = t.detach().to(torch.float64).flatten()
    weights = torch.sin(torch.arange(1, flat.numel() + 1, dtype=torch.float64))
    return [list(t.shape), *(_round(v) for v in (flat.sum(), flat.norm(), (flat * weights).sum()))]


def _round(v: Any) -> float:
    return float(f"{float(v):.{DIGITS}g}")


def run_and_summarize(model: nn.Module) -> dict:
    """Load seeded weights, run the fixed input in eval and in train mode, and summarize the outputs."""
    model.load_state_dict(seeded_state_dict(model.state_dict()), strict=True)
    model.to(DTYPE)
    x = fixed_input()
    result = {}
    with torch.no_grad():
        model.eval()
        logits, feats = model(x)
        result["eval"] = {"logits": [[_round(v) for v in row] for row in logits.tolist()]}
        result["eval"].update(_summarize_feats(feats))
        model.train()  # BN on batch statistics
        logits, feats = model(x)
        result["train"] = {"logits": summarize(logits), **_summarize_feats(feats)}
    return result


def _summarize_feats(feats: Mapping[str, Any]) -> dict:
    out = {k: [summarize(t) for t in feats[k]] for k in ("feats", "preact_feats") if k in feats}
    out["pooled_feat"] = summarize(feats["pooled_feat"])
    return out


def mdistiller_builders(root: str) -> dict[str, Callable[[], nn.Module]]:
    """mdistiller's CIFAR builders by name (its cifar_model_dict plus ResNet34)."""
    sys.path.insert(0, root)
    from mdistiller.models.cifar import cifar_model_dict
    from mdistiller.models.cifar.resnetv2 import ResNet34

    builders = {name: fn for name, (fn, _) in cifar_model_dict.items()}
    builders["ResNet34"] = ResNet34
    return {name: (lambda fn=fn: fn(num_classes=NUM_CLASSES)) for name, fn in builders.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mdistiller", help="root of a mdistiller checkout (holds the mdistiller/ package)")
    parser.add_argument(
        "--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "model_refs.json")
    )
    args = parser.parse_args()
    commit = subprocess.run(
        ["git", "-C", args.mdistiller, "rev-parse", "HEAD"], capture_output=True, text=True
    )
    refs: dict[str, Any] = {
        "_meta": {
            "mdistiller_commit": commit.stdout.strip() or "unknown",
            "torch": torch.__version__,
            "seed": SEED,
            "input": [BATCH, 3, SIZE, SIZE],
            "num_classes": NUM_CLASSES,
            "dtype": str(DTYPE),
        }
    }
    for name, build in sorted(mdistiller_builders(args.mdistiller).items()):
        with contextlib.redirect_stdout(io.StringIO()):  # mdistiller's MobileNetV2 prints on construction
            model = build()
        refs[name] = run_and_summarize(model)
        print(name, refs[name]["eval"]["logits"][0][:3])
    with open(args.out, "w") as f:
        json.dump(refs, f, separators=(",", ":"))
    print(f"wrote {args.out} ({os.path.getsize(args.out) // 1024} KB)")


if __name__ == "__main__":
    main()
