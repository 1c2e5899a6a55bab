"""Write tests/reference/step_refs.json: a few training steps of the reference distillers.

    python tests/reference/make_step_refs.py --mdistiller /path/to/mdistiller \
        --ls-repo /path/to/logit-standardization-KD --peer-configs /path/to/shared/reference/peer_configs \
        [--out tests/reference/step_refs.json] [--only CASE ...  (merged into the existing --out file)]

Each case configures a reference distiller from a peer YAML file (mdistiller's or the
logit-standardization-KD repository's, with --logit-stand applied as that repository's
tools/train.py does), swaps in small models (teacher resnet14, student resnet8, 100 classes),
fills every weight from its state-dict key alone (`seeded_state_dict`), and runs STEPS SGD steps
the way mdistiller's trainer does: forward (in float64: in float32, steps from random weights are
chaotic enough that the last bits of a reduction, which differ between CPUs and thread counts,
move the result by ~1e-5), loss = sum of the loss dict, backward,
SGD(lr, momentum, weight decay) on the distiller's learnable parameters, the LR set per epoch
(cases under SOLVER.TRAINER dot: mdistiller's DOT optimizer driven as its DOT trainer drives it,
loss_kd backward + step_kd, then loss_ce backward + step).
It stores each step's losses, a digest of the student (and connector) weights after the steps,
and the resolved config values, so tests/test_distiller_reference_steps.py can repeat the steps
with kdlab and compare. Only this script imports the reference code; the helpers above `main`
are shared with the test.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import types
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
SEED = 20240917
BATCH, SIZE, NUM_CLASSES = 8, 32, 100
TEACHER, STUDENT = "resnet14", "resnet8"
STEP_EPOCHS = (1, 10, 30)  # one step in each: DKD's warm-up factor is 0.05, 0.5, 1
DIGITS = 15  # significant digits kept in the JSON file
DTYPE = torch.float64  # models, batches and steps on both sides

# name: (reference repo, peer YAML relative to peer_configs/, --logit-stand, config keys that matter)
_SOLVER = ("SOLVER.LR", "SOLVER.MOMENTUM", "SOLVER.WEIGHT_DECAY", "SOLVER.LR_DECAY_STAGES", "SOLVER.LR_DECAY_RATE")
_KD = ("KD.TEMPERATURE", "KD.LOSS.CE_WEIGHT", "KD.LOSS.KD_WEIGHT")
_DKD = ("DKD.CE_WEIGHT", "DKD.ALPHA", "DKD.BETA", "DKD.T", "DKD.WARMUP")
_FITNET = ("FITNET.HINT_LAYER", "FITNET.LOSS.CE_WEIGHT", "FITNET.LOSS.FEAT_WEIGHT")
_PKT = ("PKT.LOSS.CE_WEIGHT", "PKT.LOSS.FEAT_WEIGHT")
_RKD = ("RKD.DISTANCE_WEIGHT", "RKD.ANGLE_WEIGHT", "RKD.LOSS.CE_WEIGHT", "RKD.LOSS.FEAT_WEIGHT",
        "RKD.PDIST.EPSILON", "RKD.PDIST.SQUARED")
_KDSVD = ("KDSVD.K", "KDSVD.LOSS.CE_WEIGHT", "KDSVD.LOSS.FEAT_WEIGHT")
_AT = ("AT.P", "AT.LOSS.CE_WEIGHT", "AT.LOSS.FEAT_WEIGHT")
_SP = ("SP.LOSS.CE_WEIGHT", "SP.LOSS.FEAT_WEIGHT")
_NST = ("NST.LOSS.CE_WEIGHT", "NST.LOSS.FEAT_WEIGHT")
_REVIEWKD = tuple(f"REVIEWKD.{k}" for k in ("CE_WEIGHT", "REVIEWKD_WEIGHT", "WARMUP_EPOCHS", "SHAPES", "OUT_SHAPES",
                                             "IN_CHANNELS", "OUT_CHANNELS", "MAX_MID_CHANNEL", "STU_PREACT"))
_DOT = ("SOLVER.TRAINER", "SOLVER.DOT.DELTA")
_OFD = ("OFD.LOSS.CE_WEIGHT", "OFD.LOSS.FEAT_WEIGHT", "OFD.CONNECTOR.KERNEL_SIZE")
_VID = ("VID.LOSS.CE_WEIGHT", "VID.LOSS.FEAT_WEIGHT", "VID.EPS", "VID.INIT_PRED_VAR", "VID.INPUT_SIZE")
_CRD = ("CRD.MODE", "CRD.FEAT.DIM", "CRD.FEAT.STUDENT_DIM", "CRD.FEAT.TEACHER_DIM", "CRD.LOSS.CE_WEIGHT",
        "CRD.LOSS.FEAT_WEIGHT", "CRD.NCE.K", "CRD.NCE.MOMENTUM", "CRD.NCE.TEMPERATURE")
CASES = {
    "kd": ("mdistiller", "mdistiller/cifar100/kd.yaml", False, _KD + _SOLVER),
    "kd_ls": ("ls", "logit-standardization-KD/cifar100/kd/resnet32x4_resnet8x4.yaml", True, _KD + _SOLVER),
    "dkd": ("mdistiller", "mdistiller/cifar100/dkd/res32x4_res8x4.yaml", False, _DKD + _SOLVER),
    "dkd_ls": ("ls", "logit-standardization-KD/cifar100/dkd/resnet32x4_resnet8x4.yaml", True, _DKD + _SOLVER),
    "dkd_beta2": ("mdistiller", "mdistiller/cifar100/dkd/res56_res20.yaml", False, _DKD + _SOLVER),
    "mlkd_ls": ("ls", "logit-standardization-KD/cifar100/mlkd/resnet32x4_resnet8x4.yaml", True, _KD + _SOLVER),
    "fitnet": ("mdistiller", "mdistiller/cifar100/fitnet.yaml", False, _FITNET + _SOLVER),
    "pkt": ("mdistiller", "mdistiller/cifar100/pkt.yaml", False, _PKT + _SOLVER),
    "rkd": ("mdistiller", "mdistiller/cifar100/rkd.yaml", False, _RKD + _SOLVER),
    "kdsvd": ("mdistiller", "mdistiller/cifar100/kdsvd.yaml", False, _KDSVD + _SOLVER),
    "at": ("mdistiller", "mdistiller/cifar100/at.yaml", False, _AT + _SOLVER),
    "sp": ("mdistiller", "mdistiller/cifar100/sp.yaml", False, _SP + _SOLVER),
    "nst": ("mdistiller", "mdistiller/cifar100/nst.yaml", False, _NST + _SOLVER),
    "reviewkd": ("mdistiller", "mdistiller/cifar100/reviewkd.yaml", False, _REVIEWKD + _SOLVER),
    "kd_dot": ("mdistiller", "mdistiller/cifar100/dot/res32x4_res8x4.yaml", False, _KD + _SOLVER + _DOT),
    "ofd": ("mdistiller", "mdistiller/cifar100/ofd.yaml", False, _OFD + _SOLVER),
    "vid": ("mdistiller", "mdistiller/cifar100/vid.yaml", False, _VID + _SOLVER),
    "vid_mdistiller": ("mdistiller", "mdistiller/cifar100/vid.yaml", False, _VID + _SOLVER),
    "dkd_dot": ("mdistiller", "mdistiller/cifar100/dkd/res32x4_res8x4.yaml", False, _DKD + _SOLVER + _DOT),
    "crd": ("mdistiller", "mdistiller/cifar100/crd.yaml", False, _CRD + _SOLVER),
}
# Per-pair keys set for the small models (the peer YAML's values are for its own pair), on both sides:
# resnet8 and resnet14 both review 16, 32, 64 channels and the 64-d pooled feature (sizes 32, 16, 8, 1).
# crd: the heads' input sizes are the small models' 64-d pooled features.
# dkd_dot: DKD under mdistiller's DOT trainer with the DOT YAMLs' delta (mdistiller ships DOT YAMLs for KD only).
CASE_OPTS = {
    "reviewkd": {"REVIEWKD.IN_CHANNELS": [16, 32, 64, 64], "REVIEWKD.OUT_CHANNELS": [16, 32, 64, 64]},
    "dkd_dot": {"SOLVER.TRAINER": "dot", "SOLVER.DOT.DELTA": 0.075},
    "crd": {"CRD.FEAT.STUDENT_DIM": 64, "CRD.FEAT.TEACHER_DIM": 64},
}
# CRD's memory bank: NUM_DATA training samples of classes i % NUM_CLASSES (CIFAR-100's size).
NUM_DATA = 50000
# The reference's loss names -> kdlab's (mdistiller calls every feature term "loss_kd").
# kdlab-only keys of a case (the reference has no such key): vid_mdistiller runs mdistiller's VID as it ships
# (variances never trained), which kdlab reproduces with VID.TRAIN_VARIANCE False.
KDLAB_OPTS = {"vid_mdistiller": {"VID.TRAIN_VARIANCE": False}}
FEATURE_CASES = ("fitnet", "pkt", "rkd", "kdsvd", "at", "sp", "nst", "reviewkd", "ofd", "vid", "vid_mdistiller",
                 "crd")
LOSS_NAMES = {case: {"loss_kd": "loss_feat"} for case in FEATURE_CASES}


def seeded_tensor(key: str, shape: Sequence, dtype: torch.dtype) -> torch.Tensor:
    """A tensor determined by (key, shape): fan-in-scaled weights, BN-like scales, small biases and statistics."""
    if key.endswith("num_batches_tracked"):
        return torch.zeros(shape, dtype=dtype)
    g = torch.Generator().manual_seed(SEED + zlib.crc32(key.encode()))
    if key.endswith("running_var"):
        return torch.rand(shape, generator=g, dtype=dtype) + 0.5
    if len(shape) >= 2:  # variance 1 / fan-in; the teacher's classifier 5x larger, for peaked soft labels
        scale = 5.0 if key == "teacher.fc.weight" else 1.0
        return torch.randn(shape, generator=g, dtype=dtype) * (scale / math.sqrt(math.prod(shape[1:])))
    if key.endswith("weight"):
        return torch.rand(shape, generator=g, dtype=dtype) * 0.5 + 0.75
    return torch.randn(shape, generator=g, dtype=dtype) * 0.1


def load_seeded(module: torch.nn.Module, prefix: str) -> None:
    """Fill every state-dict entry of `module` from (prefix + key, shape); same keys give the same values."""
    state = module.state_dict()
    module.load_state_dict({k: seeded_tensor(prefix + k, v.shape, v.dtype) for k, v in state.items()}, strict=True)


def step_batch(step: int, two_views: bool = False):
    """The seeded batch of one step: N(0,1) images (and a second, perturbed view) and labels."""
    g = torch.Generator().manual_seed(SEED + 1000 + step)
    image = torch.randn(BATCH, 3, SIZE, SIZE, generator=g, dtype=DTYPE)
    target = torch.randint(0, NUM_CLASSES, (BATCH,), generator=g)
    if two_views:
        strong = image.flip(-1) + 0.5 * torch.randn(BATCH, 3, SIZE, SIZE, generator=g, dtype=DTYPE)
        return (image, strong), target
    return image, target


def train_targets() -> torch.Tensor:
    """The classes of the NUM_DATA training samples CRD's bank and negatives refer to."""
    return torch.arange(NUM_DATA) % NUM_CLASSES


def step_extras(case: str, step: int, epoch: int, cfg) -> dict:
    """Keyword arguments of one step beyond image/target/epoch: CRD's sample and contrast indices.

    The contrast indices are drawn by kdlab's sampler (kdlab.distillers.crd.NegativeSampler, exact mode)
    and passed explicitly to both distillers, as mdistiller's CRD trainer passes its dataset's draws.
    """
    if case != "crd":
        return {}
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from kdlab.distillers.crd import NegativeSampler

    k = cfg.CRD.NCE.K
    index = torch.arange(BATCH) * 997 + step  # distinct samples of several classes
    sampler = NegativeSampler(train_targets(), k, mode="exact", seed=SEED)
    return {"index": index, "contrastive_index": sampler(index, epoch)}


def seed_trained(distiller: torch.nn.Module, case: str) -> None:
    """Seed the teacher and the trained modules; CRD's bank rows too (its `params` keep their initial values)."""
    load_seeded(distiller.teacher, "teacher.")
    for name, module in trained_modules(distiller, case).items():
        if name == "contrast":
            for key in ("memory_v1", "memory_v2"):
                buf = getattr(module, key)
                buf.copy_(seeded_tensor(f"contrast.{key}", buf.shape, buf.dtype))
        else:
            load_seeded(module, name + ".")


def digest(state: Mapping[str, torch.Tensor]) -> dict:
    """{key: [sum, L2 norm]} in float64 for every floating-point entry."""
    out = {}
    for k, v in sorted(state.items()):
        if v.is_floating_point():
            v = v.detach().double()
            out[k] = [_round(v.sum()), _round(v.norm())]
    return out


def delta_norms(before: Mapping[str, torch.Tensor], after: Mapping[str, torch.Tensor]) -> dict:
    """{key: ||after - before||} for every floating-point entry: the size of what the steps changed."""
    return {
        k: _round((after[k].double() - before[k].double()).norm())
        for k in sorted(after)
        if after[k].is_floating_point()
    }


def trained_modules(distiller: torch.nn.Module, case: str) -> dict[str, torch.nn.Module]:
    """The modules whose weights the digest covers: the student, plus the method's trained extra modules."""
    mods = {"student": distiller.student}
    if case == "fitnet":
        mods["conv_reg"] = distiller.conv_reg
    if case == "reviewkd":
        mods["abfs"] = distiller.abfs
    if case == "ofd":
        mods["connectors"] = distiller.connectors
    if case == "vid":
        mods["regressors"], mods["log_scales"] = distiller.regressors, distiller.log_scales
    if case == "vid_mdistiller":  # the variances stay at their initial value
        mods["regressors"] = distiller.regressors
    if case == "crd":  # the heads, and the bank with its normalization constants
        mods.update(embed_s=distiller.embed_s, embed_t=distiller.embed_t, contrast=distiller.contrast)
    return mods


def _round(v) -> float:
    v = v.detach().item() if isinstance(v, torch.Tensor) else v
    return float(f"{float(v):.{DIGITS}g}")


# ------------------------------------------------------------------------------------ reference side
def _import_reference(path: str):
    """Import a reference repository's `mdistiller` package (tensorboardX stubbed: only its trainer needs it)."""
    for name in [m for m in sys.modules if m == "mdistiller" or m.startswith("mdistiller.")]:
        del sys.modules[name]
    sys.modules.setdefault("tensorboardX", types.SimpleNamespace(SummaryWriter=object))
    sys.path.insert(0, path)
    try:
        import mdistiller.distillers as distillers
        import mdistiller.engine.cfg as cfg_module
        import mdistiller.engine.utils as utils
        import mdistiller.models.cifar as models
    finally:
        sys.path.remove(path)
    # CRD's ContrastMemory moves its noise sampler to CUDA unconditionally; the contrast indices are
    # passed explicitly here, so the sampler is never used and stays on the CPU.
    sys.modules["mdistiller.distillers.CRD"].AliasMethod.cuda = lambda self: None
    return distillers, cfg_module.CFG, utils, models


def case_opts(case: str) -> list[str]:
    """The case's CASE_OPTS as a KEY VALUE list (for merge_from_list / kdlab's load_cfg)."""
    return [t for k, v in CASE_OPTS.get(case, {}).items() for t in (k, repr(v))]


def _reference_cfg(base, peer: Path, logit_stand: bool, opts: Sequence[str] = ()):
    """The peer YAML on the reference defaults (then `opts`), --logit-stand applied as the LS repo's train.py does."""
    cfg = base.clone()
    cfg.merge_from_file(str(peer))
    cfg.merge_from_list(list(opts))
    if logit_stand:  # the LS repo's rule, with its defaults --base-temp 2 --kd-weight 9
        cfg.EXPERIMENT.LOGIT_STAND = True
        if cfg.DISTILLER.TYPE in ("KD", "MLKD"):
            cfg.KD.LOSS.KD_WEIGHT, cfg.KD.TEMPERATURE = 9.0, 2.0
        elif cfg.DISTILLER.TYPE == "DKD":
            cfg.DKD.ALPHA, cfg.DKD.BETA, cfg.DKD.T = cfg.DKD.ALPHA * 9.0, cfg.DKD.BETA * 9.0, 2.0
    return cfg


def _lookup(cfg, key: str):
    node = cfg
    for part in key.split("."):
        node = node[part]
    return list(node) if isinstance(node, (list, tuple)) else node


def _reference_optimizer(repo_path: str, cfg, params):
    """SGD as mdistiller's BaseTrainer builds it, or under SOLVER.TRAINER dot its DOT trainer's optimizer."""
    if cfg.SOLVER.TRAINER != "dot":
        return torch.optim.SGD(params, lr=cfg.SOLVER.LR, momentum=cfg.SOLVER.MOMENTUM,
                               weight_decay=cfg.SOLVER.WEIGHT_DECAY)
    sys.path.insert(0, repo_path)
    try:
        from mdistiller.engine.dot import DistillationOrientedTrainer
    finally:
        sys.path.remove(repo_path)
    return DistillationOrientedTrainer(  # mdistiller's DOT.init_optimizer
        params,
        lr=cfg.SOLVER.LR,
        momentum=cfg.SOLVER.MOMENTUM - cfg.SOLVER.DOT.DELTA,
        momentum_kd=cfg.SOLVER.MOMENTUM + cfg.SOLVER.DOT.DELTA,
        weight_decay=cfg.SOLVER.WEIGHT_DECAY,
    )


def _reference_update(cfg, optimizer, loss_dict) -> None:
    """BaseTrainer.train_iter's update, or DOT.train_iter's (KD backward, step_kd, CE backward, step)."""
    if cfg.SOLVER.TRAINER != "dot":
        loss = sum(v.mean() for v in loss_dict.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return
    loss_ce = loss_dict["loss_ce"].mean()
    loss_kd = sum(v.mean() for k, v in loss_dict.items() if k != "loss_ce")  # mdistiller: its one loss_kd
    optimizer.zero_grad(set_to_none=True)
    loss_kd.backward(retain_graph=True)
    optimizer.step_kd()
    optimizer.zero_grad(set_to_none=True)
    loss_ce.backward()
    optimizer.step()


def _register_vid_log_scales(distiller) -> list:
    """mdistiller's VID keeps its log-scales in a plain list: register them, as kdlab does (see kdlab's vid.py).

    Unregistered, .to(DTYPE) would leave them in float32 and its optimizer would never update them
    (mdistiller's bug, which kdlab fixes); registered, both sides train them in float64. Returns the
    parameters to add to the optimizer.
    """
    distiller.log_scales = torch.nn.ParameterList(distiller.log_scales)
    return list(distiller.log_scales)


def run_reference_case(case: str, repo_path: str, peer_root: Path) -> dict:
    kind, peer, logit_stand, keys = CASES[case]
    distillers, base_cfg, utils, models = _import_reference(repo_path)
    cfg = _reference_cfg(base_cfg, peer_root / peer, logit_stand, case_opts(case))
    torch.manual_seed(0)  # the reference's shape probe (FitNet) draws random data
    student = getattr(models, STUDENT)(num_classes=NUM_CLASSES)
    teacher = getattr(models, TEACHER)(num_classes=NUM_CLASSES)
    load_seeded(teacher, "teacher.")  # before the distiller: OFD's margins come from the teacher's BatchNorms
    extra = (NUM_DATA,) if cfg.DISTILLER.TYPE == "CRD" else ()  # mdistiller's train.py passes num_data to CRD
    distiller = distillers.distiller_dict[cfg.DISTILLER.TYPE](student, teacher, cfg, *extra)
    extra_params = _register_vid_log_scales(distiller) if case == "vid" else []
    distiller = distiller.to(DTYPE)
    seed_trained(distiller, case)  # the teacher again, in DTYPE (and undoing a shape probe's statistics)
    before = {n: {k: v.clone() for k, v in m.state_dict().items()} for n, m in trained_modules(distiller, case).items()}
    distiller.train()
    optimizer = _reference_optimizer(repo_path, cfg, distiller.get_learnable_parameters() + extra_params)
    two_views = cfg.DISTILLER.TYPE == "MLKD"
    renames = LOSS_NAMES.get(case, {})
    losses = []
    for step, epoch in enumerate(STEP_EPOCHS):
        utils.adjust_learning_rate(epoch, cfg, optimizer)
        image, target = step_batch(step, two_views)
        if two_views:
            _, loss_dict = distiller(image_weak=image[0], image_strong=image[1], target=target, epoch=epoch)
        else:
            _, loss_dict = distiller(image=image, target=target, epoch=epoch, **step_extras(case, step, epoch, cfg))
        _reference_update(cfg, optimizer, loss_dict)
        losses.append({renames.get(k, k): _round(v) for k, v in loss_dict.items()})
    after = {n: m.state_dict() for n, m in trained_modules(distiller, case).items()}
    return {
        "reference": kind,
        "peer_config": peer,
        "logit_stand": logit_stand,
        "opts": case_opts(case),
        "config": {k: _lookup(cfg, k) for k in ("DISTILLER.TYPE", *keys)},
        "losses": losses,
        "digest": {n: digest(s) for n, s in after.items()},
        "delta_norms": {n: delta_norms(before[n], after[n]) for n in after},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mdistiller", required=True, help="clone of megvii-research/mdistiller")
    parser.add_argument("--ls-repo", required=True, help="clone of sunshangquan/logit-standardization-KD")
    parser.add_argument(
        "--peer-configs", required=True, help="folder holding mdistiller/ and logit-standardization-KD/"
    )
    parser.add_argument("--out", default=str(Path(__file__).with_name("step_refs.json")))
    parser.add_argument("--only", nargs="+", choices=sorted(CASES), metavar="CASE",
                        help="run only these cases and merge them into the existing --out file")
    args = parser.parse_args()
    torch.set_default_dtype(torch.float32)
    torch.set_num_threads(1)  # as the tests run (conftest.py); KDSVD's float32 SVD depends on it
    repos = {"mdistiller": args.mdistiller, "ls": args.ls_repo}
    cases = json.loads(Path(args.out).read_text())["cases"] if args.only else {}
    for case in args.only or CASES:
        cases[case] = run_reference_case(case, repos[CASES[case][0]], Path(args.peer_configs))
        print(case, cases[case]["losses"][-1])
    out = {
        "about": "reference distillers' losses and student weights after SGD (or DOT) steps; see make_step_refs.py",
        "seed": SEED,
        "batch": BATCH,
        "size": SIZE,
        "num_classes": NUM_CLASSES,
        "teacher": TEACHER,
        "student": STUDENT,
        "step_epochs": list(STEP_EPOCHS),
        "torch": torch.__version__,
        "dtype": str(DTYPE).removeprefix("torch."),
        "cases": {case: cases[case] for case in CASES if case in cases},
    }
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print("wrote", args.out)


if __name__ == "__main__":
    main()
