"""ViT students (kdlab/models/vit): shapes and parameter counts equal the reference's (stored in
tests/reference/vit_refs.json by make_vit_refs.py from the logit-standardization repo's tiny-transformers)."""

from __future__ import annotations

import json
import os

import pytest
import torch

from kdlab.models import build_model

REFS = json.load(open(os.path.join(os.path.dirname(__file__), "reference", "vit_refs.json")))
BUILDS = {
    "deit_tiny": ("deit_tiny", {}),
    "deit_tiny_distilled": ("deit_tiny", {"distilled": True}),
    "t2t_vit_7": ("t2t_vit_7", {}),
    "pit_tiny": ("pit_tiny", {}),
    "pvt_tiny": ("pvt_tiny", {}),
}


@pytest.mark.parametrize("key", sorted(BUILDS))
def test_vit_matches_reference_shapes_and_parameter_counts(key):
    ref = REFS["models"][key]
    name, kwargs = BUILDS[key]
    torch.manual_seed(0)
    model = build_model(name, num_classes=100, **kwargs).eval()
    assert sum(p.numel() for p in model.parameters()) == ref["params"]
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == ref["trainable"]
    with torch.no_grad():
        logits, feats = model(torch.randn(2, 3, 224, 224))
    assert list(logits.shape) == ref["logits"]
    assert [list(f.shape) for f in feats["feats"]] == ref["features"]
    assert feats["pooled_feat"].shape == (2, ref["features"][-1][1])


def test_distilled_deit_averages_its_heads_in_eval_only():
    torch.manual_seed(0)
    model = build_model("deit_tiny", num_classes=10, distilled=True, img_size=32, drop_path_rate=0.0)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    x = torch.randn(2, 3, 32, 32)
    model.train()
    cls_logits, feats = model(x)
    model.eval()
    eval_logits, _ = model(x)
    assert not torch.allclose(cls_logits, feats["distill_logits"])
    torch.testing.assert_close(eval_logits, (cls_logits + feats["distill_logits"]) / 2)


@pytest.mark.parametrize("name", ["deit_tiny", "t2t_vit_7", "pit_tiny", "pvt_tiny"])
def test_vit_builds_at_another_size_and_trains(name):
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, img_size=64)
    logits, feats = model(torch.randn(2, 3, 64, 64))
    assert logits.shape == (2, 10)
    logits.logsumexp(1).sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("key", sorted(BUILDS))
def test_vit_forward_equals_the_reference_in_float64(key):
    """Same weights (tests/reference/vit_step.py's recipe, by kdlab name) -> the reference's logits and block maps."""
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "reference"))
    import vit_step as V

    ref = REFS["forward"][key]
    name, kwargs = BUILDS[key]
    model = build_model(name, num_classes=100, img_size=ref["size"], **kwargs).double().eval()
    V.set_initial_weights(model)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 3, ref["size"], ref["size"], generator=g, dtype=torch.float64)
    with torch.no_grad():
        logits, feats = model(x)
    torch.testing.assert_close(logits, torch.tensor(ref["logits"], dtype=torch.float64), rtol=1e-10, atol=1e-12)
    for f, (total, squares) in zip(feats["feats"], ref["features"], strict=True):
        assert f.sum().item() == pytest.approx(total, rel=1e-9, abs=1e-9)
        assert f.pow(2).sum().item() == pytest.approx(squares, rel=1e-10)
