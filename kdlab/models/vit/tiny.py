"""DeiT-Tiny, T2T-ViT-7, PiT-Tiny and PVT-Tiny as the tiny-transformers code of the logit-standardization
repo (pycls-based, `configs/{deit,t2t,pit,pvt}/*_c100_*.yaml`) builds them for CIFAR-100 at 224x224.

Registered names and their reference configs (img_size 224 unless `img_size` is given, drop-path 0.1 there):

- `deit_tiny`: timm's VisionTransformer (patch 16, width 192, depth 12, 3 heads, MLP ratio 4, qkv bias,
  LayerNorm eps 1e-6). `distilled=True` gives timm's VisionTransformerDistilled: a distillation token and
  a second head, as the reference adds when `DISTILLATION.ENABLE_LOGIT` is on. Both heads start at zero
  as in the reference (timm initializes them with a truncated normal).
- `pit_tiny`: timm's PoolingVisionTransformer (patch 16, stride 8, widths 64/128/256, depths 2/6/4,
  heads 2/4/8, MLP ratio 4). The drop-path rate of block i of all 12 is rate * i / 12 as the reference
  sets it (timm spreads it linearly to `rate` itself); set after building.
- `t2t_vit_7`: not in timm; ported from the reference (tokens-to-token module with two Performer layers,
  token width 64, kernels 7/3/3, strides 4/2/2, then 7 timm Blocks of width 256, 4 heads, MLP ratio 2,
  no qkv bias, fixed sinusoidal position embedding). The tokens-to-token module keeps the reference's
  parameter names but for its attention's qkv / proj (the reference's qkv_transform / projection); the
  blocks are timm's (blocks.i, the reference's layers.i). The reference's Performer casts its input to
  float32 (`x.float()`) before the random-feature map; here it is cast to the dtype of the fixed
  projection `w` instead: the same under AMP, and float64 stays float64.
- `pvt_tiny`: PVT v1 is not in timm (only PVT v2, whose overlapping patch embedding and convolutional MLP
  differ); ported from the reference (patch sizes 4/2/2/2, widths 64/128/320/512, 2 blocks per stage,
  heads 1/2/5/8, MLP ratios 8/8/4/4, spatial-reduction ratios 8/4/2/1, a class token in the last stage)
  with timm's Mlp and DropPath. Its parameter names are the reference's.

Given the same weights, each gives the reference's logits and block maps in float64 (tests/test_vit.py; the
name mapping from the reference's state dicts is tests/reference/vit_step.py's reference_to_kdlab).

forward(x) returns (logits, feats): feats["feats"] (and "preact_feats", the same list) holds the patch
tokens of every transformer block as (N, C, h, w) maps, the reference's `features` that its locality
guidance (`INTER_STUDENT_INDEX`) indexes; feats["pooled_feat"] is the normalized class token. A
distilled DeiT adds feats["distill_logits"] (the distillation head) and, in eval mode, returns the mean
of its two heads as the logits, as the reference does. Inputs must have the size the model was built for.
"""

from __future__ import annotations

import math
from functools import partial

import numpy as np
import torch
import torch.nn as nn
from timm.layers import DropPath, Mlp, trunc_normal_
from timm.models.deit import VisionTransformerDistilled
from timm.models.pit import PoolingVisionTransformer
from timm.models.vision_transformer import Block, VisionTransformer

from kdlab.models.build import MODELS

LayerNorm = partial(nn.LayerNorm, eps=1e-6)  # the reference's TRANSFORMER.LN_EPS


def token_map(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(N, h*w, C) patch tokens -> (N, C, h, w)."""
    return tokens.transpose(1, 2).reshape(tokens.size(0), -1, h, w)


def _pack(logits, maps, pooled, **extra):
    return logits, {"feats": maps, "preact_feats": maps, "pooled_feat": pooled, **extra}


class _DeiTForward:
    """forward() shared by the plain and the distilled DeiT (timm classes)."""

    def forward(self, x):
        x = self.norm_pre(self.patch_drop(self._pos_embed(self.patch_embed(x))))
        prefix, (h, w) = self.num_prefix_tokens, self.patch_embed.grid_size
        maps = []
        for blk in self.blocks:
            x = blk(x)
            maps.append(token_map(x[:, prefix:], h, w))
        x = self.norm(x)
        logits = self.head(x[:, 0])
        if prefix == 1:
            return _pack(logits, maps, x[:, 0])
        distill_logits = self.head_dist(x[:, 1])
        if not self.training:
            logits = (logits + distill_logits) / 2
        return _pack(logits, maps, x[:, 0], distill_logits=distill_logits)


class DeiT(_DeiTForward, VisionTransformer):
    pass


class DeiTDistilled(_DeiTForward, VisionTransformerDistilled):
    pass


@MODELS.register("deit_tiny")
def deit_tiny(num_classes: int = 100, img_size: int = 224, drop_path_rate: float = 0.1, distilled: bool = False,
              in_channels: int = 3) -> nn.Module:
    model = (DeiTDistilled if distilled else DeiT)(
        img_size=img_size, patch_size=16, in_chans=in_channels, num_classes=num_classes, embed_dim=192, depth=12,
        num_heads=3, mlp_ratio=4.0, qkv_bias=True, drop_path_rate=drop_path_rate)
    for head in (model.head, getattr(model, "head_dist", None)):
        if head is not None:
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
    return model


class PiT(PoolingVisionTransformer):
    def forward(self, x):
        x = self.pos_drop(self.patch_embed(x) + self.pos_embed)
        cls_tokens = self.cls_token.expand(x.shape[0], -1, -1)
        maps = []
        for stage in self.transformers:
            if stage.pool is not None:
                x, cls_tokens = stage.pool(x, cls_tokens)
            n, c, h, w = x.shape
            prefix = cls_tokens.shape[1]
            t = stage.norm(torch.cat((cls_tokens, x.flatten(2).transpose(1, 2)), dim=1))
            for blk in stage.blocks:
                t = blk(t)
                maps.append(token_map(t[:, prefix:], h, w))
            cls_tokens, x = t[:, :prefix], maps[-1]
        pooled = self.norm(cls_tokens)[:, 0]
        return _pack(self.head(pooled), maps, pooled)


@MODELS.register("pit_tiny")
def pit_tiny(num_classes: int = 100, img_size: int = 224, drop_path_rate: float = 0.1, in_channels: int = 3):
    model = PiT(img_size=img_size, patch_size=16, stride=8, base_dims=(32, 32, 32), depth=(2, 6, 4),
                heads=(2, 4, 8), mlp_ratio=4, in_chans=in_channels, num_classes=num_classes,
                drop_path_rate=drop_path_rate)
    blocks = [blk for stage in model.transformers for blk in stage.blocks]
    for i, blk in enumerate(blocks):  # the reference's rule: rate * i / number of blocks
        rate = drop_path_rate * i / len(blocks)
        blk.drop_path1 = blk.drop_path2 = DropPath(rate) if rate > 0 else nn.Identity()
    return model


class PerformerAttention(nn.Module):
    """The reference's (T2T-ViT's) Performer attention with random features; one head, in -> out width."""

    def __init__(self, in_channels: int, out_channels: int, drop_rate: float = 0.0, kernel_ratio: float = 0.5):
        super().__init__()
        self.out_channels = out_channels
        self.qkv = nn.Linear(in_channels, out_channels * 3)
        self.proj = nn.Linear(out_channels, out_channels)
        self.dropout = nn.Dropout(drop_rate)
        self.m = int(out_channels * kernel_ratio)
        w = nn.init.orthogonal_(torch.randn(self.m, out_channels)) * math.sqrt(self.m)
        self.w = nn.Parameter(w, requires_grad=False)

    def prm_exp(self, x):
        xd = (x * x).sum(dim=-1, keepdim=True).repeat(1, 1, self.m) / 2
        wtx = torch.einsum("bti,mi->btm", x.to(self.w.dtype), self.w)
        return torch.exp(wtx - xd) / math.sqrt(self.m)

    def forward(self, x):
        k, q, v = torch.split(self.qkv(x), self.out_channels, dim=-1)
        kp, qp = self.prm_exp(k), self.prm_exp(q)
        d = torch.einsum("bti,bi->bt", qp, kp.sum(dim=1)).unsqueeze(dim=2)
        kptv = torch.einsum("bin,bim->bnm", v.to(kp.dtype), kp)
        y = torch.einsum("bti,bni->btn", qp, kptv) / (d.repeat(1, 1, self.out_channels) + 1e-8)
        return v + self.dropout(self.proj(y))


class PerformerLayer(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.norm1 = LayerNorm(in_channels)
        self.attn = PerformerAttention(in_channels, out_channels)
        self.norm2 = LayerNorm(out_channels)
        self.mlp = Mlp(out_channels, out_channels, out_channels)  # no dropout, as the reference's T2T layers

    def forward(self, x):
        x = self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class Token2TokenModule(nn.Module):
    def __init__(self, in_channels, out_channels, token_dim=64, kernels=(7, 3, 3), strides=(4, 2, 2),
                 paddings=(2, 1, 1)):
        super().__init__()
        self.soft_split0 = nn.Unfold(kernels[0], stride=strides[0], padding=paddings[0])
        self.soft_split, self.attention = nn.ModuleList(), nn.ModuleList()
        width = in_channels * kernels[0] ** 2
        for k, s, p in zip(kernels[1:], strides[1:], paddings[1:]):
            self.soft_split.append(nn.Unfold(k, stride=s, padding=p))
            self.attention.append(PerformerLayer(width, token_dim))
            width = token_dim * k**2
        self.projection = nn.Linear(width, out_channels)

    def forward(self, x):
        x = self.soft_split0(x).transpose(-1, -2)
        for attention, soft_split in zip(self.attention, self.soft_split):
            x = attention(x)
            side = math.isqrt(x.shape[1])
            x = soft_split(token_map(x, side, side)).transpose(-1, -2)
        return self.projection(x)


def sinusoid_table(n_position: int, dim: int) -> torch.Tensor:
    angles = np.array([[pos / np.power(10000, 2 * (j // 2) / dim) for j in range(dim)] for pos in range(n_position)])
    angles[:, 0::2], angles[:, 1::2] = np.sin(angles[:, 0::2]), np.cos(angles[:, 1::2])
    return torch.tensor(angles, dtype=torch.float32).unsqueeze(0)


class T2TViT(nn.Module):
    def __init__(self, num_classes=100, img_size=224, in_channels=3, dim=256, depth=7, heads=4, mlp_ratio=2.0,
                 drop_path_rate=0.1):
        super().__init__()
        self.t2t_module = Token2TokenModule(in_channels, dim)
        self.side = img_size // 16
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(sinusoid_table(self.side**2 + 1, dim), requires_grad=False)
        dpr = [x.item() for x in torch.linspace(0, drop_path_rate, depth)]
        self.blocks = nn.ModuleList(
            Block(dim, heads, mlp_ratio, qkv_bias=False, drop_path=dpr[i], norm_layer=LayerNorm) for i in range(depth))
        self.norm = LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        nn.init.normal_(self.cls_token, std=0.02)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m):
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = self.t2t_module(x)
        x = torch.cat([self.cls_token.expand(x.size(0), -1, -1), x], dim=1) + self.pos_embed
        maps = []
        for blk in self.blocks:
            x = blk(x)
            maps.append(token_map(x[:, 1:], self.side, self.side))
        x = self.norm(x)
        return _pack(self.head(x[:, 0]), maps, x[:, 0])


@MODELS.register("t2t_vit_7")
def t2t_vit_7(num_classes: int = 100, img_size: int = 224, drop_path_rate: float = 0.1, in_channels: int = 3):
    return T2TViT(num_classes, img_size, in_channels, drop_path_rate=drop_path_rate)


class SRAttention(nn.Module):
    """PVT's spatial-reduction attention (the reference's Attention)."""

    def __init__(self, dim: int, num_heads: int, sr_ratio: int = 1):
        super().__init__()
        self.num_heads, self.scale = num_heads, (dim // num_heads) ** -0.5
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, dim * 2)
        self.proj = nn.Linear(dim, dim)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = LayerNorm(dim)

    def forward(self, x, h, w):
        b, n, c = x.shape
        q = self.q(x).reshape(b, n, self.num_heads, c // self.num_heads).permute(0, 2, 1, 3)
        if self.sr_ratio > 1:
            x = self.norm(self.sr(token_map(x, h, w)).flatten(2).transpose(1, 2))
        k, v = self.kv(x).reshape(b, -1, 2, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class PVTBlock(nn.Module):
    def __init__(self, dim, num_heads, mlp_ratio, drop_path, sr_ratio):
        super().__init__()
        self.norm1 = LayerNorm(dim)
        self.attn = SRAttention(dim, num_heads, sr_ratio)
        self.drop_path_rate = DropPath(drop_path) if drop_path > 0 else nn.Identity()  # the reference's name
        self.norm2 = LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x, h, w):
        x = x + self.drop_path_rate(self.attn(self.norm1(x), h, w))
        return x + self.drop_path_rate(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, in_channels: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)
        self.norm = LayerNorm(dim)

    def forward(self, x):
        x = self.proj(x)
        return self.norm(x.flatten(2).transpose(1, 2)), x.shape[-2:]


class PVT(nn.Module):
    def __init__(self, num_classes=100, img_size=224, in_channels=3, patch_sizes=(4, 2, 2, 2),
                 dims=(64, 128, 320, 512), depths=(2, 2, 2, 2), heads=(1, 2, 5, 8), mlp_ratios=(8, 8, 4, 4),
                 sr_ratios=(8, 4, 2, 1), drop_path_rate=0.1):
        super().__init__()
        self.num_stages = len(dims)
        dpr = [x.item() for x in torch.linspace(0, drop_path_rate, sum(depths))]
        side, cur = img_size, 0
        for i in range(self.num_stages):
            side //= patch_sizes[i]
            tokens = side**2 + (i == self.num_stages - 1)
            setattr(self, f"patch_embed{i + 1}", PatchEmbed(patch_sizes[i], dims[i - 1] if i else in_channels, dims[i]))
            setattr(self, f"pos_embed{i + 1}", nn.Parameter(trunc_normal_(torch.zeros(1, tokens, dims[i]), std=0.02)))
            setattr(self, f"block{i + 1}", nn.ModuleList(
                PVTBlock(dims[i], heads[i], mlp_ratios[i], dpr[cur + j], sr_ratios[i]) for j in range(depths[i])))
            cur += depths[i]
        self.norm = LayerNorm(dims[-1])
        self.cls_token = nn.Parameter(trunc_normal_(torch.zeros(1, 1, dims[-1]), std=0.02))
        self.head = nn.Linear(dims[-1], num_classes)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m):
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, x):
        maps = []
        for i in range(self.num_stages):
            x, (h, w) = getattr(self, f"patch_embed{i + 1}")(x)
            last = i == self.num_stages - 1
            if last:
                x = torch.cat((self.cls_token.expand(x.size(0), -1, -1), x), dim=1)
            x = x + getattr(self, f"pos_embed{i + 1}")
            for blk in getattr(self, f"block{i + 1}"):
                x = blk(x, h, w)
                maps.append(token_map(x[:, int(last):], h, w))
            if not last:
                x = maps[-1]
        x = self.norm(x)
        return _pack(self.head(x[:, 0]), maps, x[:, 0])


@MODELS.register("pvt_tiny")
def pvt_tiny(num_classes: int = 100, img_size: int = 224, drop_path_rate: float = 0.1, in_channels: int = 3):
    return PVT(num_classes, img_size, in_channels, drop_path_rate=drop_path_rate)


__all__ = ["deit_tiny", "pit_tiny", "t2t_vit_7", "pvt_tiny", "token_map"]
