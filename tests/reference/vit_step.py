"""What the ViT training-step check shares between the reference side (make_vit_refs.py, run against the LS
repo's tiny-transformers) and kdlab's side (tests/test_vit_reference_step.py): the initial weights (a recipe
by kdlab parameter name, so no weight file is stored), the teacher (a fixed linear map of the pixels it is
fed, so that its logits depend on the resize to TEACHER_IMG_SIZE), the batches, and the parameter names.
"""

from __future__ import annotations

import re
import zlib

import torch
import torch.nn as nn

STUDENT_SIZE, TEACHER_SIZE, BATCH, CLASSES, STEPS = 48, 32, 4, 100, 3


FORWARD_SIZES = {"deit_tiny": 48, "deit_tiny_distilled": 48, "t2t_vit_7": 64, "pit_tiny": 64, "pvt_tiny": 64}


def reference_to_kdlab(name: str) -> str:
    """A reference student's parameter name -> kdlab's (timm's for DeiT and PiT; T2T and PVT keep the reference's
    names apart from the transformer blocks, which are timm's)."""
    pool = re.match(r"^pools\.(\d+)\.(.*)$", name)
    if pool:  # PiT: timm holds the pooling of stage s+1 in that stage
        return f"transformers.{int(pool.group(1)) + 1}.pool.{pool.group(2)}"
    rules = [(r"^layers\.", "blocks."), (r"attn\.qkv_transform\.", "attn.qkv."), (r"attn\.projection\.", "attn.proj."),
             (r"^patch_embed\.projection\.", "patch_embed.proj."), (r"^distill_token$", "dist_token"),
             (r"^distill_head\.", "head_dist.")]
    for pattern, repl in rules:
        name = re.sub(pattern, repl, name)
    return name


def initial_value(kdlab_name: str, shape) -> torch.Tensor:
    """Deterministic float64 initial weights: norms' weights near 1, the rest small."""
    g = torch.Generator().manual_seed(zlib.crc32(kdlab_name.encode()))
    value = torch.randn(tuple(shape), generator=g, dtype=torch.float64) * 0.05
    return value + 1.0 if re.search(r"norm\d?\.weight$", kdlab_name) else value


@torch.no_grad()
def set_initial_weights(model: nn.Module, to_kdlab=lambda n: n) -> None:
    for name, p in model.named_parameters():
        if name == "pos_embed" and not p.requires_grad:  # T2T-ViT's fixed sinusoidal table: compared as built
            continue
        p.copy_(initial_value(to_kdlab(name), p.shape))


class LinearTeacher(nn.Module):
    """logits = flatten(x) @ W: a fixed teacher taking TEACHER_SIZE inputs. `kdlab` returns (logits, feats)."""

    def __init__(self, kdlab: bool = False) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(7)
        self.weight = nn.Parameter(torch.randn(3 * TEACHER_SIZE**2, CLASSES, generator=g, dtype=torch.float64) * 0.02)
        self.kdlab, self.features, self.feature_dims = kdlab, [], [16, 32, 64]

    def forward(self, x):
        assert x.shape[-2:] == (TEACHER_SIZE, TEACHER_SIZE), x.shape
        logits = x.flatten(1) @ self.weight
        return (logits, {"feats": []}) if self.kdlab else logits


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    x = torch.randn(BATCH, 3, STUDENT_SIZE, STUDENT_SIZE, generator=g, dtype=torch.float64)
    return x, torch.randint(0, CLASSES, (BATCH,), generator=g)


def digests(model: nn.Module, to_kdlab=lambda n: n) -> dict:
    return {to_kdlab(n): [p.detach().sum().item(), p.detach().pow(2).sum().item()]
            for n, p in model.named_parameters() if p.requires_grad}


class ConvTeacher(nn.Module):
    """A fixed three-stage conv teacher (16/32/64 channels at 1, 1/2, 1/4 of TEACHER_SIZE) for the locality-guidance
    step: the reference reads its `features` (the stage outputs) and `feature_dims`; kdlab its feats["feats"]
    (a stem, then the stages)."""

    def __init__(self, kdlab: bool = False) -> None:
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv2d(3, 16, 3, 1, 1), nn.Conv2d(16, 32, 3, 2, 1), nn.Conv2d(32, 64, 3, 2, 1)])
        self.fc = nn.Linear(64, CLASSES)
        set_initial_weights(self, lambda n: "teacher." + n)
        self.kdlab, self.features, self.feature_dims = kdlab, [], [16, 32, 64]

    def forward(self, x):
        assert x.shape[-2:] == (TEACHER_SIZE, TEACHER_SIZE), x.shape
        maps = []
        for conv in self.convs:
            x = torch.tanh(conv(x))
            maps.append(x)
        self.features = maps
        logits = self.fc(x.mean((2, 3)))
        return (logits, {"feats": [maps[0], *maps]}) if self.kdlab else logits
