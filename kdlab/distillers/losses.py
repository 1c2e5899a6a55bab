"""Distillation losses as pure functions, computed in float32 (float64 stays float64) even under AMP.

Each value equals the public reference implementation's on the inputs in
shared/reference/golden_losses.json (tests/test_losses.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdlab.constants import IGNORE_INDEX


def _f32(x: torch.Tensor) -> torch.Tensor:
    """Upcast half/bfloat16 to float32; keep float32/float64 as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def standardize(logits: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Z-score logits per sample over classes: (z - mean) / (eps + std), std unbiased (Sun et al. CVPR 2024)."""
    logits = _f32(logits)
    mean = logits.mean(dim=-1, keepdim=True)
    std = logits.std(dim=-1, keepdim=True)
    return (logits - mean) / (eps + std)


def kd_loss(
    logits_student: torch.Tensor,
    logits_teacher: torch.Tensor,
    temperature: float,
    logit_stand: bool = False,
) -> torch.Tensor:
    """Hinton KD: T^2 * mean_b KL(softmax(t/T) || softmax(s/T)); logits standardized first if asked."""
    with torch.autocast(device_type=logits_student.device.type, enabled=False):
        s, t = _f32(logits_student), _f32(logits_teacher).detach()
        if logit_stand:
            s, t = standardize(s), standardize(t)
        log_p_s = F.log_softmax(s / temperature, dim=1)
        log_p_t = F.log_softmax(t / temperature, dim=1)
        kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(1).mean()
        return kl * temperature**2


def _gt_mask(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(logits, dtype=torch.bool).scatter_(
        1, target.reshape(-1, 1), True
    )


def dkd_terms(
    logits_student: torch.Tensor,
    logits_teacher: torch.Tensor,
    target: torch.Tensor,
    temperature: float | torch.Tensor,
    logit_stand: bool = False,
    zero_safe: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """DKD's (TCKD, NCKD), each T^2 * sum-reduced KL / batch size, unweighted (Zhao et al. CVPR 2022).

    temperature may be a tensor that takes a gradient (CTKD). zero_safe: NCKD's teacher term is taken as
    exp(log_softmax) rather than through F.kl_div's target: the target class gets ~exp(-1000) = 0 there,
    and torch >= 2.1's kl_div gives a zero target a NaN gradient (0 * log 0), which would reach a learned
    temperature; torch <= 2.0 masked it to 0, and so does this form.
    """
    with torch.autocast(device_type=logits_student.device.type, enabled=False):
        s, t = _f32(logits_student), _f32(logits_teacher).detach()
        if isinstance(temperature, torch.Tensor):
            temperature = _f32(temperature)
        if logit_stand:
            s, t = standardize(s), standardize(t)
        gt = _gt_mask(s, target)
        batch = target.shape[0]
        p_s, p_t = F.softmax(s / temperature, dim=1), F.softmax(t / temperature, dim=1)
        # Binary (target, all others) probabilities; log of the summed probabilities as the reference does.
        b_s = torch.stack([(p_s * gt).sum(1), (p_s * ~gt).sum(1)], dim=1)
        b_t = torch.stack([(p_t * gt).sum(1), (p_t * ~gt).sum(1)], dim=1)
        tckd = F.kl_div(torch.log(b_s), b_t, reduction="sum") * temperature**2 / batch
        # The target class is suppressed by subtracting 1000 from z/T, not removed: its ~0 mass stays in.
        log_q_s = F.log_softmax(s / temperature - 1000.0 * gt, dim=1)
        if zero_safe:
            log_q_t = F.log_softmax(t / temperature - 1000.0 * gt, dim=1)
            nckd = (log_q_t.exp() * (log_q_t - log_q_s)).sum() * temperature**2 / batch
        else:
            q_t = F.softmax(t / temperature - 1000.0 * gt, dim=1)
            nckd = F.kl_div(log_q_s, q_t, reduction="sum") * temperature**2 / batch
        return tckd, nckd


def dkd_loss(
    logits_student: torch.Tensor,
    logits_teacher: torch.Tensor,
    target: torch.Tensor,
    alpha: float,
    beta: float,
    temperature: float,
    logit_stand: bool = False,
) -> torch.Tensor:
    """Decoupled KD: alpha * TCKD + beta * NCKD, T^2 inside (LS repo's DKD.py dkd_loss)."""
    tckd, nckd = dkd_terms(
        logits_student, logits_teacher, target, temperature, logit_stand
    )
    return alpha * tckd + beta * nckd


def _gram_loss(
    s: torch.Tensor, t: torch.Tensor, temperature: float, over_classes: bool
) -> torch.Tensor:
    with torch.autocast(device_type=s.device.type, enabled=False):
        p_s = F.softmax(_f32(s) / temperature, dim=1)
        p_t = F.softmax(_f32(t).detach() / temperature, dim=1)
        if over_classes:
            g_s, g_t, n = p_s.T @ p_s, p_t.T @ p_t, p_s.shape[1]
        else:
            g_s, g_t, n = p_s @ p_s.T, p_t @ p_t.T, p_s.shape[0]
        return ((g_t - g_s) ** 2).sum() / n


def cc_loss(
    logits_student: torch.Tensor, logits_teacher: torch.Tensor, temperature: float
) -> torch.Tensor:
    """MLKD class correlation: sum((P_t^T P_t - P_s^T P_s)^2) / C, P = softmax(z/T); no T^2 (Jin et al. ICCV 2023)."""
    return _gram_loss(logits_student, logits_teacher, temperature, over_classes=True)


def bc_loss(
    logits_student: torch.Tensor, logits_teacher: torch.Tensor, temperature: float
) -> torch.Tensor:
    """MLKD batch correlation: sum((P_t P_t^T - P_s P_s^T)^2) / B, P = softmax(z/T); no T^2."""
    return _gram_loss(logits_student, logits_teacher, temperature, over_classes=False)


# MLKD's extra temperatures after the configured one (the reference hard-codes them).
MLKD_EXTRA_TEMPERATURES = (3.0, 5.0, 2.0, 6.0)


def mlkd_losses(
    student_weak: torch.Tensor,
    student_strong: torch.Tensor,
    teacher_weak: torch.Tensor,
    teacher_strong: torch.Tensor,
    target: torch.Tensor,
    temperature: float,
    ce_weight: float,
    kd_weight: float,
    logit_stand: bool = False,
) -> dict[str, torch.Tensor]:
    """Multi-level logit distillation (Jin et al. ICCV 2023) exactly as the LS repo's MLKD.forward_train.

    Reference quirks kept on purpose (each changes the numbers):
    1. Temperatures are [temperature, 3, 5, 2, 6]; with temperature 2 the T=2 terms count twice.
    2. Masks come from the teacher's weak-view softmax at T=1 of the RAW (never standardized) logits:
       sample mask = max-prob <= median, class mask = column sum <= median (np.percentile 50,
       linear interpolation, = torch.quantile). "<=" keeps the LESS confident half.
    3. The masks only scale: every term is already a scalar, so `(loss * mask).mean()` is
       loss * mask.float().mean() (the kept fraction), not a per-sample selection. That fraction
       depends only on ties at the median: 1/2 for an even count of distinct values.
    4. loss_kd = kd_weight * sum_T kd(weak, T) * mean(mask)   (masked weak terms)
               + kd_weight * [kd(strong, T), kd(strong, 3), kd(strong, 5), kd(WEAK, 2), kd(WEAK, 6)]
       (unmasked; the last two use the weak views again, a copy-paste in the reference).
    5. loss_cc / loss_bc are the weak-view terms only (cc scaled by the class mask, bc by the sample
       mask); the reference computes strong-view cc/bc sums and drops them, so they are not computed here.
    6. logit_stand standardizes only the kd terms; cc, bc, CE and the masks use raw logits.
    7. loss_ce = ce_weight * (CE(student_weak) + CE(student_strong)), both mean-reduced.
    """
    with torch.autocast(device_type=student_weak.device.type, enabled=False):
        s_w, s_s = _f32(student_weak), _f32(student_strong)
        t_w, t_s = _f32(teacher_weak).detach(), _f32(teacher_strong).detach()
        temps = (float(temperature), *MLKD_EXTRA_TEMPERATURES)

        p_t_w = F.softmax(t_w, dim=1)
        confidence = p_t_w.max(dim=1).values
        sample_kept = (
            (confidence <= torch.quantile(confidence, 0.5)).to(s_w.dtype).mean()
        )
        class_confidence = p_t_w.sum(dim=0)
        class_kept = (
            (class_confidence <= torch.quantile(class_confidence, 0.5))
            .to(s_w.dtype)
            .mean()
        )

        strong_views = [(s_s, t_s)] * 3 + [(s_w, t_w)] * 2  # quirk 4
        kd_weak = sum(kd_loss(s_w, t_w, T, logit_stand) for T in temps) * sample_kept
        kd_strong = sum(
            kd_loss(s, t, T, logit_stand) for T, (s, t) in zip(temps, strong_views)
        )
        return {
            "loss_ce": ce_weight
            * (F.cross_entropy(s_w, target) + F.cross_entropy(s_s, target)),
            "loss_kd": kd_weight * (kd_weak + kd_strong),
            "loss_cc": kd_weight
            * sum(cc_loss(s_w, t_w, T) for T in temps)
            * class_kept,
            "loss_bc": kd_weight
            * sum(bc_loss(s_w, t_w, T) for T in temps)
            * sample_kept,
        }


SUPCON_VARIANTS = ("khosla", "seed", "two_view")


def supcon_loss(
    features: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 0.07,
    variant: str = "khosla",
) -> torch.Tensor:
    """Supervised contrastive loss on one view (Khosla et al. NeurIPS 2020, L_out); features L2-normalized inside.

    variant="khosla": positives are same-label samples other than the anchor, the denominator sums over
    every other sample, and the mean runs over anchors with at least one positive (0 if none has one).
    variant="seed": the ConKD seed README's form, where the positive set also holds the anchor itself, whose
    term is -log sum_{j != i} exp(z_ij - max_j z_ij); that term can make the loss negative.
    variant="two_view": what the ConKD seed's notebooks run: the official two-view SupConLoss (contrast_mode
    "all") fed two identical copies of each embedding, i.e. "khosla" on the batch stacked twice, where each
    anchor's copy is one of its positives (at temperature 0.07 the official base-temperature factor is 1).
    """
    if variant not in SUPCON_VARIANTS:
        raise ValueError(
            f"supcon_loss variant must be one of {', '.join(SUPCON_VARIANTS)}, got {variant!r}"
        )
    if variant == "two_view":
        return supcon_loss(torch.cat([features, features]), torch.cat([labels, labels]), temperature, "khosla")
    with torch.autocast(device_type=features.device.type, enabled=False):
        f = F.normalize(_f32(features), dim=1)
        logits = f @ f.T / temperature
        logits = logits - logits.max(dim=1, keepdim=True).values.detach()
        n = f.shape[0]
        self_mask = torch.eye(n, dtype=torch.bool, device=f.device)
        log_denom = torch.logsumexp(
            logits.masked_fill(self_mask, float("-inf")), dim=1, keepdim=True
        )
        log_prob = logits - log_denom
        positives = labels.reshape(-1, 1) == labels.reshape(1, -1)
        if variant == "khosla":
            positives = positives & ~self_mask
        n_pos = positives.sum(1)
        mean_log_prob_pos = log_prob.masked_fill(~positives, 0.0).sum(1) / n_pos.clamp(
            min=1
        )
        has_pos = n_pos > 0
        if not bool(has_pos.any()):
            return (
                f.sum() * 0.0
            )  # keeps the graph; log_prob may hold inf for a batch of 1
        # No base-temperature rescaling: the official SupConLoss multiplies by temperature / 0.07,
        # which is 1 only at the default temperature.
        return -mean_log_prob_pos[has_pos].mean()


def feature_mse_loss(
    student_feat: torch.Tensor, teacher_feat: torch.Tensor
) -> torch.Tensor:
    """FitNet hint loss: mean squared error between (regressed) student and teacher features (Romero et al. 2015)."""
    with torch.autocast(device_type=student_feat.device.type, enabled=False):
        return F.mse_loss(_f32(student_feat), _f32(teacher_feat).detach())


def feature_cosine_loss(student_feat: torch.Tensor, teacher_feat: torch.Tensor) -> torch.Tensor:
    """1 - cosine similarity over the channel (dim 1) of vectors N x D or maps N x C x H x W, averaged over the
    batch (and the positions of a map), as the Elec475 VOC seed's feature KD."""
    with torch.autocast(device_type=student_feat.device.type, enabled=False):
        cos = F.cosine_similarity(_f32(student_feat), _f32(teacher_feat).detach(), dim=1)
        return (1 - cos).mean()


FEATURE_LOSSES = {"mse": feature_mse_loss, "cosine": feature_cosine_loss}

# ---------------------------------------------------------------- dense (per-pixel) prediction

PIXEL_MODES = ("labelled", "all")


def flatten_pixels(
    logits: torch.Tensor, target: torch.Tensor | None = None, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """N x C x H x W logits -> (pixels, C) rows, one per pixel whose target is not ignore_index (all without target)."""
    rows = logits.movedim(1, -1).reshape(-1, logits.shape[1])
    if target is None:
        return rows
    return rows[target.reshape(-1) != ignore_index]


def pixel_kd_loss(
    logits_student: torch.Tensor,
    logits_teacher: torch.Tensor,
    target: torch.Tensor | None,
    temperature: float,
    logit_stand: bool = False,
    ignore_index: int = IGNORE_INDEX,
    pixels: str = "labelled",
) -> torch.Tensor:
    """kd_loss applied per pixel, each pixel's C logits standardized on their own when logit_stand is set.

    pixels "labelled": the mean over labelled pixels (target != ignore_index) of each pixel's T^2 * KL
    (0 if none is labelled). pixels "all": the sum over every pixel, ignored ones too, divided by the batch
    size N -- KLDivLoss(reduction="batchmean") on N x C x H x W, as the Elec475 VOC seed (H * W times the mean).
    """
    if pixels == "all":
        n, hw = logits_student.shape[0], logits_student.shape[2] * logits_student.shape[3]
        return kd_loss(flatten_pixels(logits_student), flatten_pixels(logits_teacher), temperature,
                       logit_stand) * hw if n else logits_student.sum() * 0.0
    if pixels != "labelled":
        raise ValueError(f"pixels must be one of {PIXEL_MODES}, got {pixels!r}")
    s = flatten_pixels(logits_student, target, ignore_index)
    if s.shape[0] == 0:
        return logits_student.sum() * 0.0
    t = flatten_pixels(logits_teacher, target, ignore_index)
    return kd_loss(s, t, temperature, logit_stand)


def kd_loss_any(
    logits_student: torch.Tensor,
    logits_teacher: torch.Tensor,
    target: torch.Tensor | None,
    temperature: float,
    logit_stand: bool = False,
    pixels: str = "labelled",
) -> torch.Tensor:
    """kd_loss for N x C logits, pixel_kd_loss (over `pixels`) for N x C x H x W ones (segmentation)."""
    if logits_student.dim() == 4:
        return pixel_kd_loss(logits_student, logits_teacher, target, temperature, logit_stand, pixels=pixels)
    return kd_loss(logits_student, logits_teacher, temperature, logit_stand)
