"""The Distiller contract shared by every method (after mdistiller's _base.py)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from yacs.config import CfgNode

from kdlab.constants import IGNORE_INDEX
from kdlab.errors import ConfigError


@dataclass(frozen=True)
class DatasetFacts:
    """What a method may need to know about the dataset (built by kdlab.engine.builder from DatasetSplits).

    None means "not known"; `build_distiller` checks that the facts a method declares are known.
    """

    num_classes: Optional[int] = None
    num_train: Optional[int] = None  # training samples: the size of a memory bank indexed by `index`
    # the class of each training sample, by `index` (int64 tensor; CRD's negatives come from other classes)
    train_targets: Optional[torch.Tensor] = field(default=None, compare=False, repr=False)
    input_size: Optional[tuple[int, int]] = None  # (H, W) of the training images
    in_channels: Optional[int] = None
    task: str = "classification"  # classification | segmentation


class Distiller(nn.Module):
    """Holds a student, a frozen teacher (always in eval mode) and any extra trainable modules.

    forward_train(image, target, **extras) -> (student_logits, {loss_name: scalar tensor});
    the total loss is the sum of the dict. `extras` carries `epoch` (for warm-ups),
    `index` (for memory-bank methods) and, with a teacher-output cache, `teacher_logits` (float32, the
    teacher's logits of this batch's views; only for methods with `teacher_logits_only`). Two-view
    methods set `two_views = True` and receive `image` as a tuple (weak, strong).

    Everything the rest of kdlab needs to know about a method is declared here, on its class:
    the class attributes below, `needed_facts` and `apply_logit_stand`. `supports_logit_stand`
    is derived: True when the class (or a parent other than Distiller) defines apply_logit_stand.
    """

    two_views: bool = False  # the data pipeline must deliver (weak, strong) views
    needs_teacher: bool = True  # False: no teacher is built or loaded (DISTILLER.TEACHER is not checked)
    # True: the method's only use of the teacher is its logits of the training image (teacher_logits_for), so the
    # trainer may pass them from a teacher-output cache (DISTILLER.TEACHER_CACHE) as extras["teacher_logits"]
    teacher_logits_only: bool = False
    supports_segmentation: bool = False  # per-pixel logits (N, C, H, W) are handled
    dataset_facts: tuple[str, ...] = ()  # the DatasetFacts fields from_config reads
    supports_logit_stand: bool = False  # derived from apply_logit_stand, see __init_subclass__
    paper: str = ""  # where the method comes from (the README's methods table)
    group: str = ""  # the config group holding the method's keys ("" if it has none)
    # True (set by the instance): the method trains no classifier, so the held-out test_loss is its own
    # objective (held_out_loss) rather than the cross-entropy of the student's untrained logits
    held_out_objective: bool = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.supports_logit_stand = cls.apply_logit_stand.__func__ is not Distiller.apply_logit_stand.__func__

    @classmethod
    def needed_facts(cls, cfg: CfgNode) -> tuple[str, ...]:
        """The DatasetFacts fields from_config reads with this config (a key may make one unnecessary)."""
        return cls.dataset_facts

    @classmethod
    def apply_logit_stand(cls, cfg: CfgNode, base_temp: float, kd_weight: float) -> None:
        """Set this method's keys for --logit-stand (Sun et al. CVPR 2024); methods that take it override this."""
        raise ConfigError(f"--logit-stand is not supported by {cls.__name__}")

    @classmethod
    def from_config(
        cls, cfg: CfgNode, student: nn.Module, teacher: Optional[nn.Module], facts: DatasetFacts
    ) -> Distiller:
        raise NotImplementedError

    def __init__(self, student: nn.Module, teacher: nn.Module | None = None) -> None:
        super().__init__()
        self.student = student
        self.teacher = teacher
        if teacher is not None:
            for p in teacher.parameters():
                p.requires_grad_(False)
            teacher.eval()

    def train(self, mode: bool = True) -> Distiller:
        if not isinstance(mode, bool):
            raise ValueError("training mode is expected to be boolean")
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        trainable = getattr(self.student, "kdlab_trainable_only", None)  # CLASSIFIER.FREEZE_BACKBONE
        if mode and trainable is not None:  # a frozen backbone keeps its BatchNorm statistics: eval mode
            self.student.eval()
            self.student.get_submodule(trainable).train()
        return self

    def extra_modules(self) -> Iterator[nn.Module]:
        """Trainable modules other than the student (connectors, projection heads)."""
        return (m for name, m in self.named_children() if name not in ("student", "teacher"))

    def self_synced_buffers(self) -> list[str]:
        """Buffers the method itself keeps equal on every rank (e.g. a gathered memory bank): DDP skips them."""
        return []

    def learnable_parameters(self) -> list[nn.Parameter]:
        params = [p for p in self.student.parameters() if p.requires_grad]
        for module in self.extra_modules():
            params.extend(p for p in module.parameters() if p.requires_grad)
        return params

    def extra_parameter_count(self) -> int:
        """Number of trainable parameters the method adds on top of the student."""
        return sum(p.numel() for m in self.extra_modules() for p in m.parameters() if p.requires_grad)

    @torch.no_grad()
    def teacher_forward(self, image: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        """Run the frozen teacher without building a graph; outputs are safe to use in losses."""
        logits, feats = self.teacher(image)
        return logits, feats

    def teacher_logits_for(self, image: torch.Tensor, extras: dict) -> torch.Tensor:
        """The teacher's logits of `image`: extras["teacher_logits"] when the trainer passed them (from the
        teacher-output cache), else computed by the frozen teacher."""
        given = extras.get("teacher_logits")
        if given is not None:
            return given
        return self.teacher_forward(image)[0]

    def forward_train(self, image: Any, target: torch.Tensor, **extras: Any):
        raise NotImplementedError

    def forward_test(self, image: torch.Tensor) -> torch.Tensor:
        return self.student(image)[0]

    def held_out_loss(self, image: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The training objective (sum of forward_train's terms) on a held-out batch, in the current mode."""
        return sum(self.forward_train(image, target, epoch=0, index=None)[1].values())

    def forward(self, image: Any, target: torch.Tensor | None = None, **extras: Any):
        if self.training:
            return self.forward_train(image, target, **extras)
        return self.forward_test(image)


def cross_entropy(logits: torch.Tensor, target: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    """Cross-entropy in float32 whatever the autocast dtype of the logits.

    Per-pixel logits (N x C x H x W, targets N x H x W) give the mean over the pixels labelled other
    than IGNORE_INDEX (255), and 0 rather than NaN when a batch has none.
    """
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    if logits.dim() == 4 and not kwargs:
        total = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX, reduction="sum")
        return total / (target != IGNORE_INDEX).sum().clamp_min(1)
    return F.cross_entropy(logits, target, **kwargs)


class FeatureDistiller(Distiller):
    """CE + a weighted feature term: the shape of mdistiller's feature methods (AT, NST, SP, PKT, RKD, KDSVD).

    loss_ce = <GROUP>.LOSS.CE_WEIGHT * CE; loss_feat = <GROUP>.LOSS.FEAT_WEIGHT * feature_loss(student
    feats, teacher feats), the group being the config group named by `group`. A method sets `group`,
    defines `feature_loss` and, for keys of its group other than LOSS.*, `options` (constructor keyword
    arguments). mdistiller names the feature term "loss_kd"; kdlab calls it "loss_feat".
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, ce_weight: float, feat_weight: float) -> None:
        super().__init__(student, teacher)
        self.ce_weight, self.feat_weight = ce_weight, feat_weight

    @classmethod
    def options(cls, node: CfgNode) -> dict:
        """The method's own keys of its config group, as constructor keyword arguments."""
        return {}

    @classmethod
    def from_config(cls, cfg: CfgNode, student: nn.Module, teacher: nn.Module, facts: DatasetFacts) -> Distiller:
        node = cfg[cls.group]
        return cls(student, teacher, ce_weight=node.LOSS.CE_WEIGHT, feat_weight=node.LOSS.FEAT_WEIGHT,
                   **cls.options(node))

    def feature_loss(self, feats_student: dict, feats_teacher: dict) -> torch.Tensor:
        raise NotImplementedError

    def forward_train(self, image: Any, target: torch.Tensor, **extras: Any):
        logits_student, feats_student = self.student(image)
        _, feats_teacher = self.teacher_forward(image)
        return logits_student, {
            "loss_ce": self.ce_weight * cross_entropy(logits_student, target),
            "loss_feat": self.feat_weight * self.feature_loss(feats_student, feats_teacher),
        }
