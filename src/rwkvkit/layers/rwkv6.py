"""RWKV-6 "Finch" blocks: data-dependent token shift (ddlerp) and data-dependent decay.

Math (docs/rwkv6.md#time-mix), with ``d = x' - x`` (previous minus current LN output)::

    m = tanh((x + d * maa_x) @ maa_w1) viewed (5, D_mix);  [mw, mk, mv, mr, mg] = m_i @ maa_w2[i]
    x_* = x + d * (maa_* + m*)                                   (* in w k v r g)
    r, k, v = W_r x_r, W_k x_k, W_v x_v;   g = silu(W_g x_g)
    log_w = -exp(time_decay + tanh(x_w @ decay_w1) @ decay_w2)   per token and channel, fp32
    y = WKV6(r, log_w, k, v, u = time_faaaa)
    out = W_o( GroupNorm_H(y; eps 64e-5) * g )

    channel mix: sigmoid(W_r (x + d maa_r)) * W_v relu(W_k (x + d maa_k))^2
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from rwkvkit.layers.official_init import InitContext, symmetric_uniform
from rwkvkit.layers.token_shift import acc_dtype, token_shift
from rwkvkit.ops import wkv6


class RWKV6TimeMix(nn.Module):
    def __init__(self, config, layer_id: int, device=None, dtype=None) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        C, A, H, N = config.n_embd, config.dim_att, config.n_head, config.head_size
        D_mix, D_dec = config.lora_mix, config.lora_decay
        self.layer_id = layer_id
        self.n_head, self.head_size = H, N

        def p(*shape: int) -> nn.Parameter:
            return nn.Parameter(torch.empty(*shape, **dd))

        self.time_maa_x, self.time_maa_w, self.time_maa_k = p(1, 1, C), p(1, 1, C), p(1, 1, C)
        self.time_maa_v, self.time_maa_r, self.time_maa_g = p(1, 1, C), p(1, 1, C), p(1, 1, C)
        self.time_maa_w1, self.time_maa_w2 = p(C, 5 * D_mix), p(5, D_mix, C)
        self.time_decay = p(1, 1, A)
        self.time_decay_w1, self.time_decay_w2 = p(C, D_dec), p(D_dec, A)
        self.time_faaaa = p(H, N)
        self.receptance = nn.Linear(C, A, bias=False, **dd)
        self.key = nn.Linear(C, A, bias=False, **dd)
        self.value = nn.Linear(C, A, bias=False, **dd)
        self.gate = nn.Linear(C, A, bias=False, **dd)
        self.output = nn.Linear(A, C, bias=False, **dd)
        self.ln_x = nn.GroupNorm(H, A, eps=64e-5, **dd)

    def official_init(self, name: str, shape: tuple[int, ...], ctx: InitContext) -> torch.Tensor | None:
        """The official initial value of parameter ``name`` of this mix (docs/init.md)."""
        ddd, r01, r1a0 = ctx.ddd, ctx.r01, ctx.r1a0
        table = {
            "time_maa_x": lambda: 1 - ddd**r1a0,
            "time_maa_w": lambda: 1 - ddd**r1a0,
            "time_maa_k": lambda: 1 - ddd**r1a0,
            "time_maa_v": lambda: 1 - (ddd**r1a0 + 0.3 * r01),
            "time_maa_r": lambda: 1 - ddd ** (0.5 * r1a0),
            "time_maa_g": lambda: 1 - ddd ** (0.5 * r1a0),
            "time_maa_w1": lambda: torch.zeros(shape),
            "time_decay_w1": lambda: torch.zeros(shape),
            "time_maa_w2": lambda: symmetric_uniform(shape, 0.01, ctx.generator),
            "time_decay_w2": lambda: symmetric_uniform(shape, 0.01, ctx.generator),
            "time_decay": ctx.per_channel_decay,
            "time_faaaa": ctx.per_channel_bonus,
        }
        return table[name]() if name in table else None

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
        d = token_shift(x, shift) - x
        m = torch.tanh(torch.addcmul(x, d, self.time_maa_x) @ self.time_maa_w1)  # [B, T, 5 D]
        m = torch.einsum("btfd,fdc->fbtc", m.view(B, T, 5, -1), self.time_maa_w2)  # [5, B, T, C]
        mw, mk, mv, mr, mg = m.unbind(0)
        xw = torch.addcmul(x, d, self.time_maa_w + mw)
        xk = torch.addcmul(x, d, self.time_maa_k + mk)
        xv = torch.addcmul(x, d, self.time_maa_v + mv)
        xr = torch.addcmul(x, d, self.time_maa_r + mr)
        xg = torch.addcmul(x, d, self.time_maa_g + mg)
        heads = lambda t: t.view(B, T, H, N)  # noqa: E731
        r, k, v = heads(self.receptance(xr)), heads(self.key(xk)), heads(self.value(xv))
        g = F.silu(self.gate(xg))
        acc = acc_dtype(x)  # the decay, the WKV and GroupNorm in fp32, as the official package
        w_raw = self.time_decay.to(acc) + (torch.tanh(xw @ self.time_decay_w1) @ self.time_decay_w2).to(acc)
        log_w = -torch.exp(w_raw)  # decay exp(-exp(w_raw)), kept in log form for the WKV
        y, wkv_state = wkv6(r, heads(log_w), k, v, self.time_faaaa.to(acc), wkv_state, impl=impl)
        y = F.group_norm(
            y.reshape(B * T, -1).to(acc), H, self.ln_x.weight.to(acc), self.ln_x.bias.to(acc), 64e-5
        )
        y = y.view(B, T, -1).to(x.dtype)
        return self.output(y * g), x[:, -1], wkv_state, None


class RWKV6ChannelMix(nn.Module):
    def __init__(self, config, layer_id: int, device=None, dtype=None) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        C, F_ = config.n_embd, config.dim_ffn
        self.layer_id = layer_id
        self.time_maa_k = nn.Parameter(torch.empty(1, 1, C, **dd))
        self.time_maa_r = nn.Parameter(torch.empty(1, 1, C, **dd))
        self.key = nn.Linear(C, F_, bias=False, **dd)
        self.receptance = nn.Linear(C, C, bias=False, **dd)
        self.value = nn.Linear(F_, C, bias=False, **dd)

    def official_init(self, name: str, shape: tuple[int, ...], ctx: InitContext) -> torch.Tensor | None:
        """The official initial value of ``time_maa_k`` / ``time_maa_r`` (docs/init.md)."""
        return 1 - ctx.ddd ** (ctx.r1a0**3) if name in ("time_maa_k", "time_maa_r") else None

    def forward(self, x: torch.Tensor, shift: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        d = token_shift(x, shift) - x
        r = torch.sigmoid(self.receptance(torch.addcmul(x, d, self.time_maa_r)))
        k = torch.relu(self.key(torch.addcmul(x, d, self.time_maa_k))).square()
        return r * self.value(k), x[:, -1]
