"""Generate tests/reference/loss_refs.json: independent check values for kdlab's losses.

Values come from running the public reference code on inputs made here (stored explicitly in the
JSON, rounded to 4 decimals so the file stays small and every reader parses the same numbers):

- KD, DKD, normalize, cc_loss, bc_loss and MLKD.forward_train from the logit-standardization-KD
  repository (its mdistiller/ package), imported from the path given with --ls-repo;
- optionally, mdistiller's kd_loss/dkd_loss (--mdistiller) as a cross-check that the LS repo's
  functions equal them without logit standardization (asserted, not stored);
- SupCon from the formula of Khosla et al. (NeurIPS 2020, L_out), written below with plain Python
  loops independently of kdlab's vectorised version, in both variants kdlab offers.

No reference code is copied into kdlab; run it once and commit the JSON:

    python tests/reference/make_loss_refs.py --ls-repo /path/to/logit-standardization-KD \
        [--mdistiller /path/to/mdistiller] [--out tests/reference/loss_refs.json]
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

DECIMALS = 4

# name: (batch, classes, feature dim, seed, teacher scale, student scale)
CASES = {
    "b7_c13": (7, 13, 5, 11, 5.0, 2.0),
    "b16_c100": (16, 100, 24, 12, 6.0, 3.0),
    "b4_c3": (4, 3, 3, 13, 10.0, 4.0),
}

KD_ARGS = [(t, ls) for t in (1.0, 2.0, 4.0) for ls in (False, True)]
DKD_ARGS = [  # alpha, beta, temperature, logit_stand
    (1.0, 8.0, 4.0, False),
    (9.0, 72.0, 2.0, True),
    (1.0, 0.0, 4.0, False),
    (0.0, 1.0, 4.0, False),
    (2.0, 3.0, 1.0, True),
]
CORR_TEMPS = (1.0, 2.0, 4.0)
MLKD_ARGS = [  # temperature, ce_weight, kd_weight, logit_stand
    (4.0, 1.0, 1.0, False),
    (2.0, 1.0, 9.0, True),
    (3.0, 0.7, 0.5, False),
]
SUPCON_TEMPS = (0.07, 0.1, 0.5)


def _rounded(t: torch.Tensor) -> list:
    return [[round(float(v), DECIMALS) for v in row] for row in t.tolist()]


def make_inputs(
    batch: int, classes: int, dim: int, seed: int, t_scale: float, s_scale: float
):
    g = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0):
        return _rounded(torch.randn(*shape, generator=g, dtype=torch.float64) * scale)

    inputs = {
        "student": randn(batch, classes, scale=s_scale),
        "teacher": randn(batch, classes, scale=t_scale),
        "student_strong": randn(batch, classes, scale=s_scale),
        "teacher_strong": randn(batch, classes, scale=t_scale),
        "target": torch.randint(classes, (batch,), generator=g).tolist(),
        "features": randn(batch, dim),
    }
    # Labels with repeats and one singleton (an anchor without positives).
    labels = torch.randint(max(batch // 3, 1), (batch,), generator=g).tolist()
    labels[-1] = max(labels) + 1
    inputs["labels"] = labels
    return inputs


def tied_mlkd_inputs() -> dict:
    """Teacher weak rows repeated, so confidences tie at the median (MLKD's `<=` mask keeps 4 of 5, not 3)."""
    g = torch.Generator().manual_seed(14)
    base = torch.randn(3, 5, generator=g, dtype=torch.float64) * torch.tensor(
        [[8.0], [2.0], [2.0]]
    )
    teacher = torch.cat([base[:1], base[:1], base[:1], base[1:2], base[2:]])
    return {
        "student": _rounded(torch.randn(5, 5, generator=g, dtype=torch.float64) * 2),
        "teacher": _rounded(teacher),
        "student_strong": _rounded(
            torch.randn(5, 5, generator=g, dtype=torch.float64) * 2
        ),
        "teacher_strong": _rounded(
            torch.randn(5, 5, generator=g, dtype=torch.float64) * 4
        ),
        "target": [0, 1, 2, 3, 4],
    }


class _FixedLogits(nn.Module):
    """A 'model' that returns stored logits: image 0 is the weak view, image 1 the strong one."""

    def __init__(self, weak: torch.Tensor, strong: torch.Tensor):
        super().__init__()
        self.views = [weak, strong]

    def forward(self, image):
        return self.views[int(image)], {}


def mlkd_reference(ls, inp, temperature, ce_weight, kd_weight, logit_stand) -> dict:
    t = {
        k: torch.tensor(v, dtype=torch.float64) for k, v in inp.items() if k != "target"
    }
    cfg = SimpleNamespace(
        KD=SimpleNamespace(
            TEMPERATURE=temperature,
            LOSS=SimpleNamespace(CE_WEIGHT=ce_weight, KD_WEIGHT=kd_weight),
        ),
        EXPERIMENT=SimpleNamespace(LOGIT_STAND=logit_stand),
    )
    student = _FixedLogits(t["student"], t["student_strong"])
    teacher = _FixedLogits(t["teacher"], t["teacher_strong"])
    distiller = ls.MLKD.MLKD(student, teacher, cfg)
    target = torch.tensor(inp["target"])
    _, losses = distiller.forward_train(torch.tensor(0), torch.tensor(1), target)
    return {k: float(v) for k, v in losses.items()}


def supcon_formula(features, labels, temperature, self_positive):
    """Khosla et al. L_out per anchor, in float64 Python; self_positive=True is the 'seed' variant."""
    norms = [math.sqrt(math.fsum(x * x for x in f)) for f in features]
    z = [[x / n for x in f] for f, n in zip(features, norms)]
    n = len(z)
    sim = [
        [math.fsum(a * b for a, b in zip(z[i], z[j])) / temperature for j in range(n)]
        for i in range(n)
    ]
    per_anchor = []
    for i in range(n):
        others = [sim[i][a] for a in range(n) if a != i]
        top = max(others)
        log_denominator = top + math.log(math.fsum(math.exp(s - top) for s in others))
        positives = [
            p for p in range(n) if labels[p] == labels[i] and (p != i or self_positive)
        ]
        if not positives:
            continue  # anchors without a positive are left out of the mean
        per_anchor.append(
            -math.fsum(sim[i][p] - log_denominator for p in positives) / len(positives)
        )
    return math.fsum(per_anchor) / len(per_anchor)


def import_reference(root: Path, names: list[str]) -> SimpleNamespace:
    """Import mdistiller.distillers.<name> from `root`, then forget the package (both repos call it mdistiller)."""
    sys.path.insert(0, str(root))
    try:
        mods = {n: importlib.import_module(f"mdistiller.distillers.{n}") for n in names}
    finally:
        sys.path.remove(str(root))
        for key in [
            k for k in sys.modules if k == "mdistiller" or k.startswith("mdistiller.")
        ]:
            del sys.modules[key]
    return SimpleNamespace(**mods)


def git_head(root: Path) -> str:
    try:
        return subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def case_entries(ls, mdistiller, name: str, inp: dict) -> list[dict]:
    s = torch.tensor(inp["student"], dtype=torch.float64)
    t = torch.tensor(inp["teacher"], dtype=torch.float64)
    target = torch.tensor(inp["target"])
    entries = []

    def add(fn, kwargs, value, key=None):
        entry = {"case": name, "fn": fn, "kwargs": kwargs, "value": value}
        if key is not None:
            entry["key"] = key
        entries.append(entry)

    add("standardize", {"of": "student"}, ls.KD.normalize(s).tolist())
    for temperature, stand in KD_ARGS:
        value = float(ls.KD.kd_loss(s, t, temperature, stand))
        if mdistiller is not None and not stand:
            assert math.isclose(
                value, float(mdistiller.KD.kd_loss(s, t, temperature)), rel_tol=1e-12
            )
        add("kd_loss", {"temperature": temperature, "logit_stand": stand}, value)
    for alpha, beta, temperature, stand in DKD_ARGS:
        value = float(ls.DKD.dkd_loss(s, t, target, alpha, beta, temperature, stand))
        if mdistiller is not None and not stand:
            ref = float(mdistiller.DKD.dkd_loss(s, t, target, alpha, beta, temperature))
            assert math.isclose(value, ref, rel_tol=1e-12)
        kwargs = {
            "alpha": alpha,
            "beta": beta,
            "temperature": temperature,
            "logit_stand": stand,
        }
        add("dkd_loss", kwargs, value)
    for temperature in CORR_TEMPS:
        add(
            "cc_loss",
            {"temperature": temperature},
            float(ls.MLKD.cc_loss(s, t, temperature)),
        )
        add(
            "bc_loss",
            {"temperature": temperature},
            float(ls.MLKD.bc_loss(s, t, temperature)),
        )
    for temperature, ce_weight, kd_weight, stand in MLKD_ARGS:
        kwargs = {
            "temperature": temperature,
            "ce_weight": ce_weight,
            "kd_weight": kd_weight,
            "logit_stand": stand,
        }
        for key, value in mlkd_reference(
            ls, inp, temperature, ce_weight, kd_weight, stand
        ).items():
            add("mlkd_losses", kwargs, value, key)
    if "features" in inp:
        for temperature in SUPCON_TEMPS:
            for variant, self_positive in (("khosla", False), ("seed", True)):
                value = supcon_formula(
                    inp["features"], inp["labels"], temperature, self_positive
                )
                add(
                    "supcon_loss",
                    {"temperature": temperature, "variant": variant},
                    value,
                )
    return entries


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--ls-repo", type=Path, required=True, help="clone of logit-standardization-KD"
    )
    parser.add_argument(
        "--mdistiller",
        type=Path,
        help="clone of megvii-research/mdistiller (cross-check)",
    )
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).with_name("loss_refs.json")
    )
    args = parser.parse_args()

    ls = import_reference(args.ls_repo, ["KD", "DKD", "MLKD"])
    mdistiller = (
        import_reference(args.mdistiller, ["KD", "DKD"]) if args.mdistiller else None
    )

    inputs = {name: make_inputs(*spec) for name, spec in CASES.items()}
    inputs["b5_c5_tied_teacher"] = tied_mlkd_inputs()
    entries = [
        e
        for name, inp in inputs.items()
        for e in case_entries(ls, mdistiller, name, inp)
    ]
    # The tied case is only for MLKD's median masks.
    entries = [
        e
        for e in entries
        if e["case"] != "b5_c5_tied_teacher" or e["fn"] == "mlkd_losses"
    ]

    doc = {
        "_about": (
            "Independent check values for kdlab.distillers.losses, float64. Generated by "
            "tests/reference/make_loss_refs.py from the inputs below (stored explicitly). "
            "kd/dkd/standardize/cc/bc/mlkd values come from the logit-standardization-KD code; "
            "mlkd_losses from its MLKD.forward_train on models that return the stored logits "
            "(student/teacher = weak view, *_strong = strong view). supcon values come from the "
            "Khosla et al. formula written independently in the script (variant 'seed' counts the "
            "anchor itself as a positive). standardize's 'of' names the input it normalizes."
        ),
        "ls_repo_commit": git_head(args.ls_repo),
        "mdistiller_commit": git_head(args.mdistiller) if args.mdistiller else None,
        "inputs": inputs,
        "entries": entries,
    }
    args.out.write_text(json.dumps(doc, indent=None, separators=(",", ":")) + "\n")
    print(
        f"wrote {len(entries)} entries to {args.out} ({args.out.stat().st_size} bytes)"
    )


if __name__ == "__main__":
    main()
