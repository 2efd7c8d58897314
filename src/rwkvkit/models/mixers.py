"""A small language model built from named sequence mixers: the test bed of the recall and
state-tracking experiments (zoology's setup: docs/seed-systems.md#based)::

    x = emb[tokens]
    for each layer, a mixer name from MIXERS:
        x = x + Mixer(LayerNorm(x))
        x = x + MLP(LayerNorm(x))          # only with mlp=True (zoology's figure 2 has none)
    logits = head(LayerNorm(x))

Mixers: ``attention`` (causal softmax, a KV cache that grows with the sequence; no positions, or
rotary ones with ``rope=True``), ``swa`` (sliding
window, ``window``), ``based`` (Taylor linear attention, ``feature_dim``), ``conv`` (BASED's gated
short convolution), ``rwkv4`` / ``rwkv5`` / ``rwkv6`` / ``rwkv7`` (the time mix of rwkvkit's RWKV
layers with the official initialisation, head size ``head_size``), ``rrwkv4`` (RWKV-4 with RRWKV-style
retrospection, a reconstruction: one medium per ``medium_every`` tokens, ``layers/rrwkv.py``; at
initialisation it equals ``rwkv4``). :func:`state_bytes` gives each mixer's recurrent state at a
sequence length, the x-axis of the recall / memory plot.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from rwkvkit.errors import ConfigError, InputError
from rwkvkit.layers.based import BasedLinearAttention, SlidingWindowAttention
from rwkvkit.layers.rrwkv import RRWKV4TimeMix
from rwkvkit.layers.short_conv import BaseConv
from rwkvkit.models.rwkv.config import RWKVConfig
from rwkvkit.models.rwkv.init import official_init_time_mixes_
from rwkvkit.models.rwkv.versions import spec_of
from rwkvkit.ops.based import based_state_size
from rwkvkit.state import State

MIXERS = ("attention", "swa", "based", "conv", "rwkv4", "rwkv5", "rwkv6", "rwkv7", "rrwkv4")
_RWKV_VERSION = {"rwkv4": "4", "rwkv5": "5.2", "rwkv6": "6", "rwkv7": "7"}


@dataclass(frozen=True, kw_only=True)
class MixerLMConfig:
    vocab_size: int
    d_model: int = 64
    layers: tuple[str, ...] = ("conv", "based")
    n_heads: int = 1  # attention / swa / based heads
    head_size: int = 16  # RWKV-5/6/7 head size (state per head head_size^2)
    feature_dim: int = 16  # based
    window: int = 32  # swa
    mlp: bool = False
    rope: bool = False  # attention: rotary position embedding on queries and keys (else no positions)
    medium_every: int = 16  # rrwkv4: tokens per medium (RRWKV's s)

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(self.layers))
        bad = [m for m in self.layers if m not in MIXERS]
        if bad or not self.layers:
            raise ConfigError(f"unknown mixers {bad}; choose from {', '.join(MIXERS)}")
        s = self.medium_every
        if isinstance(s, bool) or not isinstance(s, int) or s < 1:
            raise ConfigError(f"medium_every (tokens per RRWKV medium) must be an integer >= 1, got {s!r}")
        if self.d_model % self.n_heads or self.d_model % self.head_size:
            raise ConfigError(f"d_model {self.d_model} must be a multiple of n_heads and head_size")

    def replace(self, **changes) -> MixerLMConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def rotary(x: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotary position embedding of ``x [B, H, T, D]`` (D even): the pair ``(x_i, x_{i + D/2})`` at
    position t is rotated by the angle ``t * base^(-2i / D)``."""
    T, D = x.shape[-2], x.shape[-1]
    acc = torch.promote_types(x.dtype, torch.float32)
    inv = base ** (-torch.arange(0, D // 2, device=x.device, dtype=acc) * 2 / D)
    ang = torch.arange(T, device=x.device, dtype=acc)[:, None] * inv[None]
    cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
    x1, x2 = x[..., : D // 2], x[..., D // 2 :]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class CausalAttention(nn.Module):
    def __init__(self, d: int, n_heads: int, rope: bool = False) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.rope = rope
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.out = nn.Linear(d, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, d = x.shape
        q, k, v = (t.view(B, T, self.n_heads, -1).transpose(1, 2) for t in self.qkv(x).split(d, dim=-1))
        if self.rope:
            q, k = rotary(q), rotary(k)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(y.transpose(1, 2).reshape(B, T, d))


class RWKVTimeMixer(nn.Module):
    """One RWKV time mix (v4, v5.2, v6 or v7) as a sequence mixer, from a fresh state each call."""

    def __init__(self, version: str, d: int, head_size: int) -> None:
        super().__init__()
        spec = spec_of(version)
        ranks = {k: max(8, v // 4) for k, v in spec.default_lora_ranks(d).items()}
        self.config = RWKVConfig(
            version=version, n_layer=1, n_embd=d, vocab_size=1, head_size=head_size, **ranks
        )
        self.att = spec.time_mix(self.config, 0, **spec.time_mix_options)
        official_init_time_mixes_([self.att], self.config, seed=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        st = State.initial(self.config, x.shape[0], device=x.device)
        out, _, _, _ = self.att(x, st["att_shift"][0].to(x.dtype), st["wkv"][0], None)
        return out


class RRWKVTimeMixer(nn.Module):
    """RWKV-4 time mix with RRWKV-style retrospection (reconstruction) as a sequence mixer, from a
    fresh state each call. The RWKV-4 part is built, initialised and draws the caller's random numbers
    exactly as :class:`RWKVTimeMixer` ``("4")`` does; the retrospection is initialised from its own
    generator with ``V_m = 0``, so a fresh ``rrwkv4`` model equals the ``rwkv4`` one of the same seed."""

    def __init__(self, d: int, head_size: int, medium_every: int) -> None:
        super().__init__()
        base = RWKVTimeMixer("4", d, head_size)
        self.config = base.config
        with torch.random.fork_rng():  # constructing the extra Linears must not move the caller's stream
            self.att = RRWKV4TimeMix(self.config, 0, medium_every=medium_every)
        missing, unexpected = self.att.load_state_dict(base.att.state_dict(), strict=False)
        assert not unexpected and all(k.startswith("medium") for k in missing), (missing, unexpected)
        self.att.reset_retrospection_(torch.Generator().manual_seed(0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.att(x)[0]


def _make_mixer(name: str, cfg: MixerLMConfig) -> nn.Module:
    d = cfg.d_model
    if name == "attention":
        return CausalAttention(d, cfg.n_heads, cfg.rope)
    if name == "swa":
        return _Stateless(SlidingWindowAttention(d, cfg.n_heads, cfg.window))
    if name == "based":
        return _Stateless(BasedLinearAttention(d, cfg.n_heads, cfg.feature_dim))
    if name == "conv":
        return _Stateless(BaseConv(d, expand=2, kernel_size=3))
    if name == "rrwkv4":
        return RRWKVTimeMixer(d, cfg.head_size, cfg.medium_every)
    return RWKVTimeMixer(_RWKV_VERSION[name], d, cfg.head_size)


class _Stateless(nn.Module):
    """Drops the state a recurrent layer returns (whole sequences only)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)[0]


class MixerLM(nn.Module):
    """``logits [B, T, V] = model(tokens [B, T])``."""

    def __init__(self, config: MixerLMConfig, seed: int = 0) -> None:
        super().__init__()
        self.config = config
        d = config.d_model
        with torch.random.fork_rng():  # seeded initialisation without touching the caller's generator
            torch.manual_seed(seed)
            self.emb = nn.Embedding(config.vocab_size, d)
            self.norms = nn.ModuleList(nn.LayerNorm(d) for _ in config.layers)
            self.mixers = nn.ModuleList(_make_mixer(m, config) for m in config.layers)
            self.mlps = nn.ModuleList(
                nn.Sequential(nn.LayerNorm(d), nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
                for _ in (config.layers if config.mlp else ())
            )
            self.norm_out = nn.LayerNorm(d)
            self.head = nn.Linear(d, config.vocab_size, bias=False)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.dim() != 2:
            raise InputError(f"MixerLM: tokens must be [batch, time], got {tuple(tokens.shape)}")
        x = self.emb(tokens)
        for i, (norm, mixer) in enumerate(zip(self.norms, self.mixers, strict=True)):
            x = x + mixer(norm(x))
            if self.config.mlp:
                x = x + self.mlps[i](x)
        return self.head(self.norm_out(x)).float()


def state_bytes(config: MixerLMConfig, seq_len: int, bytes_per_value: int = 4) -> int:
    """Bytes of recurrent state the sequence mixers carry after ``seq_len`` tokens (fp32 by default;
    token-shift and convolution tails included): attention keeps every key and value, the sliding
    window the last ``window``, BASED ``n_heads (1 + D + D^2 symmetric: D(D+1)/2 + D + 1) (d/h + 1)``,
    RWKV-4 three numbers per channel plus the shift, RWKV-5/6/7 ``H N^2`` plus the shift, RRWKV-4 that
    of RWKV-4 plus the incomplete segment's sum and length and one ``d``-vector per completed segment
    (``seq_len // medium_every`` of them: it grows with the sequence)."""

    d, total = config.d_model, 0
    for m in config.layers:
        if m == "attention":
            total += 2 * seq_len * d
        elif m == "swa":
            total += 2 * min(seq_len, config.window) * d
        elif m == "based":
            total += based_state_size(config.feature_dim, d // config.n_heads, config.n_heads)
        elif m == "conv":
            total += 2 * d * 2  # kernel 3: the last two inputs of the 2d-wide convolution
        elif m == "rwkv4":
            total += 3 * d + d
        elif m == "rrwkv4":
            total += 3 * d + d + (d + 1) + (seq_len // config.medium_every) * d
        else:
            H = d // config.head_size
            total += H * config.head_size**2 + d
    return total * bytes_per_value
