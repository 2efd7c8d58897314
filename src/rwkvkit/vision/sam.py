"""A promptable segmenter in the style of RWKV-SAM (arXiv 2406.19369), small enough to train on a CPU.

Parts, top to bottom (shapes for an input ``[B, C, H, W]``, ``H`` and ``W`` multiples of 16):

- **Backbone** (VITAMIN-style, as in ``projects/rwkvsam/models/backbones/vitamin.py``): a conv stem to
  1/2, two MBConv blocks to 1/4 (``hr``), four to 1/8 (``mr``), a strided conv to 1/16, then either
  VRWKV blocks (``backbone="rwkv"``, layer scale 1e-2, no position embedding: Q-Shift and the
  distance decay give position) or pre-norm global-attention blocks (``backbone="vit"``, the
  same-stem transformer baseline, with a fixed 2D sin-cos position embedding so that it runs at any
  resolution), and a final LN.
- **Prompt encoder** (SAM's): a point ``(y, x)`` in pixels becomes a random-Fourier encoding of its
  position plus a learned embedding of its label; the 1/16 grid gets the same encoding, densely.
- **Mask decoder** (SAM's, light): tokens ``[mask, iou, points...]`` and the 1/16 image embedding go
  through two two-way layers and a final token->image attention; the image side is upscaled to 1/4
  by two transposed convs; with ``fusion=True`` the backbone's ``hr``/``mr`` maps are projected and
  mixed in (RWKV-SAM's HQ decoder, ``sam_mask_decoder_rwkv_mlpmerge.py``); a hypernetwork MLP of the
  mask token dotted with those features gives the mask logits at 1/4, upsampled bilinearly to
  ``H x W``; an MLP of the iou token predicts the mask's IoU.

Parameter counts (``count_parameters``: whole segmenter with fusion on / without / backbone alone)::

    tiny   rwkv   1,855,817 / 1,828,929 /  1,614,944
    tiny   vit    1,856,201 / 1,829,313 /  1,615,328    (+0.02% against rwkv)
    small  rwkv  24,235,489 / 24,054,593 / 19,727,296
    small  vit   24,238,177 / 24,057,281 / 19,729,984

Most of "tiny" is its four 192-wide blocks (4 x 9 x 192^2 = 1.33M); ``n_blocks=2`` gives 1,187,273.

The "vit" variant's MLP is ``mlp_ratio + 0.5`` wide: a VRWKV block has ``(2r + 5) C^2`` weights (k,
v, r, o of the spatial mix; k, v and the extra receptance gate of the channel mix) against ``(2r + 4)
C^2`` for an attention block with an ``r``-wide MLP, so the extra half-width matches the two (what is
left is the VRWKV block's per-channel vectors).

The image encoder can be run once for several prompts: :meth:`PromptableSegmenter.forward_features`
then :meth:`PromptableSegmenter.decode`. :func:`backbone_only` builds just the backbone, for the
latency and memory scaling experiments.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rwkvkit.errors import ConfigError, InputError
from rwkvkit.vision.vrwkv import VRWKVBlock

__all__ = [
    "SegmenterConfig",
    "PromptableSegmenter",
    "Backbone",
    "PromptEncoder",
    "MaskDecoder",
    "MBConv",
    "LayerNorm2d",
    "backbone_only",
    "segmentation_loss",
    "count_parameters",
]


# --------------------------------------------------------------------------------------------------
# config


@dataclass(frozen=True)
class SegmenterConfig:
    """Sizes of a :class:`PromptableSegmenter`. Build one with :meth:`preset` (``"tiny"``, ``"small"``)."""

    in_chans: int = 3  # 1 (grey) or 3 (RGB)
    backbone: str = "rwkv"  # "rwkv": VRWKV blocks at 1/16; "vit": global-attention blocks there
    dims: tuple[int, int, int] = (32, 64, 192)  # channels at 1/4 (and the stem), 1/8, 1/16
    stage_depths: tuple[int, int] = (2, 4)  # MBConv blocks at 1/4 and 1/8
    mbconv_expand: int = 4  # MBConv hidden width = expand x output channels
    n_blocks: int = 4  # VRWKV (or attention) blocks at 1/16
    mlp_ratio: float = 2.0  # VRWKV channel-mix hidden ratio; the vit MLP gets mlp_ratio + 0.5 (see top)
    n_heads: int = 3  # heads of the "vit" backbone's attention (embed dim / 64)
    layer_scale_init: float | None = 1e-2  # per-channel residual scales of the 1/16 blocks (both kinds)
    drop_path: float = 0.0  # stochastic depth at the last 1/16 block, linear from 0
    decoder_dim: int = 64  # the prompt/decoder width; mask features at 1/4 have decoder_dim // 8
    decoder_depth: int = 2  # two-way layers
    decoder_heads: int = 2
    decoder_mlp_ratio: float = 4.0  # the two-way layers' token MLP (SAM: 2048 / 256 = 8)
    fusion: bool = True  # RWKV-SAM's hr/mr multiscale fusion in the decoder

    def __post_init__(self) -> None:
        if self.in_chans not in (1, 3):
            raise ConfigError(f"in_chans must be 1 or 3, got {self.in_chans}")
        if self.backbone not in ("rwkv", "vit"):
            raise ConfigError(f'backbone must be "rwkv" or "vit", got {self.backbone!r}')
        if len(self.dims) != 3 or min(self.dims) < 1:
            raise ConfigError(f"dims must be three positive channel counts, got {self.dims}")
        if len(self.stage_depths) != 2 or min(self.stage_depths) < 1:
            raise ConfigError(f"stage_depths must be two counts >= 1, got {self.stage_depths}")
        if self.n_blocks < 0:
            raise ConfigError(f"n_blocks must be >= 0, got {self.n_blocks}")
        if self.backbone == "vit" and (self.dims[2] % self.n_heads or self.dims[2] % 4):
            raise ConfigError(
                f"the vit backbone needs dims[2] ({self.dims[2]}) divisible by n_heads ({self.n_heads}) and 4"
            )
        if self.decoder_dim % 8:
            raise ConfigError(f"decoder_dim must be a multiple of 8, got {self.decoder_dim}")
        if (self.decoder_dim // 2) % self.decoder_heads:
            raise ConfigError(
                f"decoder_dim // 2 ({self.decoder_dim // 2}) must be divisible by decoder_heads "
                f"({self.decoder_heads}): the cross-attentions run at half width"
            )
        if self.decoder_depth < 1:
            raise ConfigError(f"decoder_depth must be >= 1, got {self.decoder_depth}")

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> SegmenterConfig:
        """``"tiny"`` (32/64/192, 4 blocks, decoder 64: the CPU experiment's ~1-2M-parameter model) or
        ``"small"`` (64/128/384, 14 blocks, mlp ratio 2, decoder 256: RWKV-SAM's released backbone
        config, with a SAM-width decoder). ``overrides`` replace fields, e.g. ``backbone="vit"``."""
        presets = {
            "tiny": cls(),
            "small": cls(
                dims=(64, 128, 384),
                n_blocks=14,
                mlp_ratio=2.0,
                n_heads=6,
                decoder_dim=256,
                decoder_heads=8,
                decoder_mlp_ratio=8.0,
            ),
        }
        if name not in presets:
            raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(presets)}")
        try:
            return replace(presets[name], **overrides)
        except TypeError as e:  # an unknown field name
            raise ConfigError(f"bad override for SegmenterConfig: {e}") from None


# --------------------------------------------------------------------------------------------------
# shared layers


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of a ``[B, C, H, W]`` map."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), x.shape[1:2], self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class _MLP(nn.Module):
    """``n_layers`` linear layers with ReLU between them (SAM's hypernetwork / IoU head MLP)."""

    def __init__(self, d_in: int, d_hidden: int, d_out: int, n_layers: int) -> None:
        super().__init__()
        dims = [d_in] + [d_hidden] * (n_layers - 1) + [d_out]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


def _drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    if p == 0.0 or not training:
        return x
    keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1 - p)
    return x * keep / (1 - p)


def _init_linear(module: nn.Module) -> None:
    """Truncated-normal (std 0.02) linears and unit/zero norms, for the modules this file defines."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------------------------------
# backbone


class MBConv(nn.Module):
    """Pre-norm inverted bottleneck: LN2d -> 1x1 (x expand) -> GELU -> depthwise 3x3 (stride) -> GELU -> 1x1.

    The shortcut is the identity, or, when the shape changes, a 2x2 average pool (for stride 2) and a
    1x1 conv (for a change of channels).
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1, expand: int = 4) -> None:
        super().__init__()
        hidden = c_out * expand
        self.norm = LayerNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, hidden, 1)
        self.conv2 = nn.Conv2d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden)
        self.conv3 = nn.Conv2d(hidden, c_out, 1)
        self.pool = nn.AvgPool2d(2, 2) if stride == 2 else nn.Identity()
        self.shortcut = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv3(F.gelu(self.conv2(F.gelu(self.conv1(self.norm(x))))))
        return self.shortcut(self.pool(x)) + y


class _AttentionBlock(nn.Module):
    """Pre-norm global self-attention block (the "vit" backbone).

    ``x += g1 * Attn(LN x); x += g2 * MLP(LN x)``, attention by ``F.scaled_dot_product_attention``.
    """

    def __init__(
        self, dim: int, n_heads: int, mlp_ratio: float, layer_scale_init: float | None, drop_path: float
    ) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.ln1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        hidden = int(round(dim * mlp_ratio))
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop_path = drop_path
        if layer_scale_init is None:
            self.gamma1 = self.gamma2 = None
        else:
            self.gamma1 = nn.Parameter(torch.full((dim,), float(layer_scale_init)))
            self.gamma2 = nn.Parameter(torch.full((dim,), float(layer_scale_init)))

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, T, 3, self.n_heads, C // self.n_heads).permute(2, 0, 3, 1, 4)
        a = self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, T, C))
        m = self.fc2(F.gelu(self.fc1(self.ln2(x))))
        if self.gamma1 is not None:
            a, m = self.gamma1 * a, self.gamma2 * m
        x = x + _drop_path(a, self.drop_path, self.training)
        return x + _drop_path(m, self.drop_path, self.training)


def _sincos_2d(h: int, w: int, dim: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Fixed 2D sin-cos position embedding ``[h*w, dim]`` (MAE's): a quarter of the channels each for
    sin(y), cos(y), sin(x), cos(x)."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, device=device, dtype=torch.float32) / (dim // 4))
    y = torch.arange(h, device=device, dtype=torch.float32)[:, None] * omega  # [h, dim/4]
    x = torch.arange(w, device=device, dtype=torch.float32)[:, None] * omega  # [w, dim/4]
    y = y[:, None, :].expand(h, w, -1)
    x = x[None, :, :].expand(h, w, -1)
    pe = torch.cat([y.sin(), y.cos(), x.sin(), x.cos()], dim=-1)
    return pe.reshape(h * w, dim).to(dtype)


class Backbone(nn.Module):
    """Conv stem + MBConv stages at 1/4 and 1/8 + VRWKV (or attention) blocks at 1/16.

    ``forward(images [B, C, H, W])`` returns ``dict(hr=[B, d0, H/4, W/4], mr=[B, d1, H/8, W/8],
    emb=[B, d2, H/16, W/16], hw=(H/16, W/16))``.
    """

    def __init__(self, config: SegmenterConfig) -> None:
        super().__init__()
        self.config = config
        d0, d1, d2 = config.dims
        e = config.mbconv_expand
        self.stem = nn.Sequential(
            nn.Conv2d(config.in_chans, d0, 3, stride=2, padding=1),
            LayerNorm2d(d0),
            nn.GELU(),
            nn.Conv2d(d0, d0, 3, padding=1),
        )
        n1, n2 = config.stage_depths
        self.stage1 = nn.Sequential(*[MBConv(d0, d0, 2 if i == 0 else 1, e) for i in range(n1)])
        self.stage2 = nn.Sequential(
            *[MBConv(d0 if i == 0 else d1, d1, 2 if i == 0 else 1, e) for i in range(n2)]
        )
        self.transition = nn.Sequential(LayerNorm2d(d1), nn.Conv2d(d1, d2, 3, stride=2, padding=1))
        L = config.n_blocks
        dpr = [config.drop_path * i / max(L - 1, 1) for i in range(L)]
        if config.backbone == "rwkv":
            self.blocks = nn.ModuleList(
                VRWKVBlock(
                    d2,
                    layer_id=i,
                    n_layer=L,
                    hidden_ratio=config.mlp_ratio,
                    post_norm=False,
                    layer_scale_init=config.layer_scale_init,
                    drop_path=dpr[i],
                    key_norm=False,
                )
                for i in range(L)
            )
        else:
            self.blocks = nn.ModuleList(
                _AttentionBlock(d2, config.n_heads, config.mlp_ratio + 0.5, config.layer_scale_init, dpr[i])
                for i in range(L)
            )
            _init_linear(self.blocks)  # the VRWKV blocks initialise themselves ("fancy" init)
        self.norm = nn.LayerNorm(d2)

    def forward(self, images: torch.Tensor) -> dict[str, Any]:
        _check_images(images, self.config.in_chans)
        x = self.stem(images)
        hr = self.stage1(x)
        mr = self.stage2(hr)
        x = self.transition(mr)
        B, C, h, w = x.shape
        x = x.flatten(2).transpose(1, 2)  # [B, h*w, C], row-major
        if self.config.backbone == "vit":
            x = x + _sincos_2d(h, w, C, x.device, x.dtype)
        for block in self.blocks:
            x = block(x, (h, w))
        x = self.norm(x)
        emb = x.transpose(1, 2).reshape(B, C, h, w)
        return {"hr": hr, "mr": mr, "emb": emb, "hw": (h, w)}


def backbone_only(config: SegmenterConfig | str) -> Backbone:
    """Just the backbone of ``config`` (or of a preset name), for the latency/memory scaling runs."""
    if isinstance(config, str):
        config = SegmenterConfig.preset(config)
    return Backbone(config)


# --------------------------------------------------------------------------------------------------
# prompt encoder


class PromptEncoder(nn.Module):
    """SAM's point prompts: random Fourier features of the position + a learned label embedding.

    Labels: 1 = positive (on the object), 0 = negative, -1 = padding (the point is ignored; its
    coordinates may be anything). Coordinates are ``(y, x)`` in pixels of the input image.
    """

    def __init__(self, dim: int, scale: float = 1.0) -> None:
        super().__init__()
        # fixed (not trained), saved with the weights so a reloaded model encodes positions the same way
        self.register_buffer("gaussian", scale * torch.randn(2, dim // 2))
        self.label_embed = nn.Embedding(2, dim)  # [negative, positive]
        self.not_a_point = nn.Parameter(torch.zeros(dim))
        nn.init.normal_(self.label_embed.weight, std=1.0)  # SAM: nn.Embedding's default N(0, 1)
        nn.init.normal_(self.not_a_point, std=1.0)

    def _encode(self, coords: torch.Tensor) -> torch.Tensor:
        """Coordinates in [0, 1] (``[..., 2]``) -> ``[..., dim]``."""
        c = (2 * coords - 1) @ self.gaussian.to(coords.dtype)
        c = 2 * math.pi * c
        return torch.cat([c.sin(), c.cos()], dim=-1)

    def dense_pe(self, hw: tuple[int, int], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """The encoding of each cell centre of an ``h x w`` grid: ``[1, dim, h, w]``."""
        h, w = hw
        ys = (torch.arange(h, device=device, dtype=dtype) + 0.5) / h
        xs = (torch.arange(w, device=device, dtype=dtype) + 0.5) / w
        grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1)  # [h, w, 2]
        return self._encode(grid).permute(2, 0, 1).unsqueeze(0)

    def forward(
        self, points: torch.Tensor, labels: torch.Tensor, image_size: tuple[int, int]
    ) -> torch.Tensor:
        """``points [B, P, 2]`` (y, x) pixels, ``labels [B, P]`` -> sparse embeddings ``[B, P, dim]``."""
        H, W = image_size
        # pixel centres: pixel (0, 0) covers [0, 1) x [0, 1) in the [0, H) x [0, W) frame
        coords = (points + 0.5) / points.new_tensor([H, W])
        emb = self._encode(coords)
        lab = labels.long()
        pad = (lab < 0).unsqueeze(-1)
        emb = torch.where(pad, self.not_a_point.to(emb.dtype), emb + self.label_embed(lab.clamp(min=0)))
        return emb


# --------------------------------------------------------------------------------------------------
# mask decoder


class _Attention(nn.Module):
    """Multi-head attention with separate q/k/v projections to ``dim // downsample`` (SAM's)."""

    def __init__(self, dim: int, n_heads: int, downsample: int = 1) -> None:
        super().__init__()
        inner = dim // downsample
        self.n_heads = n_heads
        self.q_proj = nn.Linear(dim, inner)
        self.k_proj = nn.Linear(dim, inner)
        self.v_proj = nn.Linear(dim, inner)
        self.out_proj = nn.Linear(inner, dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        return x.view(B, N, self.n_heads, C // self.n_heads).transpose(1, 2)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        q, k, v = self._heads(self.q_proj(q)), self._heads(self.k_proj(k)), self._heads(self.v_proj(v))
        o = F.scaled_dot_product_attention(q, k, v)
        B, _, N, _ = o.shape
        return self.out_proj(o.transpose(1, 2).reshape(B, N, -1))


class _TwoWayLayer(nn.Module):
    """Token self-attention, token->image cross-attention, token MLP, image->token cross-attention
    (each followed by a residual and a post-LN, as in SAM). Positions are re-added to q and k each time."""

    def __init__(self, dim: int, n_heads: int, mlp_dim: int, skip_first_pe: bool) -> None:
        super().__init__()
        self.skip_first_pe = skip_first_pe
        self.self_attn = _Attention(dim, n_heads)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_token_to_image = _Attention(dim, n_heads, downsample=2)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.ReLU(), nn.Linear(mlp_dim, dim))
        self.norm3 = nn.LayerNorm(dim)
        self.cross_image_to_token = _Attention(dim, n_heads, downsample=2)
        self.norm4 = nn.LayerNorm(dim)

    def forward(
        self, queries: torch.Tensor, keys: torch.Tensor, query_pe: torch.Tensor, key_pe: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.skip_first_pe:  # the first layer's queries *are* the prompt embeddings: no residual, no pe
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)
        q, k = queries + query_pe, keys + key_pe
        queries = self.norm2(queries + self.cross_token_to_image(q, k, keys))
        queries = self.norm3(queries + self.mlp(queries))
        q, k = queries + query_pe, keys + key_pe
        keys = self.norm4(keys + self.cross_image_to_token(k, q, queries))
        return queries, keys


class MaskDecoder(nn.Module):
    """SAM's mask decoder with one mask token, plus RWKV-SAM's hr/mr fusion when ``fusion=True``."""

    def __init__(self, config: SegmenterConfig) -> None:
        super().__init__()
        D = config.decoder_dim
        d0, d1, _ = config.dims
        self.fusion = config.fusion
        self.mask_token = nn.Parameter(torch.empty(1, D))
        self.iou_token = nn.Parameter(torch.empty(1, D))
        mlp_dim = int(round(D * config.decoder_mlp_ratio))
        self.layers = nn.ModuleList(
            _TwoWayLayer(D, config.decoder_heads, mlp_dim, skip_first_pe=(i == 0))
            for i in range(config.decoder_depth)
        )
        self.final_attn = _Attention(D, config.decoder_heads, downsample=2)
        self.norm_final = nn.LayerNorm(D)
        c_feat = D // 8
        self.upscale = nn.Sequential(
            nn.ConvTranspose2d(D, D // 4, 2, stride=2),
            LayerNorm2d(D // 4),
            nn.GELU(),
            nn.ConvTranspose2d(D // 4, c_feat, 2, stride=2),
            nn.GELU(),
        )
        if config.fusion:
            self.hr_proj = nn.Sequential(
                nn.Conv2d(d0, d0, 3, padding=1),
                LayerNorm2d(d0),
                nn.GELU(),
                nn.Conv2d(d0, c_feat, 3, padding=1),
            )
            self.mr_proj = nn.Sequential(
                nn.ConvTranspose2d(d1, d0, 2, stride=2),
                LayerNorm2d(d0),
                nn.GELU(),
                nn.Conv2d(d0, c_feat, 3, padding=1),
            )
            self.mix_proj = nn.Sequential(
                nn.Conv2d(3 * c_feat, 2 * c_feat, 3, padding=1),
                LayerNorm2d(2 * c_feat),
                nn.GELU(),
                nn.Conv2d(2 * c_feat, c_feat, 3, padding=1),
            )
        self.hyper_mlp = _MLP(D, D, c_feat, 3)
        self.iou_head = _MLP(D, D, 1, 3)
        _init_linear(self)
        nn.init.normal_(self.mask_token, std=1.0)  # SAM: nn.Embedding's default N(0, 1)
        nn.init.normal_(self.iou_token, std=1.0)

    def forward(
        self,
        image_emb: torch.Tensor,
        image_pe: torch.Tensor,
        sparse: torch.Tensor,
        hr: torch.Tensor,
        mr: torch.Tensor,
        out_size: tuple[int, int],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``image_emb [B, D, h, w]``, ``image_pe [1, D, h, w]``, ``sparse [B, P, D]`` ->
        (mask logits ``[B, 1, *out_size]``, IoU prediction ``[B, 1]``)."""
        B, D, h, w = image_emb.shape
        tokens = torch.cat(
            [self.mask_token.expand(B, 1, D), self.iou_token.expand(B, 1, D), sparse.to(image_emb.dtype)],
            dim=1,
        )
        keys = image_emb.flatten(2).transpose(1, 2)  # [B, h*w, D]
        key_pe = image_pe.flatten(2).transpose(1, 2).expand(B, -1, -1)
        queries = tokens
        for layer in self.layers:
            queries, keys = layer(queries, keys, tokens, key_pe)
        q, k = queries + tokens, keys + key_pe
        queries = self.norm_final(queries + self.final_attn(q, k, keys))
        mask_out, iou_out = queries[:, 0], queries[:, 1]

        feats = self.upscale(keys.transpose(1, 2).reshape(B, D, h, w))  # [B, D/8, 4h, 4w]
        if self.fusion:
            mixed = torch.cat([feats, self.mr_proj(mr), self.hr_proj(hr)], dim=1)
            feats = self.mix_proj(mixed) + feats
        hyper = self.hyper_mlp(mask_out)  # [B, D/8]
        masks = torch.einsum("bc,bchw->bhw", hyper, feats).unsqueeze(1)
        masks = F.interpolate(masks, size=out_size, mode="bilinear", align_corners=False)
        return masks, self.iou_head(iou_out)


# --------------------------------------------------------------------------------------------------
# the model


class PromptableSegmenter(nn.Module):
    """Backbone + neck + prompt encoder + mask decoder. See the module docstring.

    ``forward(images [B, C, H, W], points [B, P, 2], labels [B, P]) -> (mask_logits [B, 1, H, W],
    iou_pred [B, 1])``. Points are ``(y, x)`` in pixels with ``0 <= y < H``, ``0 <= x < W``; labels are
    1 (positive), 0 (negative) or -1 (padding, ignored). ``H`` and ``W`` must be multiples of 16. The
    IoU prediction is a raw linear output (as in SAM), trained to regress the mask's actual IoU.
    """

    def __init__(self, config: SegmenterConfig) -> None:
        super().__init__()
        self.config = config
        D = config.decoder_dim
        d2 = config.dims[2]
        self.backbone = Backbone(config)
        # SAM's neck: 1x1 to the decoder width, LN2d, 3x3, LN2d
        self.neck = nn.Sequential(
            nn.Conv2d(d2, D, 1, bias=False),
            LayerNorm2d(D),
            nn.Conv2d(D, D, 3, padding=1, bias=False),
            LayerNorm2d(D),
        )
        self.prompt_encoder = PromptEncoder(D)
        self.decoder = MaskDecoder(config)

    def forward_features(self, images: torch.Tensor) -> dict[str, Any]:
        """Run the image encoder once: ``dict(hr, mr, emb, hw, image_size)``, where ``emb`` is the
        neck's output ``[B, decoder_dim, H/16, W/16]``. Pass it to :meth:`decode` with any prompts."""
        out = self.backbone(images)
        out["emb"] = self.neck(out["emb"])
        out["image_size"] = tuple(images.shape[-2:])
        return out

    def decode(
        self, features: dict[str, Any], points: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Masks for prompts on features from :meth:`forward_features`. Features of batch 1 are shared
        by a batch of ``B`` prompts (one image, many prompts); otherwise the batches must agree."""
        emb, hr, mr = features["emb"], features["hr"], features["mr"]
        image_size = features["image_size"]
        points, labels = _check_prompts(points, labels, image_size, emb.shape[0])
        B = points.shape[0]
        if emb.shape[0] == 1 and B > 1:
            emb, hr, mr = emb.expand(B, -1, -1, -1), hr.expand(B, -1, -1, -1), mr.expand(B, -1, -1, -1)
        sparse = self.prompt_encoder(points.to(emb.dtype), labels, image_size)
        image_pe = self.prompt_encoder.dense_pe(features["hw"], emb.device, emb.dtype)
        return self.decoder(emb, image_pe, sparse, hr, mr, image_size)

    def forward(
        self, images: torch.Tensor, points: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        _check_images(images, self.config.in_chans)
        _check_prompts(points, labels, tuple(images.shape[-2:]), images.shape[0], shared=False)
        return self.decode(self.forward_features(images), points, labels)

    @staticmethod
    def segmentation_loss(
        mask_logits: torch.Tensor, target: torch.Tensor, iou_pred: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """See :func:`segmentation_loss`."""
        return segmentation_loss(mask_logits, target, iou_pred)


# --------------------------------------------------------------------------------------------------
# loss and helpers


def segmentation_loss(
    mask_logits: torch.Tensor,
    target: torch.Tensor,
    iou_pred: torch.Tensor | None = None,
    *,
    dice_weight: float = 1.0,
    bce_weight: float = 1.0,
    iou_weight: float = 1.0,
) -> dict[str, torch.Tensor]:
    """Dice + BCE on the mask logits, + MSE of the IoU head against the mask's actual IoU.

    ``mask_logits [B, 1, H, W]``; ``target`` the same shape (or ``[B, H, W]``), values in [0, 1];
    ``iou_pred [B, 1]`` (optional: without it the IoU term is left out). Returns ``dict(loss, dice,
    bce, iou_mse, iou)``: ``loss`` is the weighted sum, ``iou`` the per-mask IoU of the thresholded
    prediction (``logit > 0``) against ``target > 0.5``, detached (the IoU head's regression target).

    Dice is SAM's soft form ``1 - (2 sum(p t) + 1) / (sum p + sum t + 1)`` per mask, averaged. BCE is
    dense (mean over every pixel): RWKV-SAM computes both on 12544 PointRend-style importance-sampled
    points, which matters at 1024^2 but not at the 64^2-128^2 of the CPU experiments.
    """
    if target.ndim == 3:
        target = target.unsqueeze(1)
    if mask_logits.ndim != 4 or mask_logits.shape[1] != 1:
        raise InputError(f"mask_logits must be [B, 1, H, W], got {tuple(mask_logits.shape)}")
    if target.shape != mask_logits.shape:
        raise InputError(
            f"target {tuple(target.shape)} does not match mask_logits {tuple(mask_logits.shape)}"
        )
    logits = mask_logits.float().flatten(1)
    t = target.to(logits.dtype).flatten(1)
    p = logits.sigmoid()
    dice = (1 - (2 * (p * t).sum(1) + 1) / (p.sum(1) + t.sum(1) + 1)).mean()
    bce = F.binary_cross_entropy_with_logits(logits, t)
    with torch.no_grad():
        pred, gt = logits > 0, t > 0.5
        inter = (pred & gt).sum(1).float()
        union = (pred | gt).sum(1).float()
        iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
    loss = dice_weight * dice + bce_weight * bce
    if iou_pred is not None:
        if iou_pred.shape != (logits.shape[0], 1):
            raise InputError(f"iou_pred must be [B, 1] = {(logits.shape[0], 1)}, got {tuple(iou_pred.shape)}")
        iou_mse = F.mse_loss(iou_pred.float().squeeze(1), iou)
        loss = loss + iou_weight * iou_mse
    else:
        iou_mse = logits.new_zeros(())
    return {"loss": loss, "dice": dice, "bce": bce, "iou_mse": iou_mse, "iou": iou}


def count_parameters(module: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters; the prompt encoder's fixed Fourier matrix is a buffer."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def _check_images(images: torch.Tensor, in_chans: int) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise InputError(f"images must be a [B, C, H, W] tensor, got {shape}")
    if not images.is_floating_point():
        raise InputError(f"images must be floating point, got {images.dtype}")
    B, C, H, W = images.shape
    if C != in_chans:
        raise InputError(f"images have {C} channels but the model was built for in_chans={in_chans}")
    if H < 16 or W < 16 or H % 16 or W % 16:
        raise InputError(f"image height and width must be positive multiples of 16 (pad them), got {H}x{W}")


def _check_prompts(
    points: torch.Tensor, labels: torch.Tensor, image_size: tuple[int, int], batch: int, shared: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate point prompts; ``shared``: a feature batch of 1 may serve any number of prompts."""
    if not isinstance(points, torch.Tensor) or points.ndim != 3 or points.shape[-1] != 2:
        shape = tuple(points.shape) if isinstance(points, torch.Tensor) else type(points).__name__
        raise InputError(f"points must be a [B, P, 2] tensor of (y, x) pixel coordinates, got {shape}")
    if not isinstance(labels, torch.Tensor) or labels.shape != points.shape[:2]:
        shape = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise InputError(f"labels must be [B, P] = {tuple(points.shape[:2])} to match points, got {shape}")
    B = points.shape[0]
    if B != batch and not (shared and batch == 1):
        raise InputError(f"{B} prompts for a batch of {batch} images")
    if labels.is_floating_point() or labels.is_complex():
        raise InputError(f"labels must be integers (1 positive, 0 negative, -1 padding), got {labels.dtype}")
    if ((labels < -1) | (labels > 1)).any():
        raise InputError("labels must be 1 (positive), 0 (negative) or -1 (padding)")
    points = points.float() if not points.is_floating_point() else points
    real = labels >= 0
    pr = points[real]
    if not torch.isfinite(pr).all():
        raise InputError("point coordinates must be finite")
    H, W = image_size
    if ((pr[:, 0] < 0) | (pr[:, 0] >= H) | (pr[:, 1] < 0) | (pr[:, 1] >= W)).any():
        raise InputError(f"points must lie inside the image: 0 <= y < {H}, 0 <= x < {W} ((y, x) pixels)")
    return points, labels
