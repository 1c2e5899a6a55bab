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


# ---------------------------------------------------------------- relational feature losses (mdistiller)


def pkt_loss(student_feat: torch.Tensor, teacher_feat: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Probabilistic knowledge transfer (Passalis & Tefas ECCV 2018), as mdistiller's pkt_loss.

    Rows are L2-normalized (norm + eps, NaNs set to 0), cosine similarities mapped to [0, 1] and
    normalized per row into conditional probabilities; the loss is the MEAN over all B x B entries
    of p_t * log((p_t + eps) / (p_s + eps)) (a KL divergence divided by B*B, as the reference has it).
    """
    with torch.autocast(device_type=student_feat.device.type, enabled=False):

        def similarity(f: torch.Tensor) -> torch.Tensor:
            f = f / (torch.sqrt(torch.sum(f**2, dim=1, keepdim=True)) + eps)
            f = f.masked_fill(f != f, 0.0)
            sim = (torch.mm(f, f.transpose(0, 1)) + 1.0) / 2.0
            return sim / torch.sum(sim, dim=1, keepdim=True)

        p_s = similarity(_f32(student_feat))
        p_t = similarity(_f32(teacher_feat).detach())
        return torch.mean(p_t * torch.log((p_t + eps) / (p_s + eps)))


def pairwise_distances(e: torch.Tensor, squared: bool, eps: float) -> torch.Tensor:
    """Euclidean distances between the rows of e (squared if asked), clamped at eps, 0 on the diagonal."""
    e_square = e.pow(2).sum(dim=1)
    prod = e @ e.t()
    res = (e_square.unsqueeze(1) + e_square.unsqueeze(0) - 2 * prod).clamp(min=eps)
    if not squared:
        res = res.sqrt()
    diagonal = torch.eye(len(e), dtype=torch.bool, device=e.device)
    return res.masked_fill(diagonal, 0.0)


def _rkd_angles(e: torch.Tensor) -> torch.Tensor:
    """cos of the angle at each vertex j of every triplet (i, j, k): B*B*B values."""
    diff = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)
    return torch.bmm(diff, diff.transpose(1, 2)).view(-1)


def rkd_terms(
    student_feat: torch.Tensor, teacher_feat: torch.Tensor, squared: bool = False, eps: float = 1e-12
) -> tuple[torch.Tensor, torch.Tensor]:
    """Relational KD's (distance, angle) terms, unweighted (Park et al. CVPR 2019; mdistiller's rkd_loss).

    distance: smooth-L1 between the pairwise-distance matrices, each divided by the mean of its
    positive entries; angle: smooth-L1 between the B^3 triplet-angle cosines. Features are flattened per sample.
    """
    with torch.autocast(device_type=student_feat.device.type, enabled=False):
        stu = _f32(student_feat).reshape(student_feat.shape[0], -1)
        tea = _f32(teacher_feat).detach().reshape(teacher_feat.shape[0], -1)
        t_d = pairwise_distances(tea, squared, eps)
        t_d = t_d / t_d[t_d > 0].mean()
        d = pairwise_distances(stu, squared, eps)
        d = d / d[d > 0].mean()
        loss_d = F.smooth_l1_loss(d, t_d)
        loss_a = F.smooth_l1_loss(_rkd_angles(stu), _rkd_angles(tea))
        return loss_d, loss_a


def rkd_loss(
    student_feat: torch.Tensor,
    teacher_feat: torch.Tensor,
    squared: bool = False,
    eps: float = 1e-12,
    distance_weight: float = 25.0,
    angle_weight: float = 50.0,
) -> torch.Tensor:
    """distance_weight * RKD-D + angle_weight * RKD-A (see rkd_terms)."""
    loss_d, loss_a = rkd_terms(student_feat, teacher_feat, squared, eps)
    return distance_weight * loss_d + angle_weight * loss_a


def _finite(x: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isfinite(x), x, torch.zeros_like(x))


def feature_svd(feat: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """mdistiller's svd(feat, n) for KDSVD: (s, v), the first n singular values and right singular vectors.

    An N x C x H x W map is viewed as N matrices of (C*H) x W (mdistiller's layout: the columns are
    the W positions, not the channels) and decomposed in float32 whatever its dtype (the reference
    casts with .float()); non-finite entries become 0, then s and the columns of v are L2-normalized.
    """
    size = feat.shape
    if len(size) != 4:
        raise ValueError(f"KDSVD needs N x C x H x W feature maps, got shape {tuple(size)}")
    x = feat.reshape(size[0], size[1] * size[2], size[3]).float()
    _, s, vh = torch.linalg.svd(x, full_matrices=False)
    s, v = _finite(s), _finite(vh.mH)
    return F.normalize(s[:, :n], dim=1), F.normalize(v[:, :, :n], dim=1)


def _align_signs(v_s: torch.Tensor, v_t: torch.Tensor) -> torch.Tensor:
    """Student singular vectors matched to the teacher's: for each teacher vector, the student vector of
    largest |cosine| (all ties kept), its sign flipped to agree (mdistiller's align_rsv)."""
    cosine = torch.matmul(v_s.transpose(-2, -1), v_t)
    max_abs, _ = torch.max(torch.abs(cosine), 1, keepdim=True)
    mask = torch.where(torch.eq(max_abs, torch.abs(cosine)), torch.sign(cosine), torch.zeros_like(cosine))
    return torch.matmul(v_s, mask)


def kdsvd_loss(student_feats, teacher_feats, k: int) -> torch.Tensor:
    """KD-SVD (Lee et al. ECCV 2018) as mdistiller's kdsvd_loss, in float32.

    Per pair of maps (zipped, so the shorter list decides): the teacher's first k right singular
    vectors, the student's first k+3 aligned to them, both scaled by the teacher's normalized singular
    values; between consecutive pairs, the RBF exp(-(v_i - v_{i-1})^2 / 8) of every pair of rows;
    loss = sum over pairs of sum((rbf_s - rbf_t)^2) (non-finite entries dropped) / batch size.
    """
    pairs = list(zip(student_feats, teacher_feats))
    with torch.autocast(device_type=pairs[0][0].device.type, enabled=False):
        total, previous = None, None
        for f_s, f_t in pairs:
            s_t, v_t = feature_svd(f_t.detach(), k)
            _, v_s = feature_svd(f_s, k + 3)
            v_s = _align_signs(v_s, v_t)
            s_t = s_t.unsqueeze(1)
            v_t, v_s = v_t * s_t, v_s * s_t
            if previous is not None:
                v_sb, v_tb = previous
                s_rbf = torch.exp(-(v_s.unsqueeze(2) - v_sb.unsqueeze(1)).pow(2) / 8)
                t_rbf = torch.exp(-(v_t.unsqueeze(2) - v_tb.unsqueeze(1)).pow(2) / 8)
                term = _finite((s_rbf - t_rbf.detach()).pow(2)).sum() / f_s.shape[0]
                total = term if total is None else total + term
            previous = (v_s, v_t)
        if total is None:
            raise ValueError("KDSVD needs at least two pairs of feature maps")
        return total
# ---------------------------------------------------------------- feature-map relations (mdistiller's AT, NST, SP)


def _match_spatial(f_s: torch.Tensor, f_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Average-pool the larger of two maps down to the other's size, compared by height as mdistiller does.

    mdistiller pools to (H, H) (square maps assumed); kdlab pools to the smaller map's (H, W),
    the same for square maps and correct for others.
    """
    s_h, t_h = f_s.shape[2], f_t.shape[2]
    if s_h > t_h:
        f_s = F.adaptive_avg_pool2d(f_s, tuple(f_t.shape[2:]))
    elif s_h < t_h:
        f_t = F.adaptive_avg_pool2d(f_t, tuple(f_s.shape[2:]))
    return f_s, f_t


def _attention_map(feat: torch.Tensor, p: float) -> torch.Tensor:
    return F.normalize(feat.pow(p).mean(1).reshape(feat.size(0), -1))


def at_loss(student_feat: torch.Tensor, teacher_feat: torch.Tensor, p: float) -> torch.Tensor:
    """Attention transfer for one pair of maps (Zagoruyko & Komodakis ICLR 2017), as mdistiller's single_stage_at_loss.

    Attention map = L2-normalized (over positions) channel mean of feat**p; the loss is the mean over
    batch and positions of the squared difference of the two maps (the larger map pooled first).
    """
    with torch.autocast(device_type=student_feat.device.type, enabled=False):
        f_s, f_t = _match_spatial(_f32(student_feat), _f32(teacher_feat).detach())
        return (_attention_map(f_s, p) - _attention_map(f_t, p)).pow(2).mean()


def _poly_kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.unsqueeze(1) * b.unsqueeze(2)).sum(-1).pow(2)


def nst_loss(student_feat: torch.Tensor, teacher_feat: torch.Tensor) -> torch.Tensor:
    """Neuron selectivity transfer for one pair of maps (Huang & Wang 2017), as mdistiller's single_stage_nst_loss.

    Squared MMD with the polynomial kernel k(x, y) = (x.y)^2 between the channels of the two maps,
    each channel's spatial activations L2-normalized (the larger map pooled first):
    mean k(t, t) + mean k(s, s) - 2 mean k(s, t), each mean over the batch and channel pairs.
    """
    with torch.autocast(device_type=student_feat.device.type, enabled=False):
        f_s, f_t = _match_spatial(_f32(student_feat), _f32(teacher_feat).detach())
        f_s = F.normalize(f_s.reshape(f_s.shape[0], f_s.shape[1], -1), dim=2)
        f_t = F.normalize(f_t.reshape(f_t.shape[0], f_t.shape[1], -1), dim=2)
        return (
            _poly_kernel(f_t, f_t).mean().detach()
            + _poly_kernel(f_s, f_s).mean()
            - 2 * _poly_kernel(f_s, f_t).mean()
        )


def sp_loss(student_feat: torch.Tensor, teacher_feat: torch.Tensor) -> torch.Tensor:
    """Similarity-preserving loss (Tung & Mori ICCV 2019), as mdistiller's similarity_loss.

    G = row-L2-normalized B x B Gram matrix of the flattened features; the loss is
    sum((G_t - G_s)^2) / B^2. mdistiller returns a 1-element tensor; this returns the same value as a scalar.
    """
    with torch.autocast(device_type=student_feat.device.type, enabled=False):
        bsz = student_feat.shape[0]
        f_s = _f32(student_feat).reshape(bsz, -1)
        f_t = _f32(teacher_feat).detach().reshape(bsz, -1)
        g_s = F.normalize(torch.mm(f_s, torch.t(f_s)))
        g_t = F.normalize(torch.mm(f_t, torch.t(f_t)))
        g_diff = g_t - g_s
        return (g_diff * g_diff).view(-1, 1).sum(0).sum() / (bsz * bsz)


# ---------------------------------------------------------------- ReviewKD (mdistiller)


def hcl_loss(student_feats, teacher_feats) -> torch.Tensor:
    """ReviewKD's hierarchical context loss (Chen et al. CVPR 2021), as mdistiller's hcl_loss.

    Summed over the pairs of N x C x H x W maps: (MSE + sum_k 2^-k MSE(pool_k(s), pool_k(t))) / (1 + sum_k 2^-k),
    pool_k the adaptive average pooling to l x l for the levels l = 4, 2, 1 that are smaller than H, k counting
    the levels taken (so a 2 x 2 map pools to 1 x 1 with weight 1/2). The teacher maps are detached.
    """
    with torch.autocast(device_type=student_feats[0].device.type, enabled=False):
        loss_all = 0.0
        for f_s, f_t in zip(student_feats, teacher_feats):
            f_s, f_t = _f32(f_s), _f32(f_t).detach()
            loss = F.mse_loss(f_s, f_t, reduction="mean")
            cnt, tot = 1.0, 1.0
            for level in (4, 2, 1):
                if level >= f_s.shape[2]:
                    continue
                cnt /= 2.0
                pooled_s = F.adaptive_avg_pool2d(f_s, (level, level))
                pooled_t = F.adaptive_avg_pool2d(f_t, (level, level))
                loss = loss + F.mse_loss(pooled_s, pooled_t, reduction="mean") * cnt
                tot += cnt
            loss_all = loss_all + loss / tot
        return loss_all
