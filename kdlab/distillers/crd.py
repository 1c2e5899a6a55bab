"""CRD: contrastive representation distillation (Tian et al. ICLR 2020), as mdistiller's CRD.

loss_ce = CRD.LOSS.CE_WEIGHT * CE; loss_feat = CRD.LOSS.FEAT_WEIGHT * (NCE_s + NCE_t), where the
pooled features of student and teacher go through linear embedding heads (`embed_s`, `embed_t`:
Linear + L2 normalization, mdistiller's Embed) to CRD.FEAT.DIM, and a memory bank of the training
set (`contrast`: mdistiller's ContrastMemory) scores each sample's embedding against the other
model's bank rows of its positive and of CRD.NCE.K negatives, at temperature CRD.NCE.TEMPERATURE;
after scoring, the rows of the batch's samples move towards the new embeddings with momentum
CRD.NCE.MOMENTUM and are renormalized. mdistiller names the feature term "loss_kd"; kdlab calls it
"loss_feat".

Parameters and buffers have mdistiller's names, order and shapes (embed_s.linear.weight/bias,
embed_t.linear.weight/bias, contrast.params, contrast.memory_v1, contrast.memory_v2), so a
reference CRD checkpoint's distiller state loads by name or order. The bank (memory_v1: student,
memory_v2: teacher, DatasetFacts.num_train x CRD.FEAT.DIM) and `params` ([K, T, Z_s, Z_t,
momentum]; the normalization constants Z are set from the first batch) are buffers: they are in
every checkpoint and restored bit-exactly by --resume.

Contrast indices. mdistiller draws them in its dataset (CIFAR100InstanceSample, per sample with
numpy): column 0 the positive, then K negatives from `cls_negative[target]`, the list of the
samples of every other class (class by class, ascending indices), without replacement unless K
exceeds that list (its ImageNet dataset always draws with replacement); CRD.MODE "exact" takes the
sample itself as positive, "relax" a random sample of its class (negatives as in "exact"). kdlab
draws from exactly that distribution in the distiller, from a per-class table of the training
targets (DatasetFacts.train_targets): a uniform random K-subset of cls_negative (in random order),
or K uniform draws with replacement when K is larger than the list or DATASET.TYPE is imagenet.
The draws run on the training device under a generator seeded from (EXPERIMENT.SEED, epoch, the
batch's sample indices), so a run and a resumed run repeat them exactly, with no dataset class
involved. A caller may pass `contrastive_index` (B x (K+1)) explicitly, as mdistiller's trainer does.

Differences from mdistiller, none of which changes a value in one process: no `.cuda()` (any
device); the heads' input sizes are the models' pooled-feature sizes, probed once at the training
input size in eval mode (mdistiller takes CRD.FEAT.STUDENT_DIM / TEACHER_DIM, which must equal them
there; kdlab warns where they differ, see `pooled_dim`); the contrast runs in float32 under AMP;
the loss is a scalar (mdistiller's has shape [1]); kdlab honours CRD.MODE on ImageNet too
(mdistiller's ImageNet dataset ignores it). Under torchrun every rank holds the same bank: it is
broadcast from rank 0 once, then the indices and embeddings of all ranks are gathered before each
momentum update, and Z is the mean over all ranks' first batches (mdistiller has no DDP; with
DataParallel its bank sees the whole batch, as kdlab's does).
"""

from __future__ import annotations

import logging
import math
from typing import Optional

import torch
import torch.distributed as dist
import torch.nn as nn

from kdlab import distributed as dist_utils
from kdlab.data.sampling import mix_seed
from kdlab.distillers.base import Distiller, cross_entropy
from kdlab.distillers.build import DISTILLERS
from kdlab.distillers.connectors import probe_features
from kdlab.errors import ConfigError

log = logging.getLogger("kdlab")
SEED_TAG = 3  # mix_seed(SEED, epoch, *indices, SEED_TAG): apart from the trainer's other streams
HALF = (torch.float16, torch.bfloat16)


class Embed(nn.Module):
    """mdistiller's Embed: flatten, Linear(dim_in, dim_out), divide by the L2 norm (float32 under AMP)."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.linear(x.reshape(x.shape[0], -1))
        if x.dtype in HALF:
            x = x.float()
        return x.div(x.pow(2).sum(1, keepdim=True).pow(0.5))


def nce_loss(scores: torch.Tensor, num_data: int) -> torch.Tensor:
    """mdistiller's ContrastLoss: NCE with a uniform noise distribution 1/num_data over B x (1+K) scores."""
    eps = 1e-7
    bsz, m = scores.shape[0], scores.size(1) - 1
    pn = 1 / float(num_data)
    p_pos = scores.select(1, 0)
    log_d1 = torch.div(p_pos, p_pos.add(m * pn + eps)).log_()
    p_neg = scores.narrow(1, 1, m)
    log_d0 = torch.div(p_neg.clone().fill_(m * pn), p_neg.add(m * pn + eps)).log_()
    return (-(log_d1.sum(0) + log_d0.view(-1, 1).sum(0)) / bsz).reshape(())


def _gather(t: torch.Tensor) -> torch.Tensor:
    """Concatenate `t` of every rank in rank order (every rank's batch has the same size)."""
    if not dist_utils.is_distributed():
        return t
    parts = [torch.empty_like(t) for _ in range(dist_utils.world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


class ContrastMemory(nn.Module):
    """mdistiller's ContrastMemory: the two banks, the contrast scores and the momentum update."""

    def __init__(self, dim: int, num_data: int, k: int, temperature: float, momentum: float) -> None:
        super().__init__()
        self.k = k
        self.register_buffer("params", torch.tensor([k, temperature, -1, -1, momentum]))
        # mdistiller reads T and the momentum back from this float32 buffer: use the same rounded values
        self.temperature, self.momentum = float(self.params[1]), float(self.params[4])
        stdv = 1.0 / math.sqrt(dim / 3)
        self.register_buffer("memory_v1", torch.rand(num_data, dim).mul_(2 * stdv).add_(-stdv))
        self.register_buffer("memory_v2", torch.rand(num_data, dim).mul_(2 * stdv).add_(-stdv))
        self._rank_synced = False  # under torchrun: the banks are broadcast from rank 0 once, before first use

    def _scores(self, memory: torch.Tensor, v: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        weight = torch.index_select(memory, 0, idx.view(-1)).detach()
        weight = weight.view(v.shape[0], self.k + 1, memory.shape[1])
        return torch.exp(torch.div(torch.bmm(weight, v.view(v.shape[0], -1, 1)), self.temperature))

    def _normalizer(self, slot: int, out: torch.Tensor) -> torch.Tensor:
        """Z = mean score x num_data, fixed by the first batch (all ranks' under torchrun)."""
        with torch.no_grad():
            first = out.mean() * self.memory_v1.shape[0]
            if dist_utils.is_distributed():
                first = dist_utils.all_reduce_sum(first.clone()) / dist_utils.world_size()
            z = torch.where(self.params[slot] < 0, first.to(self.params.dtype), self.params[slot])
            self.params[slot] = z  # no host sync: Z stays on the device
        return z

    @torch.no_grad()
    def _update(self, memory: torch.Tensor, v: torch.Tensor, y: torch.Tensor) -> None:
        pos = torch.index_select(memory, 0, y.view(-1))
        pos.mul_(self.momentum)
        pos.add_(torch.mul(v, 1 - self.momentum))
        memory.index_copy_(0, y, pos.div(pos.pow(2).sum(1, keepdim=True).pow(0.5)))

    def forward(self, v1: torch.Tensor, v2: torch.Tensor, y: torch.Tensor, idx: torch.Tensor):
        if dist_utils.is_distributed() and not self._rank_synced:  # then equal updates keep them equal
            for buf in (self.params, self.memory_v1, self.memory_v2):
                dist.broadcast(buf, src=0)
            self._rank_synced = True
        v1, v2 = v1.to(self.memory_v1.dtype), v2.to(self.memory_v2.dtype)
        with torch.autocast(v1.device.type, enabled=False):
            out_v2 = self._scores(self.memory_v1, v2, idx)
            out_v1 = self._scores(self.memory_v2, v1, idx)
            z_v1 = self._normalizer(2, out_v1)
            z_v2 = self._normalizer(3, out_v2)
            out_v1 = torch.div(out_v1, z_v1).contiguous()
            out_v2 = torch.div(out_v2, z_v2).contiguous()
            y_all = _gather(y)
            self._update(self.memory_v1, _gather(v1.detach()), y_all)
            self._update(self.memory_v2, _gather(v2.detach()), y_all)
        return out_v1, out_v2


def class_table(targets: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(order, start, count): the sample indices sorted by class (stable), each class's offset and size.

    mdistiller's cls_negative[c] is order[:start[c]] followed by order[start[c] + count[c]:].
    """
    targets = torch.as_tensor(targets, dtype=torch.int64).flatten()
    order = torch.sort(targets, stable=True).indices
    count = torch.bincount(targets, minlength=num_classes)
    start = torch.cumsum(count, 0) - count
    return order, start, count


class NegativeSampler(nn.Module):
    """Draws mdistiller's contrast indices (positive, then K negatives of other classes) for a batch.

    Holds the per-class table of the training targets as non-persistent buffers (derived from the
    dataset, so not in checkpoints) on the training device, and CPU copies for sync-free decisions.
    """

    def __init__(self, targets: torch.Tensor, k: int, mode: str = "exact", always_replace: bool = False,
                 seed: int = 0) -> None:
        super().__init__()
        if mode not in ("exact", "relax"):
            raise ConfigError(f"CRD.MODE must be 'exact' or 'relax', got {mode!r}")
        targets = torch.as_tensor(targets, dtype=torch.int64).flatten()
        self.num_data = len(targets)
        order, start, count = class_table(targets, int(targets.max()) + 1)
        if k < 1 or int((self.num_data - count).min()) < 1:
            raise ConfigError(f"CRD.NCE.K must be >= 1 and the training set must hold 2 classes or more (K={k})")
        for name, table in (("sample_class", targets), ("order", order), ("start", start), ("count", count)):
            self.register_buffer(name, table, persistent=False)
        self._class_cpu, self._count_cpu = targets, count  # CPU copies: sampling decisions without a sync
        self.k, self.mode, self.always_replace, self.seed = k, mode, always_replace, seed

    def forward(self, index: torch.Tensor, epoch: int) -> torch.Tensor:
        """B x (1 + K): the positive, then K negatives of other classes (see the module docstring).

        Which rows draw with replacement is decided from CPU copies of the tables (the loader's
        index is on the CPU), so no step waits for the device.
        """
        device = self.order.device
        index = index.cpu()
        g = torch.Generator(device=device).manual_seed(mix_seed(self.seed, epoch, *index.tolist(), SEED_TAG))
        n_neg_cpu = self.num_data - self._count_cpu[self._class_cpu[index]]
        replace = torch.ones_like(n_neg_cpu, dtype=torch.bool) if self.always_replace else n_neg_cpu < self.k
        index = index.to(device)
        cls = self.sample_class[index]
        start, count = self.start[cls], self.count[cls]
        n_neg = self.num_data - count
        if bool(replace.all()):
            pos = self._uniform(g, (len(index), self.k), n_neg)
        else:  # a uniform random K-subset: the K smallest of i.i.d. uniform keys over the row's positions
            keys = torch.rand(len(index), int(n_neg_cpu.max()), generator=g, device=device, dtype=torch.float64)
            keys.masked_fill_(torch.arange(keys.shape[1], device=device) >= n_neg[:, None], 2.0)
            pos = keys.topk(self.k, dim=1, largest=False).indices
            if bool(replace.any()):
                pos = torch.where(replace.to(device)[:, None], self._uniform(g, (len(index), self.k), n_neg), pos)
        negatives = self.order[torch.where(pos < start[:, None], pos, pos + count[:, None])]
        if self.mode == "relax":
            index = self.order[start + self._uniform(g, (len(index),), count)]
        return torch.cat([index[:, None], negatives], dim=1)

    @staticmethod
    def _uniform(g: torch.Generator, shape: tuple, n: torch.Tensor) -> torch.Tensor:
        """Uniform integers in [0, n) (n per row), from float64 uniforms."""
        u = torch.rand(shape, generator=g, device=n.device, dtype=torch.float64)
        n = n.view(-1, *([1] * (len(shape) - 1)))
        return (u * n).floor().long().minimum(n - 1)


def pooled_dim(model: nn.Module, configured: int, key: str, who: str, input_size) -> int:
    """The size of `model`'s pooled feature (probed once in eval mode); a warning if `key` says otherwise.

    mdistiller sizes the heads from the key alone, so in a config that runs there the key equals the
    model's size; it differs only where kdlab's model of that name differs from the reference's (the
    logit-standardization-KD ImageNet "MobileNetV2" is a MobileNetV1-style net of 1024 features, kdlab's
    torchvision mobilenet_v2 has 1280). The head follows the model.
    """
    dim = int(probe_features(model, input_size)["pooled_feat"].flatten(1).shape[1])
    if dim != configured:
        log.warning("%s %d differs from the %s's pooled-feature size %d: its CRD head takes %d inputs",
                    key, configured, who, dim, dim)
    return dim


@DISTILLERS.register("CRD")
class CRD(Distiller):
    paper = "Tian et al., ICLR 2020"
    group = "CRD"
    # bank size; per-class table for the negatives; the input size to probe the pooled-feature sizes at
    dataset_facts = ("num_train", "train_targets", "input_size")

    def __init__(self, student, teacher, *, targets: torch.Tensor, student_dim: int, teacher_dim: int,
                 feat_dim: int, k: int, temperature: float, momentum: float, mode: str = "exact",
                 always_replace: bool = False, seed: int = 0, ce_weight: float = 1.0,
                 feat_weight: float = 0.8) -> None:
        super().__init__(student, teacher)
        self.embed_s = Embed(student_dim, feat_dim)
        self.embed_t = Embed(teacher_dim, feat_dim)
        sampler = NegativeSampler(targets, k, mode, always_replace, seed)
        self.num_data = sampler.num_data
        self.contrast = ContrastMemory(feat_dim, self.num_data, k, temperature, momentum)
        self.sampler = sampler  # after the reference's modules: no parameters, no checkpointed buffers
        self.ce_weight, self.feat_weight = ce_weight, feat_weight

    @classmethod
    def from_config(cls, cfg, student, teacher, facts):
        if len(facts.train_targets) != facts.num_train:
            raise ConfigError(f"CRD: {len(facts.train_targets)} training targets for {facts.num_train} samples")
        node = cfg.CRD
        size = facts.input_size
        return cls(
            student, teacher, targets=facts.train_targets,
            student_dim=pooled_dim(student, node.FEAT.STUDENT_DIM, "CRD.FEAT.STUDENT_DIM", "student", size),
            teacher_dim=pooled_dim(teacher, node.FEAT.TEACHER_DIM, "CRD.FEAT.TEACHER_DIM", "teacher", size),
            feat_dim=node.FEAT.DIM, k=node.NCE.K,
            temperature=node.NCE.TEMPERATURE, momentum=node.NCE.MOMENTUM, mode=node.MODE,
            always_replace=cfg.DATASET.TYPE == "imagenet", seed=cfg.EXPERIMENT.SEED,
            ce_weight=node.LOSS.CE_WEIGHT, feat_weight=node.LOSS.FEAT_WEIGHT,
        )

    def self_synced_buffers(self) -> list[str]:
        """The bank is kept equal on every rank by the gathered update; DDP need not broadcast it."""
        return [n for n, _ in self.named_buffers() if not n.startswith(("student.", "teacher."))]

    # ------------------------------------------------------------------ training
    def forward_train(self, image, target, index: Optional[torch.Tensor] = None,
                      contrastive_index: Optional[torch.Tensor] = None, **extras):
        if index is None:
            raise ValueError("CRD needs each sample's training-set `index` (kdlab's trainer passes it)")
        logits_student, feats_student = self.student(image)
        _, feats_teacher = self.teacher_forward(image)
        f_s, f_t = feats_student["pooled_feat"], feats_teacher["pooled_feat"]
        if contrastive_index is None:
            contrastive_index = self.sampler(index, extras.get("epoch", 0))
        device = self.contrast.memory_v1.device
        out_s, out_t = self.contrast(self.embed_s(f_s), self.embed_t(f_t), index.to(device),
                                     contrastive_index.to(device))
        crd = nce_loss(out_s, self.num_data) + nce_loss(out_t, self.num_data)
        return logits_student, {
            "loss_ce": self.ce_weight * cross_entropy(logits_student, target),
            "loss_feat": self.feat_weight * crd,
        }
