"""Write tests/reference/ctkd_refs.json: a few training steps of CTKD's own training loop.

    python tests/reference/make_ctkd_refs.py --ctkd /path/to/CTKD \
        --ls-ctkd /path/to/logit-standardization-KD/CTKD [--out tests/reference/ctkd_refs.json]

CTKD's code is not mdistiller's (no config file, no distiller classes), so this script has its own
cases, one per reference command line, written below as the train_student.py options they set
(make_step_refs.py's seeded weights, batches and digests are reused). For each case it builds the
reference's student (resnet8) and teacher (resnet14; CTKD's models/resnet.py has the state-dict keys of
kdlab's), its Global_T, criterions and SGD optimizer over [student, Global_T] as train_student.py's
main_worker does, and for each epoch of STEP_EPOCHS sets the LR (helper.util.adjust_learning_rate)
and the lambda (train_student.CosineDecay / LinearDecay) and calls helper.loops.train_distill on a
one-batch loader: each call is one step. Everything runs in float64 on the CPU (`Tensor.cuda` is the
identity while the reference runs: its losses call `temp.cuda()`).

torch >= 2.1 computes F.kl_div as xlogy(target, target) - target * input, whose gradient is NaN
where the target is 0 (0 * log 0); DKD's non-target term has such zeros (exp(-1000)) and, with a
learned temperature, that NaN reaches it. CTKD ran on torch 1.11, whose kl_div masked the target's
gradient to 0 where the target is 0; the reference runs here with that kl_div (`_kl_div_torch1`),
the same values where the target is positive.
"""

from __future__ import annotations

import argparse
import json
import sys
import types
from pathlib import Path
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_step_refs as refs  # noqa: E402

STEP_EPOCHS = (1, 5, 12)  # lambda (cosine, 0 -> -1 over 10 epochs): -0.024, -0.5, -1
# train_student.py's defaults and CTKD's scripts/run_cifar_distill.sh (batch 64, LR 0.05, --have_mlp 1
# --mlp_name global --cosine_decay 1 --decay_max 0 --decay_min -1 --decay_loops 10).
BASE = dict(learning_rate=0.05, lr_decay_epochs=[150, 180, 210], lr_decay_rate=0.1, weight_decay=5e-4,
            momentum=0.9, t_start=1.0, t_end=20.0, cosine_decay=1, decay_max=0.0, decay_min=-1.0,
            decay_loops=10.0, kd_T=4.0, dkd_alpha=1.0, dkd_beta=2.0)
# name: (repository, train_student.py options over BASE, kdlab config values, kdlab EXPERIMENT.LOGIT_STAND)
_SOLVER = {"SOLVER.LR": 0.05, "SOLVER.MOMENTUM": 0.9, "SOLVER.WEIGHT_DECAY": 5e-4,
           "SOLVER.LR_DECAY_STAGES": [150, 180, 210], "SOLVER.LR_DECAY_RATE": 0.1}
_CTKD = {"CTKD.MODE": "global", "CTKD.T_START": 1.0, "CTKD.T_END": 20.0, "CTKD.COSINE_DECAY": True,
         "CTKD.DECAY_MAX": 0.0, "CTKD.DECAY_MIN": -1.0, "CTKD.DECAY_LOOPS": 10}
CASES = {
    # CTKD's script: --distill kd -r 0.1 -a 0.9 -b 0 --kd_T 4
    "ctkd": ("ctkd", dict(distill="kd", gamma=0.1, alpha=0.9, beta=0.0),
             {"DISTILLER.TYPE": "CTKD", "KD.LOSS.CE_WEIGHT": 0.1, "KD.LOSS.KD_WEIGHT": 0.9, **_CTKD, **_SOLVER}, False),
    # logit-standardization-KD's CTKD script: -r 0.1 -a 9 -b 0 --kd_T 2 and no --logit_stand flag, which in
    # that train_student.py selects DistillKL_logit_stand (`DistillKL() if opt.logit_stand else ...`)
    "ctkd_ls": ("ls", dict(distill="kd", gamma=0.1, alpha=9.0, beta=0.0, kd_T=2.0, logit_stand=False),
                {"DISTILLER.TYPE": "CTKD", "KD.LOSS.CE_WEIGHT": 0.1, "KD.LOSS.KD_WEIGHT": 9.0, **_CTKD, **_SOLVER},
                True),
    # CTKD's DKD line: --distill dkd -r 1 -a 0 -b 1 --dkd_alpha 1 --dkd_beta 2
    "ctkd_dkd": ("ctkd", dict(distill="dkd", gamma=1.0, alpha=0.0, beta=1.0),
                 {"DISTILLER.TYPE": "CTKD_DKD", "DKD.CE_WEIGHT": 1.0, "DKD.ALPHA": 1.0, "DKD.BETA": 2.0,
                  "DKD.WARMUP": 0, **_CTKD, **_SOLVER}, False),
    # --cosine_decay 0: CTKD's LinearDecay
    "ctkd_linear": ("ctkd", dict(distill="kd", gamma=0.1, alpha=0.9, beta=0.0, cosine_decay=0),
                    {"DISTILLER.TYPE": "CTKD", "KD.LOSS.CE_WEIGHT": 0.1, "KD.LOSS.KD_WEIGHT": 0.9, **_CTKD,
                     "CTKD.COSINE_DECAY": False, **_SOLVER}, False),
}
_REFERENCE_PACKAGES = ("models", "helper", "distiller_zoo", "dataset", "crd", "train_student")


class _KLDivTorch1(torch.autograd.Function):
    """Elementwise kl_div as torch 1.x: target * (log target - input) where target > 0, else 0; same gradients."""

    @staticmethod
    def forward(ctx, inp, target):
        ctx.save_for_backward(inp, target)
        out = target * (target.log() - inp)
        return torch.where(target > 0, out, torch.zeros_like(out))

    @staticmethod
    def backward(ctx, grad):
        inp, target = ctx.saved_tensors
        grad_target = (grad * (target.log() + 1 - inp)).masked_fill(target == 0, 0.0)
        return -grad * target, grad_target


def _kl_div_torch1(input, target, size_average=None, reduce=None, reduction="mean", log_target=False):  # noqa: A002
    assert not log_target and size_average is None and reduce is None
    out = _KLDivTorch1.apply(input, target)
    return {"sum": out.sum, "mean": out.mean, "none": lambda: out,
            "batchmean": lambda: out.sum() / input.size(0)}[reduction]()


def _import_reference(path: str):
    """CTKD's train_student (CosineDecay, LinearDecay), helper.loops, helper.util, models, distiller_zoo."""
    for name in [m for m in sys.modules if m.split(".")[0] in _REFERENCE_PACKAGES]:
        del sys.modules[name]
    for name in ("imgaug", "imgaug.augmenters"):  # dataset/imagenet.py's augmentation library: not used here
        sys.modules.setdefault(name, mock.MagicMock())
    sys.path.insert(0, path)
    try:
        import distiller_zoo
        import helper.loops as loops
        import helper.util as util
        import models
        import train_student
    finally:
        sys.path.remove(path)
    return types.SimpleNamespace(zoo=distiller_zoo, loops=loops, util=util, models=models, main=train_student)


def _options(case: str) -> types.SimpleNamespace:
    opts = {**BASE, "have_mlp": 1, "mlp_name": "global", "logit_stand": False, "gpu": None,
            "multiprocessing_distributed": False, "print_freq": 10**9, "batch_size": refs.BATCH, **CASES[case][1]}
    return types.SimpleNamespace(**opts)


def run_reference_case(case: str, repo_path: str) -> dict:
    ref = _import_reference(repo_path)
    opt = _options(case)
    torch.manual_seed(0)
    model_s = ref.models.model_dict[refs.STUDENT](num_classes=refs.NUM_CLASSES).to(refs.DTYPE)
    model_t = ref.models.model_dict[refs.TEACHER](num_classes=refs.NUM_CLASSES).to(refs.DTYPE)
    refs.load_seeded(model_t, "teacher.")
    refs.load_seeded(model_s, "student.")
    mlp = ref.models.Global_T().to(refs.DTYPE)
    before = {k: v.clone() for k, v in model_s.state_dict().items()}
    module_list = torch.nn.ModuleList([model_s, model_t])  # as main_worker: student first, teacher last
    trainable_list = torch.nn.ModuleList([model_s, mlp])
    # main_worker's criterion_div line, as each repository has it
    if hasattr(ref.zoo, "DistillKL_logit_stand"):
        criterion_div = ref.zoo.DistillKL() if opt.logit_stand else ref.zoo.DistillKL_logit_stand()
    else:
        criterion_div = ref.zoo.DistillKL()
    criterion_kd = ref.zoo.DKDloss() if opt.distill == "dkd" else ref.zoo.DistillKL()
    criterion_list = torch.nn.ModuleList([torch.nn.CrossEntropyLoss(), criterion_div, criterion_kd])
    optimizer = torch.optim.SGD(trainable_list.parameters(), lr=opt.learning_rate, momentum=opt.momentum,
                                weight_decay=opt.weight_decay)
    decay_cls = ref.main.CosineDecay if opt.cosine_decay else ref.main.LinearDecay
    gradient_decay = decay_cls(max_value=opt.decay_max, min_value=opt.decay_min, num_loops=opt.decay_loops)
    seen: dict = {}
    hooks = [criterion_list[0].register_forward_hook(lambda m, i, o: seen.__setitem__("cls", o)),
             criterion_list[1].register_forward_hook(lambda m, i, o: seen.update(div=o, temp=i[2]))]
    if opt.distill == "dkd":
        hooks.append(criterion_kd.register_forward_hook(lambda m, i, o: seen.__setitem__("kd", o)))
    steps = []
    with mock.patch.object(torch.Tensor, "cuda", lambda self, *a, **k: self), \
            mock.patch.object(torch.nn.functional, "kl_div", _kl_div_torch1):
        for step, epoch in enumerate(STEP_EPOCHS):
            ref.util.adjust_learning_rate(epoch, opt, optimizer)
            decay_value = gradient_decay.get_value(epoch)
            batch = [refs.step_batch(step)]
            seen.clear()
            ref.loops.train_distill(epoch, batch, module_list, mlp, decay_value, criterion_list, optimizer, opt)
            loss_kd = opt.alpha * seen["div"] + (opt.beta * seen["kd"] if opt.distill == "dkd" else 0.0)
            steps.append({"lambda": decay_value, "temperature": refs._round(seen["temp"].squeeze()),
                          "losses": {"loss_ce": refs._round(opt.gamma * seen["cls"]), "loss_kd": refs._round(loss_kd)}})
    for h in hooks:
        h.remove()
    after = model_s.state_dict()
    kind, _, config, logit_stand = CASES[case]
    return {
        "reference": kind,
        "options": {k: v for k, v in vars(opt).items() if k not in ("gpu", "print_freq")},
        "config": config,
        "logit_stand": logit_stand,
        "steps": steps,
        "global_T": refs._round(mlp.global_T.squeeze()),
        "digest": refs.digest(after),
        "delta_norms": refs.delta_norms(before, after),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ctkd", required=True, help="clone of zhengli97/CTKD")
    parser.add_argument("--ls-ctkd", required=True, help="the CTKD folder of sunshangquan/logit-standardization-KD")
    parser.add_argument("--out", default=str(Path(__file__).with_name("ctkd_refs.json")))
    args = parser.parse_args()
    torch.set_num_threads(1)
    repos = {"ctkd": args.ctkd, "ls": args.ls_ctkd}
    cases = {}
    for case in CASES:
        cases[case] = run_reference_case(case, repos[CASES[case][0]])
        print(case, cases[case]["steps"][-1], cases[case]["global_T"])
    out = {
        "about": "CTKD's train_distill steps: losses, temperatures, student weights; see make_ctkd_refs.py",
        "seed": refs.SEED, "batch": refs.BATCH, "size": refs.SIZE, "num_classes": refs.NUM_CLASSES,
        "teacher": refs.TEACHER, "student": refs.STUDENT, "step_epochs": list(STEP_EPOCHS),
        "torch": torch.__version__, "dtype": str(refs.DTYPE).removeprefix("torch."), "cases": cases,
    }
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print("wrote", args.out)


if __name__ == "__main__":
    main()
