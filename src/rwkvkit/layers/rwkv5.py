"""RWKV-5 "Eagle" time mix (sub-versions 5.0, 5.1, 5.2): matrix-valued state per head.

Math (docs/rwkv5.md#time-mix), lerps as in RWKV-4::

    r, k, v = W_r x_r, W_k x_k, W_v x_v                        (per head, fp32)
    decay = exp(-exp(time_decay))   per head (5.0, 5.1) or per channel (5.2)
    u = time_faaaa, or exp(time_first) in files that store its log
    y = WKV5(r, decay, k, v, u)
    out = W_o( GroupNorm_H(y; eps 64e-5) * silu(W_g x_g) )      (no gate in 5.0)

The channel mix is RWKV-4's (:class:`rwkvkit.layers.rwkv4.RWKV4ChannelMix`).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from rwkvkit.layers.official_init import F64, InitContext, frac
from rwkvkit.layers.rwkv4 import lerp_mix
from rwkvkit.layers.token_shift import acc_dtype, token_shift
from rwkvkit.ops import wkv5


class RWKV5TimeMix(nn.Module):
    def __init__(
        self, config, layer_id: int, device=None, dtype=None, *, gate: bool = True, per_channel: bool = True
    ) -> None:
        """``gate``: an output gate (v5.1, v5.2; not v5.0). ``per_channel``: a decay and a bonus per
        channel ``(H, N)`` (v5.2) instead of per head ``(H,)`` (v5.0, v5.1). The version specs in
        :mod:`rwkvkit.models.rwkv.versions` set both."""
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        C, A, H, N = config.n_embd, config.dim_att, config.n_head, config.head_size
        self.layer_id = layer_id
        self.n_head, self.head_size = H, N
        self.has_gate, self.per_channel = bool(gate), bool(per_channel)
        decay_shape = (H, N) if per_channel else (H,)
        self.time_mix_k = nn.Parameter(torch.empty(1, 1, C, **dd))
        self.time_mix_v = nn.Parameter(torch.empty(1, 1, C, **dd))
        self.time_mix_r = nn.Parameter(torch.empty(1, 1, C, **dd))
        if self.has_gate:
            self.time_mix_g = nn.Parameter(torch.empty(1, 1, C, **dd))
        self.time_decay = nn.Parameter(torch.empty(*decay_shape, **dd))
        # the bonus is stored linearly (time_faaaa) or as its log (time_first), as the file has it
        self.log_bonus = config.v5_log_bonus
        if self.log_bonus:
            self.time_first = nn.Parameter(torch.empty(*decay_shape, **dd))
        else:
            self.time_faaaa = nn.Parameter(torch.empty(*decay_shape, **dd))
        self.receptance = nn.Linear(C, A, bias=False, **dd)
        self.key = nn.Linear(C, A, bias=False, **dd)
        self.value = nn.Linear(C, A, bias=False, **dd)
        if self.has_gate:
            self.gate = nn.Linear(C, A, bias=False, **dd)
        self.output = nn.Linear(A, C, bias=False, **dd)
        # eps 64e-5 = 1e-5 * 8^2: training normalises y / 8 with eps 1e-5 (docs/rwkv5.md#groupnorm-eps)
        self.ln_x = nn.GroupNorm(H, A, eps=64e-5, **dd)

    def official_init(self, name: str, shape: tuple[int, ...], ctx: InitContext) -> torch.Tensor | None:
        """The official initial value of parameter ``name`` of this mix (docs/init.md): v5.2's
        trainer; the preview trainer's per-head formulas for v5.0 / v5.1."""
        lerp = ctx.lerp_current()
        if name in lerp:
            return lerp[name]
        if name == "time_first":  # any v5 file that stores the bonus as its log
            return torch.full(shape, -3.0, dtype=F64)
        if self.per_channel:
            if name == "time_decay":
                return ctx.per_channel_decay()
            if name == "time_faaaa":
                return ctx.per_channel_bonus()
            return None
        H = self.n_head
        h = torch.arange(H, dtype=F64)
        if name == "time_decay":
            return -6 + 5 * frac(h, H - 1) ** (0.7 + 1.3 * ctx.r01)
        if name == "time_faaaa":
            return ctx.r01 * (1 - frac(h, H - 1))
        return None

    def bonus(self, dtype: torch.dtype) -> torch.Tensor:
        """u as ``[H, N]`` or ``[H, 1]``."""
        u = torch.exp(self.time_first.to(dtype)) if self.log_bonus else self.time_faaaa.to(dtype)
        return u.view(self.n_head, -1)

    def forward(
        self,
        x: torch.Tensor,
        shift: torch.Tensor,
        wkv_state: torch.Tensor,
        v_first: torch.Tensor | None = None,
        impl: str = "auto",
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, None]:
        """``x [B, T, C]`` (LN1 output), ``shift [B, C]``, ``wkv_state [B, H, N, N]`` key-major."""
        B, T, C = x.shape
        H, N = self.n_head, self.head_size
        acc = acc_dtype(x)  # r, k, v, the decay and GroupNorm in fp32, as the official package
        prev = token_shift(x, shift)
        heads = lambda t: t.to(acc).view(B, T, H, N)  # noqa: E731
        r = heads(self.receptance(lerp_mix(x, prev, self.time_mix_r)))
        k = heads(self.key(lerp_mix(x, prev, self.time_mix_k)))
        v = heads(self.value(lerp_mix(x, prev, self.time_mix_v)))
        log_w = -torch.exp(self.time_decay.to(acc)).view(H, -1)  # [H, N] or [H, 1]
        y, wkv_state = wkv5(r, log_w, k, v, self.bonus(acc), wkv_state, impl=impl)
        y = F.group_norm(y.reshape(B * T, -1), H, self.ln_x.weight.to(acc), self.ln_x.bias.to(acc), 64e-5)
        y = y.view(B, T, -1).to(x.dtype)
        if self.has_gate:
            y = y * F.silu(self.gate(lerp_mix(x, prev, self.time_mix_g)))
        return self.output(y), x[:, -1], wkv_state, None
