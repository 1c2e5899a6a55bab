"""Write tests/reference/extra_model_refs.json: mdistiller's ImageNet MobileNetV1 and Tiny-ImageNet models.

    python tests/reference/make_extra_model_refs.py /path/to/mdistiller [--out tests/reference/extra_model_refs.json]

For each model: its state-dict keys and shapes, and (where mdistiller's forward runs at the
dataset's input size) the outputs for seeded weights in float64, eval and train mode, summarized
as make_model_refs.py does (that script's seeded_state_dict fills every entry from its key and
shape, so kdlab's model gets the very state dict mdistiller's model was run with).
tests/test_models_extra.py compares kdlab's models with this file; only this script imports mdistiller.
mdistiller's ShuffleV2 cannot run at 64x64 (its fixed 4x4 pooling leaves 2x2 and its linear layer
fails), so for it only the keys are stored.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Any

import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_model_refs import DTYPE, SEED, _round, seeded_state_dict, summarize  # noqa: E402

BATCH = 2
# kdlab name -> (mdistiller module path, attribute, num_classes, input size, run the forward)
MODELS = {
    "MobileNetV1": ("mdistiller.models.imagenet.mobilenetv1", "MobileNetV1", 1000, 224, True),
    "mobilenetv2_tinyimagenet": ("mdistiller.models.cifar.mv2_tinyimagenet", "mobilenetv2_tinyimagenet", 200, 64, True),
    "ResNet18@tiny_imagenet": ("mdistiller.models.cifar.resnetv2", "ResNet18", 200, 64, True),
    "ShuffleV2@tiny_imagenet": ("mdistiller.models.cifar.ShuffleNetv2", "ShuffleV2", 200, 64, False),
}


def fixed_input(size: int) -> torch.Tensor:
    return torch.randn(BATCH, 3, size, size, generator=torch.Generator().manual_seed(SEED)).to(DTYPE)


def summarize_outputs(logits: torch.Tensor, feats: dict) -> dict:
    """Logits summary plus each row's first 8 values; feats as make_model_refs; pooled_feat flattened to (N, C)."""
    out: dict[str, Any] = {
        "logits": summarize(logits),
        "logits_head": [[_round(v) for v in row[:8]] for row in logits.tolist()],
    }
    out.update({k: [summarize(t) for t in feats[k]] for k in ("feats", "preact_feats") if k in feats})
    out["pooled_feat"] = summarize(torch.flatten(feats["pooled_feat"], 1))
    return out


def run(model: nn.Module, size: int) -> dict:
    model.load_state_dict(seeded_state_dict(model.state_dict()), strict=True)
    model.to(DTYPE)
    result = {}
    with torch.no_grad():
        for mode in ("eval", "train"):
            model.train(mode == "train")
            result[mode] = summarize_outputs(*model(fixed_input(size)))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mdistiller", help="root of a mdistiller checkout (holds the mdistiller/ package)")
    parser.add_argument(
        "--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "extra_model_refs.json")
    )
    args = parser.parse_args()
    sys.path.insert(0, args.mdistiller)
    commit = subprocess.run(["git", "-C", args.mdistiller, "rev-parse", "HEAD"], capture_output=True, text=True)
    refs: dict[str, Any] = {
        "_meta": {"mdistiller_commit": commit.stdout.strip() or "unknown", "torch": torch.__version__,
                  "seed": SEED, "batch": BATCH, "dtype": str(DTYPE)}
    }
    import importlib

    for name, (module, attr, num_classes, size, forward) in MODELS.items():
        model = getattr(importlib.import_module(module), attr)(num_classes=num_classes)
        entry: dict[str, Any] = {
            "reference": f"{module}.{attr}", "num_classes": num_classes, "input": [BATCH, 3, size, size],
            "keys": [[k, list(v.shape)] for k, v in model.state_dict().items()],
            "params": sum(p.numel() for p in model.parameters()),
        }
        if forward:
            entry.update(run(model, size))
        refs[name] = entry
        print(name, entry["params"], entry.get("eval", {}).get("logits_head", [[None]])[0][:3])
    with open(args.out, "w") as f:
        json.dump(refs, f, separators=(",", ":"))
    print(f"wrote {args.out} ({os.path.getsize(args.out) // 1024} KB)")


if __name__ == "__main__":
    main()
