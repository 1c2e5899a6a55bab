"""The reference step: mdistiller's training iteration, timed beside kdlab's on the same batch."""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable

import torch
from yacs.config import CfgNode

from kdlab.engine.trainer import Trainer
from kdlab.errors import ConfigError


def _import_file(path: str, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_reference(repo: str, cfg: CfgNode) -> Callable[[torch.Tensor, torch.Tensor, int], Callable[[], None]]:
    """Import mdistiller from repo, check it has cfg's method and models; return make_step(image, target, classes).

    make_step builds mdistiller's training step (BaseTrainer.train_iter without .cuda()): its CIFAR models and
    distiller (fp32, NCHW, eager), SGD as its trainer builds it, forward_train, sum of the losses, backward,
    step, its top-1/top-5 accuracy and loss read-back.
    """
    if not os.path.isfile(os.path.join(repo, "mdistiller", "distillers", "_base.py")):
        raise ConfigError(f"--reference-repo {repo!r}: expected a checkout of mdistiller (mdistiller/distillers/)")
    sys.path.insert(0, os.path.abspath(repo))
    try:
        from mdistiller.distillers import distiller_dict
        from mdistiller.models.cifar import cifar_model_dict
    finally:
        sys.path.pop(0)
    accuracy = _import_file(os.path.join(repo, "mdistiller", "engine", "utils.py"), "_mdistiller_engine_utils").accuracy
    method, names = cfg.DISTILLER.TYPE, (cfg.DISTILLER.STUDENT, cfg.DISTILLER.TEACHER)
    if method not in distiller_dict:
        raise ConfigError(f"mdistiller has no {method!r} distiller (it has {', '.join(sorted(distiller_dict))})")
    missing = [n for n in names[: 1 if method == "NONE" else 2] if n not in cifar_model_dict]
    if missing:
        raise ConfigError(f"mdistiller's CIFAR models do not include {', '.join(missing)}")

    def make_step(image: torch.Tensor, target: torch.Tensor, num_classes: int) -> Callable[[], None]:
        if image.dim() != 4 or image.shape[1] != 3:
            raise ConfigError(f"mdistiller's CIFAR models need 3-channel images, this config has {tuple(image.shape)}")
        student = cifar_model_dict[names[0]][0](num_classes=num_classes)
        if method == "NONE":
            distiller = distiller_dict[method](student)
        else:
            teacher = cifar_model_dict[names[1]][0](num_classes=num_classes)
            distiller = distiller_dict[method](student, teacher, cfg)
        distiller.to(image.device).train()
        optimizer = torch.optim.SGD(
            distiller.get_learnable_parameters(), lr=cfg.SOLVER.LR, momentum=cfg.SOLVER.MOMENTUM,
            weight_decay=cfg.SOLVER.WEIGHT_DECAY,
        )

        def step() -> None:
            optimizer.zero_grad()
            preds, losses = distiller(image=image.float(), target=target, epoch=1)
            loss = sum(v.mean() for v in losses.values())
            loss.backward()
            optimizer.step()
            accuracy(preds, target, topk=(1, 5))
            loss.cpu().detach().numpy().mean()

        return step

    return make_step


def reference_input(trainer: Trainer, batch) -> torch.Tensor:
    """The float NCHW image batch kdlab's step sees after its batch transform (first view for two views)."""
    image = batch[0][0] if isinstance(batch[0], (tuple, list)) else batch[0]
    image = image.to(trainer.device)
    if trainer.train_batch_transform is not None:
        g = torch.Generator(device=trainer.device).manual_seed(0)
        image = trainer.train_batch_transform(image, g)
    return image.float().contiguous()

