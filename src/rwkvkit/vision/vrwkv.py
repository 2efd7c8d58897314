"""Vision-RWKV (VRWKV): "Efficient and Scalable Visual Perception with RWKV-Like Architectures".

Peng, Duan et al., ICLR 2025, arXiv 2403.02308; reference code OpenGVLab/Vision-RWKV
(``classification/mmcls_custom/models/backbones/vrwkv.py``). A ViT-shaped classifier whose attention is
replaced by RWKV's linear-time mixing, made two-dimensional:

- **patch embedding**: a ``p x p`` stride-``p`` conv, a learned absolute position embedding (resized
  bicubically when the input grid differs from the one it was made for), no class token;
- **blocks** (:class:`VRWKVBlock`): a spatial mix (Q-Shift, then ``sigma(r) * BiWKV(k, v)``,
  :func:`rwkvkit.ops.biwkv`) and a channel mix (Q-Shift, then ``sigma(W_r x) * W_v relu(W_k x)^2``), each
  a residual branch, pre-norm (T) or post-norm (S, B), optional layer scale and drop path;
- ``ln0`` before the first block, a final LN, global average pooling and a linear head.

Parameter names follow the reference code (``att.spatial_decay``, ``ffn.key``, ``ln1``, ``gamma1`` ...);
the per-channel vectors are ``[C]`` instead of its ``[1, 1, C]``.

Sizes at 224 x 224, 1000 classes (paper: T 6.2M, S 23.8M, B 93.7M)::

    VRWKVConfig.preset("T")   6,155,176 parameters
    VRWKVConfig.preset("S")  23,820,136
    VRWKVConfig.preset("B")  93,645,544
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from rwkvkit.errors import ConfigError, InputError
from rwkvkit.ops.biwkv import biwkv, qshift


@dataclass(frozen=True, kw_only=True)
class VRWKVConfig:
    """Sizes and options of a :class:`VisionRWKV` classifier (defaults: VRWKV-T)."""

    img_size: int = 224  # the square input the position embedding is made for
    patch_size: int = 16
    in_chans: int = 3
    num_classes: int = 1000  # 0: no head (forward returns pooled features)
    embed_dim: int = 192  # C
    depth: int = 12
    hidden_ratio: float = 4  # channel-mix width = int(hidden_ratio * C)
    post_norm: bool = False  # x + LN(f(x)) instead of x + f(LN(x))
    layer_scale_init: float | None = None  # None: no layer scale
    drop_path: float = 0.0  # rate of the last block; linear from 0 over the depth
    key_norm: bool = False  # LN on the WKV output and on the channel-mix hidden (for scaling up)
    qshift: bool = True  # False: the "no Q-Shift" ablation (no mixing of neighbour pixels)
    bidirectional: bool = True  # False: causal WKV over the raster order (the one-way ablation)

    def __post_init__(self) -> None:
        for name in ("img_size", "patch_size", "in_chans", "embed_dim", "depth"):
            if getattr(self, name) < 1:
                raise ConfigError(f"VRWKVConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_classes < 0:
            raise ConfigError(f"VRWKVConfig.num_classes must be >= 0, got {self.num_classes}")
        if self.img_size % self.patch_size:
            raise ConfigError(
                f"VRWKVConfig.img_size {self.img_size} is not a multiple of patch_size {self.patch_size}"
            )
        if int(self.hidden_ratio * self.embed_dim) < 1:
            raise ConfigError(f"VRWKVConfig.hidden_ratio must be > 0, got {self.hidden_ratio}")
        if not 0.0 <= self.drop_path < 1.0:
            raise ConfigError(f"VRWKVConfig.drop_path must be in [0, 1), got {self.drop_path}")

    @property
    def grid(self) -> tuple[int, int]:
        """``(H, W)`` of the patch grid at ``img_size``."""
        return (self.img_size // self.patch_size,) * 2

    def replace(self, **changes) -> VRWKVConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def preset(cls, name: str, **overrides) -> VRWKVConfig:
        """The paper's ``"T"``, ``"S"`` or ``"B"`` (depth 12, patch 16, 224), with ``overrides`` applied."""
        key = name.upper()
        if key not in PRESETS:
            raise ConfigError(f"unknown VRWKV preset {name!r}; known: {', '.join(PRESETS)}")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(overrides) - fields
        if unknown:
            raise ConfigError(f"unknown VRWKVConfig fields {sorted(unknown)}; known: {sorted(fields)}")
        return dataclasses.replace(PRESETS[key], **overrides)


# The paper's table (docs/seed-systems.md#vision-rwkv-configs; configs vrwkv_{tiny,small,base}_*.py).
PRESETS: dict[str, VRWKVConfig] = {
    "T": VRWKVConfig(embed_dim=192),
    "S": VRWKVConfig(embed_dim=384, post_norm=True, layer_scale_init=1.0, drop_path=0.3),
    "B": VRWKVConfig(embed_dim=768, post_norm=True, layer_scale_init=1e-5, drop_path=0.5),
}


# ---- shared pieces (also used by rwkvkit.vision.vit) ----------------------------------------------


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth: drop the whole residual branch per sample with probability ``p``."""
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
    return x * mask / keep


def resize_pos_embed(pos: torch.Tensor, src: tuple[int, int], dst: tuple[int, int]) -> torch.Tensor:
    """``[1, H0*W0, C]`` position embedding -> ``[1, H*W, C]``, bicubic (as the reference code)."""
    if tuple(src) == tuple(dst):
        return pos
    C = pos.shape[-1]
    grid = pos.reshape(1, src[0], src[1], C).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=dst, mode="bicubic", align_corners=False)
    return grid.permute(0, 2, 3, 1).reshape(1, dst[0] * dst[1], C)


def check_images(op: str, x: torch.Tensor, in_chans: int, patch_size: int) -> None:
    if x.dim() != 4 or x.shape[1] != in_chans:
        raise InputError(f"{op}: expected images [B, {in_chans}, H, W], got shape {tuple(x.shape)}")
    if x.shape[2] < patch_size or x.shape[3] < patch_size:
        raise InputError(f"{op}: images {tuple(x.shape[2:])} are smaller than one {patch_size}px patch")


def trunc_normal_init(module: nn.Module, std: float = 0.02) -> None:
    """Linear weights ~ truncated normal (std 0.02, cut at 2 std), biases 0; LayerNorm 1 / 0."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=std, a=-2 * std, b=2 * std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# ---- blocks ----------------------------------------------------------------------------------------


def _lerp(x: torch.Tensor, xx: torch.Tensor | None, mu: torch.Tensor | None) -> torch.Tensor:
    """``mu * x + (1 - mu) * xx`` (the token-shift mix); ``x`` itself when Q-Shift is off."""
    return x if xx is None else xx + mu * (x - xx)


class SpatialMix(nn.Module):
    """``W_o(sigma(W_r x_r) * [LN] BiWKV(w, u, W_k x_k, W_v x_v))`` with Q-Shift lerps for r, k, v."""

    def __init__(
        self, dim: int, layer_id: int, n_layer: int, *, key_norm: bool, qshift: bool, bidirectional: bool
    ):
        super().__init__()
        self.qshift, self.bidirectional = qshift, bidirectional
        # "fancy" init (docs/seed-systems.md#vision-rwkv): ratios over the depth
        r01 = layer_id / max(n_layer - 1, 1)  # 0 -> 1
        r10 = 1.0 - layer_id / n_layer  # 1 -> ~0
        h = torch.arange(dim, dtype=torch.float64) / max(dim - 1, 1)
        self.spatial_decay = nn.Parameter((-5 + 8 * h ** (0.7 + 1.3 * r01)).float())
        zigzag = 0.5 * ((torch.arange(dim) + 1) % 3 - 1).double()
        self.spatial_first = nn.Parameter((math.log(0.3) + zigzag).float())
        x = torch.arange(dim, dtype=torch.float64) / dim
        if qshift:
            self.spatial_mix_k = nn.Parameter((x**r10).float())
            self.spatial_mix_v = nn.Parameter((x**r10 + 0.3 * r01).float())
            self.spatial_mix_r = nn.Parameter((x ** (0.5 * r10)).float())
        else:
            self.spatial_mix_k = self.spatial_mix_v = self.spatial_mix_r = None
        self.key = nn.Linear(dim, dim, bias=False)
        self.value = nn.Linear(dim, dim, bias=False)
        self.receptance = nn.Linear(dim, dim, bias=False)
        self.key_norm = nn.LayerNorm(dim) if key_norm else None
        self.output = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        xx = qshift(x, hw) if self.qshift else None
        k = self.key(_lerp(x, xx, self.spatial_mix_k))
        v = self.value(_lerp(x, xx, self.spatial_mix_v))
        sr = torch.sigmoid(self.receptance(_lerp(x, xx, self.spatial_mix_r)))
        y = biwkv(self.spatial_decay, self.spatial_first, k, v, causal=not self.bidirectional)
        if self.key_norm is not None:
            y = self.key_norm(y)
        return self.output(sr * y)


class ChannelMix(nn.Module):
    """``sigma(W_r x_r) * W_v([LN] relu(W_k x_k)^2)`` with Q-Shift lerps for r, k."""

    def __init__(
        self, dim: int, layer_id: int, n_layer: int, hidden_ratio: float, *, key_norm: bool, qshift: bool
    ):
        super().__init__()
        self.qshift = qshift
        hidden = int(hidden_ratio * dim)
        r10 = 1.0 - layer_id / n_layer
        x = torch.arange(dim, dtype=torch.float64) / dim
        if qshift:
            self.spatial_mix_k = nn.Parameter((x**r10).float())
            self.spatial_mix_r = nn.Parameter((x**r10).float())
        else:
            self.spatial_mix_k = self.spatial_mix_r = None
        self.key = nn.Linear(dim, hidden, bias=False)
        self.key_norm = nn.LayerNorm(hidden) if key_norm else None
        self.receptance = nn.Linear(dim, dim, bias=False)
        self.value = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        xx = qshift(x, hw) if self.qshift else None
        k = torch.relu(self.key(_lerp(x, xx, self.spatial_mix_k))).square()
        if self.key_norm is not None:
            k = self.key_norm(k)
        return torch.sigmoid(self.receptance(_lerp(x, xx, self.spatial_mix_r))) * self.value(k)


class VRWKVBlock(nn.Module):
    """One VRWKV block on ``[B, T, C]`` tokens of an ``(H, W)`` grid (row-major, ``T = H * W``).

    Pre-norm: ``x += dp(g1 * att(ln1 x)); x += dp(g2 * ffn(ln2 x))``. Post-norm (S, B):
    ``x += dp(g1 * ln1(att x)); x += dp(g2 * ln2(ffn x))``. ``g1, g2`` (``gamma1, gamma2``) exist only with
    ``layer_scale_init``. The first block's ``ln0`` belongs to the model (:class:`VisionRWKV`), not here.
    Initialises itself: "fancy" decay/bonus/mix vectors, trunc-normal(0.02) linears.
    """

    def __init__(
        self,
        dim: int,
        layer_id: int,
        n_layer: int,
        hidden_ratio: float = 4,
        post_norm: bool = False,
        layer_scale_init: float | None = None,
        drop_path: float = 0.0,
        key_norm: bool = False,
        qshift: bool = True,
        bidirectional: bool = True,
    ):
        super().__init__()
        if not 0 <= layer_id < n_layer:
            raise ConfigError(f"VRWKVBlock: layer_id {layer_id} must be in [0, n_layer = {n_layer})")
        self.post_norm = post_norm
        self.drop_path = drop_path
        self.ln1 = nn.LayerNorm(dim)
        self.ln2 = nn.LayerNorm(dim)
        self.att = SpatialMix(
            dim, layer_id, n_layer, key_norm=key_norm, qshift=qshift, bidirectional=bidirectional
        )
        self.ffn = ChannelMix(dim, layer_id, n_layer, hidden_ratio, key_norm=key_norm, qshift=qshift)
        if layer_scale_init is not None:
            self.gamma1 = nn.Parameter(torch.full((dim,), float(layer_scale_init)))
            self.gamma2 = nn.Parameter(torch.full((dim,), float(layer_scale_init)))
        else:
            self.gamma1 = self.gamma2 = None
        trunc_normal_init(self)

    def _branch(self, f, ln: nn.LayerNorm, gamma, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        y = ln(f(x, hw)) if self.post_norm else f(ln(x), hw)
        if gamma is not None:
            y = gamma * y
        return drop_path(y, self.drop_path, self.training)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        x = x + self._branch(self.att, self.ln1, self.gamma1, x, hw)
        return x + self._branch(self.ffn, self.ln2, self.gamma2, x, hw)


# ---- model -----------------------------------------------------------------------------------------


class VisionRWKV(nn.Module):
    """VRWKV image classifier: patch embedding + position embedding, ``ln0``, blocks, LN, mean pool, head."""

    def __init__(self, config: VRWKVConfig):
        super().__init__()
        self.config = c = config
        C = c.embed_dim
        self.patch_embed = nn.Conv2d(c.in_chans, C, kernel_size=c.patch_size, stride=c.patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, c.grid[0] * c.grid[1], C))
        nn.init.trunc_normal_(self.pos_embed, std=0.02, a=-0.04, b=0.04)
        self.ln0 = nn.LayerNorm(C)
        dpr = [c.drop_path * i / max(c.depth - 1, 1) for i in range(c.depth)]  # linspace(0, rate, depth)
        self.blocks = nn.ModuleList(
            VRWKVBlock(
                C,
                i,
                c.depth,
                c.hidden_ratio,
                c.post_norm,
                c.layer_scale_init,
                dpr[i],
                c.key_norm,
                c.qshift,
                c.bidirectional,
            )  # fmt: skip
            for i in range(c.depth)
        )
        self.norm = nn.LayerNorm(C)
        self.head = nn.Linear(C, c.num_classes) if c.num_classes else nn.Identity()
        trunc_normal_init(self.head)

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Images ``[B, in_chans, H, W]`` -> (normalised tokens ``[B, T, C]``, grid ``(H/p, W/p)``).

        Sizes that are not multiples of the patch are cropped (the conv floors).
        """
        check_images("VisionRWKV", x, self.config.in_chans, self.config.patch_size)
        x = self.patch_embed(x)
        hw = (x.shape[2], x.shape[3])
        x = x.flatten(2).transpose(1, 2)
        x = self.ln0(x + resize_pos_embed(self.pos_embed, self.config.grid, hw))
        for block in self.blocks:
            x = block(x, hw)
        return self.norm(x), hw

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        """Tokens ``[B, T, C]`` -> logits ``[B, num_classes]`` (global average pool, linear)."""
        return self.head(feats.mean(dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x)[0])


def vrwkv_param_count(config: VRWKVConfig) -> int:
    """Parameters of ``VisionRWKV(config)``, by formula (tested against the module)."""
    c = config
    C, Hd = c.embed_dim, int(c.hidden_ratio * c.embed_dim)
    block = 4 * C  # ln1, ln2
    block += 4 * C * C + 2 * C + (3 * C if c.qshift else 0) + (2 * C if c.key_norm else 0)  # spatial
    block += 2 * C * Hd + C * C + (2 * C if c.qshift else 0) + (2 * Hd if c.key_norm else 0)  # channel
    block += 2 * C if c.layer_scale_init is not None else 0
    n = c.in_chans * c.patch_size**2 * C + C + c.grid[0] * c.grid[1] * C + 2 * C  # patch, pos, ln0
    n += c.depth * block + 2 * C  # blocks, final norm
    n += (C + 1) * c.num_classes
    return n
