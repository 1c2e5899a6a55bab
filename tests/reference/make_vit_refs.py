"""Store facts of the reference's ViT students (tiny-transformers in the logit-standardization repo).

    python tests/reference/make_vit_refs.py --ls-repo /work/ref/lskd

Builds DeiT-Tiny, T2T-ViT-7, PiT-Tiny and PVT-Tiny from the checkout's pycls with its
configs/*/..._c100_{base,KD_ours}.yaml and writes tests/reference/vit_refs.json:
- "models": per config, parameter counts (all, trainable), the logits' shape and the shapes of the
  `features` list (the maps the locality guidance indexes) for a 224x224 input;
- "step": three float64 training iterations of the reference's trainer (train_epoch's loss: 0.5 * CE +
  LOGIT_WEIGHT * KD, logit standardization, EXTRA_WEIGHT_IN 10, its AdamW groups) for DeiT-Tiny with the
  distillation token at 48 px and a linear teacher fed 32 px (tests/reference/vit_step.py: initial weights by
  a recipe keyed by kdlab's parameter names, the batches): the losses per step and digests of the weights;
- "lg_step": the same for the locality guidance (configs/deit/deit-ti_c100_ours.yaml, ENABLE_INTER) with a
  three-stage conv teacher (vit_step.ConvTeacher), the 1x1 convs included;
- "forward": each student's logits and block-map digests in float64 with the recipe's weights (the reference's
  T2T Performer patched to cast to its projection's dtype rather than float32, see patch_performer_dtype).
Needs timm and einops; fvcore, iopath and simplejson (imported by pycls but not used here) are stubbed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import types

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIGS = {
    "deit_tiny": "deit/deit-ti_c100_base.yaml",
    "deit_tiny_distilled": "deit/deit-ti_c100_KD_ours.yaml",
    "t2t_vit_7": "t2t/t2t-7_c100_base.yaml",
    "pit_tiny": "pit/pit-ti_c100_base.yaml",
    "pvt_tiny": "pvt/pvt-ti_c100_base.yaml",
}


def stub_modules() -> None:
    class Registry(dict):
        def __init__(self, name):
            super().__init__()

        def register(self, obj=None):
            def deco(o):
                self[o.__name__] = o
                return o
            return deco(obj) if obj is not None else deco

        def get(self, name):
            return self[name]

    for name in ("fvcore", "fvcore.common", "fvcore.common.registry", "iopath", "iopath.common",
                 "iopath.common.file_io", "simplejson"):
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules["fvcore.common.registry"].Registry = Registry
    sys.modules["iopath.common.file_io"].PathManagerFactory = types.SimpleNamespace(get=lambda **k: None)


def load_reference(repo: str):
    stub_modules()
    sys.path.insert(0, os.path.join(repo, "tiny-transformers"))
    import logging

    import pycls.core  # noqa: F401
    sys.modules["pycls.core.logging"] = types.SimpleNamespace(get_logger=logging.getLogger)  # (tensorboard, submitit)
    sys.modules["pycls.core.distributed"] = types.SimpleNamespace()  # (submitit; not used by the parts run here)
    import pycls.models  # noqa: F401  (registers the models)
    from pycls.core.config import cfg
    from pycls.models.build import MODEL
    return cfg, MODEL


def configure(cfg, repo: str, rel: str) -> None:
    from pycls.core.config import _CFG_DEFAULT

    cfg.defrost()
    for key, value in _CFG_DEFAULT.items():  # reset (merge_from_other_cfg keeps the previous file's types)
        cfg[key] = value.clone() if hasattr(value, "clone") else value
    cfg.defrost()
    cfg.merge_from_file(os.path.join(repo, "tiny-transformers", "configs", rel))
    cfg.defrost()
    cfg.DISTILLATION.TEACHER_WEIGHTS = None


def model_facts(cfg, MODEL, repo: str) -> dict:
    out = {}
    for name, rel in CONFIGS.items():
        configure(cfg, repo, rel)
        torch.manual_seed(0)
        model = MODEL.get(cfg.MODEL.TYPE)().eval()
        with torch.no_grad():
            logits = model(torch.randn(2, 3, cfg.MODEL.IMG_SIZE, cfg.MODEL.IMG_SIZE))
        out[name] = {
            "config": rel,
            "params": sum(p.numel() for p in model.parameters()),
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "logits": list(logits.shape),
            "features": [list(f.shape) for f in model.features],
        }
    return out


def patch_performer_dtype() -> None:
    """The reference's Performer casts to float32 (x.float()), which fails in float64: cast to the dtype of its
    fixed projection w instead, as kdlab's port does (the same under AMP)."""
    import math

    from pycls.models.transformers import t2t_vit as T

    def prm_exp(self, x):
        xd = ((x * x).sum(dim=-1, keepdim=True)).repeat(1, 1, self.m) / 2
        wtx = torch.einsum("bti,mi->btm", x.to(self.w.dtype), self.w)
        return torch.exp(wtx - xd) / math.sqrt(self.m)

    def forward(self, x):
        k, q, v = torch.split(self.qkv_transform(x), self.head_channels, dim=-1)
        kp, qp = self.prm_exp(k), self.prm_exp(q)
        D = torch.einsum("bti,bi->bt", qp, kp.sum(dim=1)).unsqueeze(dim=2)
        kptv = torch.einsum("bin,bim->bnm", v.to(kp.dtype), kp)
        y = torch.einsum("bti,bni->btn", qp, kptv) / (D.repeat(1, 1, self.head_channels) + 1e-8)
        y = self.dropout(self.projection(y))
        return v + y if self.in_channels != self.out_channels else y

    T.PerformerAttention.prm_exp, T.PerformerAttention.forward = prm_exp, forward


def forward_facts(cfg, MODEL, repo: str) -> dict:
    """Each student in float64, eval mode, weights by vit_step's recipe: logits and feature-map digests."""
    import vit_step as V

    patch_performer_dtype()
    out = {}
    for name, rel in CONFIGS.items():
        configure(cfg, repo, rel)
        cfg.MODEL.IMG_SIZE = V.FORWARD_SIZES[name]
        model = MODEL.get(cfg.MODEL.TYPE)().double().eval()
        V.set_initial_weights(model, V.reference_to_kdlab)
        g = torch.Generator().manual_seed(5)
        x = torch.randn(2, 3, cfg.MODEL.IMG_SIZE, cfg.MODEL.IMG_SIZE, generator=g, dtype=torch.float64)
        with torch.no_grad():
            logits = model(x)
        out[name] = {"size": cfg.MODEL.IMG_SIZE, "logits": logits.tolist(),
                     "features": [[f.sum().item(), f.pow(2).sum().item()] for f in model.features]}
    return out


def reference_step(cfg, MODEL, repo: str) -> dict:
    """STEPS training iterations of the reference's trainer.train_epoch for DeiT-Tiny KD+LS, in float64."""
    import vit_step as V
    from pycls.core.net import SoftCrossEntropyLoss, smooth_one_hot_labels
    from pycls.core.optimizer import construct_optimizer, construct_scheduler
    from pycls.models.distill import DistillationWrapper

    configure(cfg, repo, CONFIGS["deit_tiny_distilled"])
    cfg.MODEL.IMG_SIZE = V.STUDENT_SIZE
    cfg.DISTILLATION.TEACHER_IMG_SIZE = V.TEACHER_SIZE
    cfg.TRANSFORMER.DROP_PATH_RATE = 0.0  # random; off on both sides
    cfg.OPTIM.WARMUP_EPOCHS = 0  # the first epoch at BASE_LR (the warm-up's 5e-7 would hide the update)
    torch.manual_seed(0)
    student = MODEL.get(cfg.MODEL.TYPE)()
    V.set_initial_weights(student, V.reference_to_kdlab)
    model = DistillationWrapper(student, V.LinearTeacher()).double().train()
    optimizer = construct_optimizer(model)
    construct_scheduler(optimizer)  # sets the epoch-0 LR
    loss_fun, steps = SoftCrossEntropyLoss(), []
    for step in range(V.STEPS):
        inputs, labels = V.batch(step)
        preds = model(inputs)
        loss_cls = loss_fun(preds, smooth_one_hot_labels(labels).double())
        _, loss_logit = model.guidance_loss(inputs, [])
        loss_cls, loss_logit = loss_cls * 0.5, loss_logit * cfg.DISTILLATION.LOGIT_WEIGHT
        loss = loss_cls + loss_logit
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        steps.append({"loss_ce": loss_cls.item(), "loss_kd": loss_logit.item(), "lr": optimizer.param_groups[0]["lr"]})
    return {"config": CONFIGS["deit_tiny_distilled"], "steps": steps,
            "weights": V.digests(student, V.reference_to_kdlab)}


def reference_lg_step(cfg, MODEL, repo: str) -> dict:
    """STEPS training iterations of DeiT-Tiny with the locality guidance (configs/deit/deit-ti_c100_ours.yaml:
    ENABLE_INTER, linear transforms, student blocks 0/6/11 to the teacher's three stages), in float64."""
    import vit_step as V
    from pycls.core.net import SoftCrossEntropyLoss, smooth_one_hot_labels
    from pycls.core.optimizer import construct_optimizer, construct_scheduler
    from pycls.models.distill import DistillationWrapper

    rel = "deit/deit-ti_c100_ours.yaml"
    configure(cfg, repo, rel)
    cfg.MODEL.IMG_SIZE = V.STUDENT_SIZE
    cfg.DISTILLATION.TEACHER_IMG_SIZE = V.TEACHER_SIZE
    cfg.TRANSFORMER.DROP_PATH_RATE = 0.0
    cfg.OPTIM.WARMUP_EPOCHS = 0
    student = MODEL.get(cfg.MODEL.TYPE)()
    model = DistillationWrapper(student, V.ConvTeacher().double())
    V.set_initial_weights(model.student_model, V.reference_to_kdlab)
    V.set_initial_weights(model.feature_transforms, lambda n: "feature_transforms." + n)
    model = model.double().train()
    optimizer = construct_optimizer(model)
    construct_scheduler(optimizer)
    loss_fun, steps = SoftCrossEntropyLoss(), []
    for step in range(V.STEPS):
        inputs, labels = V.batch(step)
        preds = model(inputs)
        loss_cls = loss_fun(preds, smooth_one_hot_labels(labels).double())
        loss_inter, _ = model.guidance_loss(inputs, [])
        loss_inter = loss_inter * cfg.DISTILLATION.INTER_WEIGHT
        loss = loss_cls + loss_inter
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        steps.append({"loss_ce": loss_cls.item(), "loss_feat": loss_inter.item()})
    weights = V.digests(student, V.reference_to_kdlab)
    weights.update(V.digests(model.feature_transforms, lambda n: "feature_transforms." + n))
    return {"config": rel, "steps": steps, "weights": weights}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ls-repo", required=True)
    args = parser.parse_args()
    cfg, MODEL = load_reference(args.ls_repo)
    refs = {"models": model_facts(cfg, MODEL, args.ls_repo)}
    refs["forward"] = forward_facts(cfg, MODEL, args.ls_repo)
    refs["step"] = reference_step(cfg, MODEL, args.ls_repo)
    refs["lg_step"] = reference_lg_step(cfg, MODEL, args.ls_repo)
    with open(os.path.join(HERE, "vit_refs.json"), "w") as f:
        json.dump(refs, f, indent=1)
        f.write("\n")
    print(json.dumps(refs["models"], indent=1)[:3000])


if __name__ == "__main__":
    sys.path.insert(0, HERE)
    main()
