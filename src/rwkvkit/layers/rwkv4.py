"""RWKV-4 blocks: time mix (per-channel WKV with the stable max-tracking recurrence) and channel mix.

Parameter names and shapes are those of the official checkpoints. Math (docs/rwkv4.md#time-mix), with
``x'`` the previous token's LN output and lerps ``x * mix + x' * (1 - mix)``::

    r = sigmoid(W_r x_r);  k = W_k x_k;  v = W_v x_v        (k, v in fp32)
    wkv = WKV4(w = -exp(time_decay), u = time_first, k, v)
    out = W_o (r * wkv)

    channel mix: sigmoid(W_r x_r) * W_v relu(W_k x_k)^2
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from rwkvkit.layers.official_init import F64, InitContext, frac
from rwkvkit.layers.token_shift import acc_dtype, token_shift
from rwkvkit.ops import wkv4


def lerp_mix(x: torch.Tensor, prev: torch.Tensor, mix: torch.Tensor) -> torch.Tensor:
    """The v4/v5 token-shift mix ``x * mix + prev * (1 - mix)`` (official form, kept bit-compatible)."""
    return x * mix + prev * (1 - mix)


class RWKV4TimeMix(nn.Module):
    """The RWKV-4 attention replacement ("att")."""

    def __init__(self, config, layer_id: int, device=None, dtype=None) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        C, A = config.n_embd, config.dim_att
        self.layer_id = layer_id
        self.time_decay = nn.Parameter(torch.empty(A, **dd))  # w = -exp(time_decay) per channel
        self.time_first = nn.Parameter(torch.empty(A, **dd))  # u, added in the exponent
        self.time_mix_k = nn.Parameter(torch.empty(1, 1, C, **dd))
        self.time_mix_v = nn.Parameter(torch.empty(1, 1, C, **dd))
        self.time_mix_r = nn.Parameter(torch.empty(1, 1, C, **dd))
        self.key = nn.Linear(C, A, bias=False, **dd)
        self.value = nn.Linear(C, A, bias=False, **dd)
        self.receptance = nn.Linear(C, A, bias=False, **dd)
        self.output = nn.Linear(A, C, bias=False, **dd)

    def official_init(self, name: str, shape: tuple[int, ...], ctx: InitContext) -> torch.Tensor | None:
        """The official (v4neo) initial value of parameter ``name`` of this mix (docs/init.md)."""
        lerp = ctx.lerp_current()
        if name in lerp:
            return lerp[name]
        A = ctx.config.dim_att
        h = torch.arange(A, dtype=F64)
        if name == "time_decay":  # w = -exp(time_decay): from -e^-5 (slow) to -e^3 (fast) per step
            return -5 + 8 * frac(h, A - 1) ** (0.7 + 1.3 * ctx.r01)
        if name == "time_first":
            return math.log(0.3) + 0.5 * (((h + 1) % 3) - 1)
        return None

    def forward(
        self,
        x: torch.Tensor,
        shift: torch.Tensor,
        wkv_state: torch.Tensor,
        v_first: torch.Tensor | None = None,
        impl: str = "auto",
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, None]:
        """``x [B, T, C]`` (LN1 output), ``shift [B, C]``, ``wkv_state [B, 3, A]`` (aa, bb, pp).

        Returns ``(out [B, T, C], new shift, new wkv state, None)``.
        """
        acc = acc_dtype(x)  # k, v, the decay and the WKV sums are fp32 (the official package too)
        prev = token_shift(x, shift)
        r = torch.sigmoid(self.receptance(lerp_mix(x, prev, self.time_mix_r)))
        k = self.key(lerp_mix(x, prev, self.time_mix_k)).to(acc)
        v = self.value(lerp_mix(x, prev, self.time_mix_v)).to(acc)
        w = -torch.exp(self.time_decay.to(acc))
        wkv, wkv_state = wkv4(w, self.time_first.to(acc), k, v, wkv_state, impl=impl)
        return self.output(r * wkv.to(x.dtype)), x[:, -1], wkv_state, None


class RWKV4ChannelMix(nn.Module):
    """The RWKV-4/5 feed-forward ("ffn"): ``sigmoid(W_r x_r) * W_v relu(W_k x_k)^2``."""

    def __init__(self, config, layer_id: int, device=None, dtype=None) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        C, F_ = config.n_embd, config.dim_ffn
        self.layer_id = layer_id
        self.time_mix_k = nn.Parameter(torch.empty(1, 1, C, **dd))
        self.time_mix_r = nn.Parameter(torch.empty(1, 1, C, **dd))
        self.key = nn.Linear(C, F_, bias=False, **dd)
        self.receptance = nn.Linear(C, C, bias=False, **dd)
        self.value = nn.Linear(F_, C, bias=False, **dd)

    def official_init(self, name: str, shape: tuple[int, ...], ctx: InitContext) -> torch.Tensor | None:
        """The official initial value of ``time_mix_k`` / ``time_mix_r`` (v4 and v5; docs/init.md)."""
        return ctx.ddd**ctx.r1a0 if name in ("time_mix_k", "time_mix_r") else None

    def forward(self, x: torch.Tensor, shift: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        prev = token_shift(x, shift)
        r = torch.sigmoid(self.receptance(lerp_mix(x, prev, self.time_mix_r)))
        k = torch.relu(self.key(lerp_mix(x, prev, self.time_mix_k))).square()
        return r * self.value(k), x[:, -1]
