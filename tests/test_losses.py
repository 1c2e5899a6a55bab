"""kdlab.distillers.losses against the reference implementations' numbers, plus dtype/gradient behaviour.

Two sources of expected values, both in tests/reference/:
- golden_losses.json, the project's golden values (inputs, values and which reference function
  made each), written from shared/reference/golden_losses.json by make_shared_tables.py;
- loss_refs.json, made by tests/reference/make_loss_refs.py from the public
  reference code on other shapes and seeds (always present).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import reference_table

from kdlab.distillers.feature_losses import at_loss, nst_loss, pkt_loss, rkd_loss, sp_loss
from kdlab.distillers.losses import (
    bc_loss,
    cc_loss,
    dkd_loss,
    dkd_terms,
    feature_mse_loss,
    kd_loss,
    mlkd_losses,
    standardize,
    supcon_loss,
)

REPO = Path(__file__).resolve().parents[1]
REFS = json.loads((REPO / "tests" / "reference" / "loss_refs.json").read_text())
REL = 1e-6


@pytest.fixture(scope="module")
def golden() -> dict:
    return reference_table("golden_losses.json")


def f64(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def assert_close(actual, expected, rel: float = REL) -> None:
    actual = torch.as_tensor(actual, dtype=torch.float64)
    expected = torch.as_tensor(expected, dtype=torch.float64)
    assert actual.dtype == torch.float64
    torch.testing.assert_close(actual, expected, rtol=rel, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# Golden values: one row per golden entry, how kdlab computes it.
# ---------------------------------------------------------------------------------------------


def _small(inputs):
    i = inputs["small"]
    return f64(i["student"]), f64(i["teacher"]), torch.tensor(i["target"])


def _supcon(inputs, variant):
    i = inputs["supcon"]
    return supcon_loss(
        f64(i["features"]), torch.tensor(i["labels"]), i["temperature"], variant=variant
    )


def _mlkd(inputs, key, temperature, kd_weight, logit_stand):
    i = inputs["mlkd_views_small"]
    views = [
        f64(i[k])
        for k in ("student_weak", "student_strong", "teacher_weak", "teacher_strong")
    ]
    losses = mlkd_losses(
        *views, torch.tensor(i["target"]), temperature, 1.0, kd_weight, logit_stand
    )
    return losses[key]


GOLDEN = {
    "small.standardize.student": lambda i: standardize(_small(i)[0]),
    "small.standardize.teacher": lambda i: standardize(_small(i)[1]),
    "small.kd.T1": lambda i: kd_loss(*_small(i)[:2], 1.0),
    "small.kd.T4": lambda i: kd_loss(*_small(i)[:2], 4.0),
    "small.kd_ls.T1": lambda i: kd_loss(*_small(i)[:2], 1.0, logit_stand=True),
    "small.kd_ls.T2": lambda i: kd_loss(*_small(i)[:2], 2.0, logit_stand=True),
    "small.dkd.a1_b8_T4": lambda i: dkd_loss(*_small(i), 1.0, 8.0, 4.0),
    "small.dkd.tckd_T4": lambda i: dkd_terms(*_small(i), 4.0)[0],
    "small.dkd.nckd_T4": lambda i: dkd_terms(*_small(i), 4.0)[1],
    "small.dkd_ls.a9_b72_T2": lambda i: dkd_loss(
        *_small(i), 9.0, 72.0, 2.0, logit_stand=True
    ),
    "small.dkd_ls.a1_b8_T4": lambda i: dkd_loss(
        *_small(i), 1.0, 8.0, 4.0, logit_stand=True
    ),
    "small.mlkd.cc.T1": lambda i: cc_loss(*_small(i)[:2], 1.0),
    "small.mlkd.cc.T4": lambda i: cc_loss(*_small(i)[:2], 4.0),
    "small.mlkd.bc.T1": lambda i: bc_loss(*_small(i)[:2], 1.0),
    "small.mlkd.bc.T4": lambda i: bc_loss(*_small(i)[:2], 4.0),
    "supcon_khosla.T0.07": lambda i: _supcon(i, "khosla"),
    "supcon_seed.T0.07": lambda i: _supcon(i, "seed"),
}
for _key in ("loss_ce", "loss_kd", "loss_cc", "loss_bc"):
    GOLDEN[f"mlkd_views_small.T4_w1.{_key}"] = lambda i, k=_key: _mlkd(
        i, k, 4.0, 1.0, False
    )
    GOLDEN[f"mlkd_views_small.ls.T2_w9.{_key}"] = lambda i, k=_key: _mlkd(
        i, k, 2.0, 9.0, True
    )


def test_golden_table_covers_every_entry(golden):
    assert set(GOLDEN) == set(golden["entries"]) == set(golden["values"])


@pytest.mark.parametrize("key", sorted(GOLDEN))
def test_golden_value(golden, key):
    assert_close(GOLDEN[key](golden["inputs"]), golden["values"][key])


def test_dkd_terms_weighted_by_dkd_loss(golden):
    s, t, target = _small(golden["inputs"])
    tckd, nckd = dkd_terms(s, t, target, 4.0)
    assert_close(
        dkd_loss(s, t, target, 1.0, 0.0, 4.0), golden["values"]["small.dkd.tckd_T4"]
    )
    assert_close(
        dkd_loss(s, t, target, 0.0, 1.0, 4.0), golden["values"]["small.dkd.nckd_T4"]
    )
    assert_close(tckd + 8.0 * nckd, golden["values"]["small.dkd.a1_b8_T4"])


# ---------------------------------------------------------------------------------------------
# Independent reference values (tests/reference/loss_refs.json)
# ---------------------------------------------------------------------------------------------


def _ref_value(entry: dict) -> torch.Tensor:
    inp = REFS["inputs"][entry["case"]]
    s, t, target = f64(inp["student"]), f64(inp["teacher"]), torch.tensor(inp["target"])
    kw = entry["kwargs"]
    fn = entry["fn"]
    if fn == "standardize":
        return standardize(f64(inp[kw["of"]]))
    if fn == "kd_loss":
        return kd_loss(s, t, **kw)
    if fn == "dkd_loss":
        return dkd_loss(s, t, target, **kw)
    if fn == "cc_loss":
        return cc_loss(s, t, **kw)
    if fn == "bc_loss":
        return bc_loss(s, t, **kw)
    if fn == "mlkd_losses":
        strong = f64(inp["student_strong"]), f64(inp["teacher_strong"])
        return mlkd_losses(s, strong[0], t, strong[1], target, **kw)[entry["key"]]
    if fn == "supcon_loss":
        return supcon_loss(f64(inp["features"]), torch.tensor(inp["labels"]), **kw)
    raise AssertionError(f"unknown function {fn!r} in loss_refs.json")


def _ref_id(entry: dict) -> str:
    args = ",".join(f"{k}={v}" for k, v in entry["kwargs"].items())
    key = f".{entry['key']}" if "key" in entry else ""
    return f"{entry['case']}-{entry['fn']}{key}({args})"


@pytest.mark.parametrize("entry", REFS["entries"], ids=_ref_id)
def test_reference_value(entry):
    assert_close(_ref_value(entry), entry["value"])


def test_reference_file_covers_every_loss():
    assert {e["fn"] for e in REFS["entries"]} == {
        "standardize",
        "kd_loss",
        "dkd_loss",
        "cc_loss",
        "bc_loss",
        "mlkd_losses",
        "supcon_loss",
    }


# ---------------------------------------------------------------------------------------------
# dtype under autocast, gradients
# ---------------------------------------------------------------------------------------------


def _logits(*shape, seed: int, scale: float = 3.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * scale


TARGET = torch.tensor([0, 3, 2, 9, 4, 4, 1, 7])
LABELS = torch.tensor([0, 1, 0, 2, 1, 2, 0, 3])


def _mlkd_total(sw, ss, tw, ts, logit_stand=False):
    losses = mlkd_losses(sw, ss, tw, ts, TARGET, 4.0, 1.0, 1.0, logit_stand)
    return sum(losses.values())


def _maps(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(2, 10, 2, 2)


# name -> (function of (students..., teachers...), number of student tensors, number of teachers)
CASES = {
    "standardize": (lambda s: standardize(s).sum(), 1, 0),
    "kd": (lambda s, t: kd_loss(s, t, 4.0), 1, 1),
    "kd_ls": (lambda s, t: kd_loss(s, t, 2.0, logit_stand=True), 1, 1),
    "dkd": (lambda s, t: dkd_loss(s, t, TARGET, 1.0, 8.0, 4.0), 1, 1),
    "dkd_ls": (
        lambda s, t: dkd_loss(s, t, TARGET, 9.0, 72.0, 2.0, logit_stand=True),
        1,
        1,
    ),
    "cc": (lambda s, t: cc_loss(s, t, 4.0), 1, 1),
    "bc": (lambda s, t: bc_loss(s, t, 4.0), 1, 1),
    "mlkd": (lambda sw, ss, tw, ts: _mlkd_total(sw, ss, tw, ts), 2, 2),
    "mlkd_ls": (lambda sw, ss, tw, ts: _mlkd_total(sw, ss, tw, ts, True), 2, 2),
    "supcon_khosla": (lambda f: supcon_loss(f, LABELS), 1, 0),
    "supcon_seed": (lambda f: supcon_loss(f, LABELS, variant="seed"), 1, 0),
    "feature_mse": (lambda s, t: feature_mse_loss(s, t), 1, 1),
    "pkt": (lambda s, t: pkt_loss(s, t), 1, 1),
    "rkd": (lambda s, t: rkd_loss(s, t), 1, 1),
    # AT / NST / SP take feature maps: the 8 x 10 inputs as 2 x 10 x 2 x 2 maps
    "at": (lambda s, t: at_loss(_maps(s), _maps(t), 2), 1, 1),
    "nst": (lambda s, t: nst_loss(_maps(s), _maps(t)), 1, 1),
    "sp": (lambda s, t: sp_loss(_maps(s), _maps(t)), 1, 1),
}


def _case_inputs(
    n_students: int, n_teachers: int, dtype: torch.dtype
) -> list[torch.Tensor]:
    return [_logits(8, 10, seed=i).to(dtype) for i in range(n_students + n_teachers)]


@pytest.mark.parametrize("name", sorted(CASES))
def test_float32_under_bfloat16_autocast(name):
    fn, n_s, n_t = CASES[name]
    inputs = _case_inputs(n_s, n_t, torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fn(*inputs)
    assert out.dtype == torch.float32
    expected = fn(*[x.float() for x in inputs])
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", sorted(CASES))
def test_float64_stays_float64(name):
    fn, n_s, n_t = CASES[name]
    assert fn(*_case_inputs(n_s, n_t, torch.float64)).dtype == torch.float64


@pytest.mark.parametrize("name", sorted(CASES))
def test_gradients_reach_students_only(name):
    fn, n_s, n_t = CASES[name]
    inputs = [x.requires_grad_() for x in _case_inputs(n_s, n_t, torch.float32)]
    fn(*inputs).backward()
    for student in inputs[:n_s]:
        assert student.grad is not None and torch.isfinite(student.grad).all()
        assert student.grad.abs().sum() > 0
    for teacher in inputs[n_s:]:
        assert teacher.grad is None


# ---------------------------------------------------------------------------------------------
# Logit standardization
# ---------------------------------------------------------------------------------------------


def test_standardize_rows_have_zero_mean_unit_unbiased_std():
    z = standardize(_logits(5, 7, seed=3).double() * 4 + 2)
    assert_close(z.mean(dim=1), torch.zeros(5, dtype=torch.float64))
    assert_close(z.std(dim=1), torch.ones(5, dtype=torch.float64))


@pytest.mark.parametrize(
    "loss",
    [
        lambda s, t: kd_loss(s, t, 2.0, logit_stand=True),
        lambda s, t: dkd_loss(s, t, TARGET, 9.0, 72.0, 2.0, logit_stand=True),
    ],
    ids=["kd", "dkd"],
)
def test_logit_stand_ignores_per_sample_shift_and_scale(loss):
    s, t = _logits(8, 10, seed=1).double(), _logits(8, 10, seed=2).double()
    scale = torch.linspace(0.5, 4.0, 8, dtype=torch.float64).unsqueeze(1)
    shift = torch.linspace(-3.0, 5.0, 8, dtype=torch.float64).unsqueeze(1)
    assert_close(loss(s * scale + shift, t / scale - shift), loss(s, t))


def test_logit_stand_changes_kd_and_dkd():
    s, t = _logits(8, 10, seed=1).double(), _logits(8, 10, seed=2).double() * 3
    assert not torch.isclose(kd_loss(s, t, 2.0), kd_loss(s, t, 2.0, logit_stand=True))
    plain = dkd_loss(s, t, TARGET, 1.0, 8.0, 2.0)
    assert not torch.isclose(
        plain, dkd_loss(s, t, TARGET, 1.0, 8.0, 2.0, logit_stand=True)
    )


# ---------------------------------------------------------------------------------------------
# MLKD quirks (the reference's behaviour, kept on purpose)
# ---------------------------------------------------------------------------------------------


def _views(seed: int = 0):
    return [
        _logits(8, 10, seed=seed + i, scale=3.0 if i < 2 else 6.0).double()
        for i in range(4)
    ]


def test_mlkd_cc_bc_use_weak_views_only_and_never_standardize():
    sw, ss, tw, ts = _views()
    base = mlkd_losses(sw, ss, tw, ts, TARGET, 4.0, 1.0, 1.0)
    other_strong = mlkd_losses(
        sw, ss * 2 + 1, tw, -ts, TARGET, 4.0, 1.0, 1.0, logit_stand=True
    )
    for key in ("loss_cc", "loss_bc"):
        assert_close(other_strong[key], base[key])


def test_mlkd_kd_terms_spelled_out():
    sw, ss, tw, ts = _views(seed=5)
    out = mlkd_losses(sw, ss, tw, ts, TARGET, 4.0, 0.5, 3.0)
    # 8 samples, distinct confidences: `confidence <= median` keeps half of them.
    weak = sum(kd_loss(sw, tw, T) for T in (4.0, 3.0, 5.0, 2.0, 6.0)) * 0.5
    strong = (
        sum(kd_loss(ss, ts, T) for T in (4.0, 3.0, 5.0))
        + kd_loss(sw, tw, 2.0)
        + kd_loss(sw, tw, 6.0)
    )
    assert_close(out["loss_kd"], 3.0 * (weak + strong))
    assert_close(
        out["loss_ce"],
        0.5 * (F.cross_entropy(sw, TARGET) + F.cross_entropy(ss, TARGET)),
    )
    assert_close(
        out["loss_cc"],
        3.0 * 0.5 * sum(cc_loss(sw, tw, T) for T in (4.0, 3.0, 5.0, 2.0, 6.0)),
    )


def test_mlkd_returns_the_four_losses():
    assert set(mlkd_losses(*_views(), TARGET, 4.0, 1.0, 1.0)) == {
        "loss_ce",
        "loss_kd",
        "loss_cc",
        "loss_bc",
    }


# ---------------------------------------------------------------------------------------------
# SupCon and feature losses
# ---------------------------------------------------------------------------------------------


def test_supcon_normalizes_features():
    f = _logits(8, 16, seed=4).double()
    scale = torch.linspace(0.1, 10.0, 8, dtype=torch.float64).unsqueeze(1)
    for variant in ("khosla", "seed"):
        assert_close(
            supcon_loss(f * scale, LABELS, variant=variant),
            supcon_loss(f, LABELS, variant=variant),
        )


def test_supcon_khosla_skips_anchors_without_positives():
    f = _logits(8, 16, seed=4).double()
    labels = torch.tensor([0, 0, 1, 1, 2, 3, 4, 5])  # anchors 4..7 have no positive
    z = F.normalize(f, dim=1)
    logits = (z @ z.T / 0.07).fill_diagonal_(float("-inf"))
    log_prob = logits - logits.logsumexp(dim=1, keepdim=True)
    pairs = [(0, 1), (1, 0), (2, 3), (3, 2)]
    expected = -torch.stack(
        [log_prob[i, p] for i, p in pairs]
    ).mean()  # not divided by 8
    assert_close(supcon_loss(f, labels), expected)


def test_supcon_without_any_positive_is_zero_with_a_graph():
    f = _logits(8, 16, seed=4).requires_grad_()
    loss = supcon_loss(f, torch.arange(8))
    assert loss.item() == 0.0
    loss.backward()
    assert f.grad is not None


def test_supcon_rejects_unknown_variant():
    with pytest.raises(ValueError, match="khosla"):
        supcon_loss(torch.randn(4, 3), torch.tensor([0, 0, 1, 1]), variant="simclr")


def test_feature_mse_loss_is_mean_squared_error():
    s, t = _logits(2, 4, 3, 3, seed=1), _logits(2, 4, 3, 3, seed=2)
    torch.testing.assert_close(feature_mse_loss(s, t), ((s - t) ** 2).mean())


def test_at_and_nst_pool_the_larger_map_to_the_smaller_ones_height_and_width():
    """mdistiller pools to (H, H) (square maps only); kdlab to the smaller map's (H, W)."""
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 3, 8, 4, generator=g), torch.randn(2, 5, 4, 2, generator=g)
    pooled = F.avg_pool2d(s, 2)
    torch.testing.assert_close(at_loss(s, t, 2), at_loss(pooled, t, 2))
    torch.testing.assert_close(nst_loss(s, t), nst_loss(pooled, t))
    torch.testing.assert_close(at_loss(t, s, 2), at_loss(t, pooled, 2))
