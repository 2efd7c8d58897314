"""A plain ViT (DeiT sizes) as the attention baseline of :mod:`rwkvkit.vision.vrwkv`.

Same skeleton as :class:`~rwkvkit.vision.vrwkv.VisionRWKV` so that only the token mixer differs: conv
patch embedding, learned absolute position embedding (bicubic-resized for other input sizes), no class
token, pre-norm blocks (``F.scaled_dot_product_attention`` + GELU MLP), final LN, mean pool, linear head.
DeiT proper pools a class token; mean pooling here keeps the comparison with VRWKV like for like.

Sizes at 224 x 224, 1000 classes (DeiT with a class token: T 5.7M, S 22.1M, B 86.6M)::

    ViTConfig.preset("T")   5,717,032 parameters (DeiT + class token: 5,717,416)
    ViTConfig.preset("S")  22,049,896
    ViTConfig.preset("B")  86,566,120

:func:`matched_vit` gives the ViT whose parameter count is closest to a VRWKV config's (within 5%).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from rwkvkit.errors import ConfigError
from rwkvkit.vision.vrwkv import (
    VRWKVConfig,
    check_images,
    drop_path,
    resize_pos_embed,
    trunc_normal_init,
    vrwkv_param_count,
)


@dataclass(frozen=True, kw_only=True)
class ViTConfig:
    """Sizes of a :class:`ViT` (defaults: DeiT-T)."""

    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    num_classes: int = 1000  # 0: no head
    embed_dim: int = 192
    depth: int = 12
    num_heads: int = 3
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop_path: float = 0.1  # DeiT's rate for all three sizes; linear from 0 over the depth

    def __post_init__(self) -> None:
        for name in ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads"):
            if getattr(self, name) < 1:
                raise ConfigError(f"ViTConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_classes < 0:
            raise ConfigError(f"ViTConfig.num_classes must be >= 0, got {self.num_classes}")
        if self.img_size % self.patch_size:
            raise ConfigError(
                f"ViTConfig.img_size {self.img_size} is not a multiple of patch_size {self.patch_size}"
            )
        if self.embed_dim % self.num_heads:
            raise ConfigError(
                f"ViTConfig.embed_dim {self.embed_dim} is not a multiple of num_heads {self.num_heads}"
            )
        if int(self.mlp_ratio * self.embed_dim) < 1:
            raise ConfigError(f"ViTConfig.mlp_ratio must be > 0, got {self.mlp_ratio}")
        if not 0.0 <= self.drop_path < 1.0:
            raise ConfigError(f"ViTConfig.drop_path must be in [0, 1), got {self.drop_path}")

    @property
    def grid(self) -> tuple[int, int]:
        return (self.img_size // self.patch_size,) * 2

    def replace(self, **changes) -> ViTConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def preset(cls, name: str, **overrides) -> ViTConfig:
        """DeiT's ``"T"`` (192, 3 heads), ``"S"`` (384, 6) or ``"B"`` (768, 12), with ``overrides``."""
        key = name.upper()
        if key not in PRESETS:
            raise ConfigError(f"unknown ViT preset {name!r}; known: {', '.join(PRESETS)}")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(overrides) - fields
        if unknown:
            raise ConfigError(f"unknown ViTConfig fields {sorted(unknown)}; known: {sorted(fields)}")
        return dataclasses.replace(PRESETS[key], **overrides)


PRESETS: dict[str, ViTConfig] = {
    "T": ViTConfig(embed_dim=192, num_heads=3),
    "S": ViTConfig(embed_dim=384, num_heads=6),
    "B": ViTConfig(embed_dim=768, num_heads=12),
}


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)  # [B, heads, T, C / heads]
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class ViTBlock(nn.Module):
    """Pre-norm: ``x += dp(attn(ln1 x)); x += dp(mlp(ln2 x))``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, drop_path: float):
        super().__init__()
        self.drop_path = drop_path
        self.ln1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.ln2 = nn.LayerNorm(dim)
        hidden = int(mlp_ratio * dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + drop_path(self.attn(self.ln1(x)), self.drop_path, self.training)
        return x + drop_path(self.mlp(self.ln2(x)), self.drop_path, self.training)


class ViT(nn.Module):
    """ViT classifier with the same ``forward_features`` / ``forward_head`` split as VisionRWKV."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.config = c = config
        C = c.embed_dim
        self.patch_embed = nn.Conv2d(c.in_chans, C, kernel_size=c.patch_size, stride=c.patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, c.grid[0] * c.grid[1], C))
        dpr = [c.drop_path * i / max(c.depth - 1, 1) for i in range(c.depth)]
        self.blocks = nn.ModuleList(
            ViTBlock(C, c.num_heads, c.mlp_ratio, c.qkv_bias, dpr[i]) for i in range(c.depth)
        )
        self.norm = nn.LayerNorm(C)
        self.head = nn.Linear(C, c.num_classes) if c.num_classes else nn.Identity()
        trunc_normal_init(self)
        nn.init.trunc_normal_(self.pos_embed, std=0.02, a=-0.04, b=0.04)

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Images ``[B, in_chans, H, W]`` -> (normalised tokens ``[B, T, C]``, grid ``(H/p, W/p)``)."""
        check_images("ViT", x, self.config.in_chans, self.config.patch_size)
        x = self.patch_embed(x)
        hw = (x.shape[2], x.shape[3])
        x = x.flatten(2).transpose(1, 2) + resize_pos_embed(self.pos_embed, self.config.grid, hw)
        for block in self.blocks:
            x = block(x)
        return self.norm(x), hw

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        return self.head(feats.mean(dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x)[0])


def vit_param_count(config: ViTConfig) -> int:
    """Parameters of ``ViT(config)``, by formula (tested against the module)."""
    c = config
    C, Hd = c.embed_dim, int(c.mlp_ratio * c.embed_dim)
    block = 4 * C + 3 * C * C + (3 * C if c.qkv_bias else 0) + C * C + C + 2 * C * Hd + Hd + C
    n = c.in_chans * c.patch_size**2 * C + C + c.grid[0] * c.grid[1] * C  # patch, pos
    return n + c.depth * block + 2 * C + (C + 1) * c.num_classes


def _heads_for(width: int) -> int:
    """Heads of 64 channels where the width allows it, else the largest count <= width / 64 dividing it."""
    h = max(1, round(width / 64))
    while width % h:
        h -= 1
    return h


def matched_vit(vrwkv_config: VRWKVConfig, tol: float = 0.05) -> ViTConfig:
    """The ViT with (nearly) the parameter count of ``VisionRWKV(vrwkv_config)``.

    Same image, patch, channels, classes and drop path; depth and width are searched deterministically:
    among candidates within ``tol`` (relative), the one that changes the width least, then the depth
    least, then is closest in count. Widths are even, from ``C / 2`` to ``2 C`` (heads of ~64 channels,
    :func:`_heads_for`), depths up to twice the VRWKV depth. A VRWKV block has ``13 C^2`` weights
    against a ViT block's ``12 C^2``, so at equal width the ViT usually just gets one more block
    (T, S and B: 13 blocks, within +0.11%).
    """
    v = vrwkv_config
    target = vrwkv_param_count(v)
    base = dict(
        img_size=v.img_size, patch_size=v.patch_size, in_chans=v.in_chans,
        num_classes=v.num_classes, drop_path=v.drop_path,
    )  # fmt: skip
    C, D = v.embed_dim, v.depth
    best, best_key = None, None
    for width in range(max(2, C // 2 - C // 2 % 2), 2 * C + 1, 2):
        for depth in range(1, 2 * D + 1):
            cfg = ViTConfig(embed_dim=width, depth=depth, num_heads=_heads_for(width), **base)
            err = abs(vit_param_count(cfg) - target) / target
            key = (err > tol, abs(width - C), abs(depth - D), err)
            if best_key is None or key < best_key:
                best, best_key = cfg, key
    return best
