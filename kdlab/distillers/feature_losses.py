"""Feature and relational distillation losses of mdistiller's methods (PKT, RKD, KDSVD, AT, NST, SP, ReviewKD's
HCL), as pure functions computed in float32 (float64 stays float64) even under AMP.

Each value equals the public reference implementation's on the inputs in
shared/reference/golden_losses.json (tests/test_losses.py); the logit losses are in kdlab.distillers.losses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdlab.distillers.losses import _f32

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
