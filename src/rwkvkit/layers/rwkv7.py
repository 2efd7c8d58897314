"""RWKV-7 "Goose" blocks: time mix (the generalized delta rule) and channel mix.

Parameter names and shapes are those of the official checkpoints (``att.x_r``, ``att.w1``, ...),
so an official ``.pth`` loads with an identity key map. Math: docs/rwkv7.md#time-mix::

    d = x_prev - x;  x_* = x + d * x_*                       (token-shift lerps, * in r w k v a g)
    r, k, v = W_r x_r, W_k x_k, W_v x_v
    log_w = -exp(-1/2) * sigmoid(w0 + tanh(x_w w1) w2)     decay = exp(log_w) in (0.545, 1)
    a = sigmoid(a0 + (x_a a1) a2)                          in-context learning rate
    g = sigmoid(x_g g1) g2                                 gate (no nonlinearity after g2)
    v <- v + (v_first - v) * sigmoid(v0 + (x_v v1) v2)      value residual, layers >= 1
    kk = normalize_per_head(k * k_k);  k <- k * (1 + (a - 1) * k_a)
    y = WKV7(r, log_w, k, v, a=-kk, b=kk*a)
    out = W_o( (GroupNorm_H(y) + sum_head(r * k * r_k) * v) * g )
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from rwkvkit.layers.official_init import F64, InitContext, frac, orthogonal
from rwkvkit.layers.token_shift import acc_dtype, token_shift
from rwkvkit.ops import wkv7

_NEG_EXP_HALF = -math.exp(-0.5)  # the official code writes 0.606531
# |log_w| <= exp(-0.5) by construction (sigmoid <= 1; up to fp32 rounding, far inside the chunk-size
# rule's margin): stated to wkv7, which then picks its chunk size without reading log_w on the host
# (no device sync; torch.compile(fullgraph=True) works)
MAX_LOG_DECAY = -_NEG_EXP_HALF


class RWKV7TimeMix(nn.Module):
    """The RWKV-7 attention replacement ("att")."""

    def __init__(
        self, config, layer_id: int, device=None, dtype=None, *, gate: bool = True, group_norm: bool = True
    ) -> None:
        """``gate=False`` drops the output gate ``g`` (no ``x_g``, ``g1``, ``g2``) and
        ``group_norm=False`` the GroupNorm ``ln_x`` on the WKV output: the switches of ARWKV's
        configs (its released 7B has neither). An RWKV-7 language model always has both."""
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        C, H, N = config.n_embd, config.n_head, config.head_size
        self.layer_id = layer_id
        self.n_head, self.head_size = H, N
        self.has_gate, self.has_group_norm = bool(gate), bool(group_norm)

        def p(*shape: int) -> nn.Parameter:
            return nn.Parameter(torch.empty(*shape, **dd))

        # token-shift lerp coefficients, official shape (1, 1, C)
        self.x_r, self.x_w, self.x_k, self.x_v, self.x_a = (p(1, 1, C) for _ in range(5))
        self.x_g = p(1, 1, C) if gate else None
        self.w0, self.w1, self.w2 = p(1, 1, C), p(C, config.lora_w), p(config.lora_w, C)
        self.a0, self.a1, self.a2 = p(1, 1, C), p(C, config.lora_a), p(config.lora_a, C)
        # layer 0 has v0..v2 in official checkpoints too, unused (it *defines* v_first): frozen, so
        # optimisers and DDP (which insists every trainable parameter gets a gradient) skip them
        self.v0, self.v1, self.v2 = p(1, 1, C), p(C, config.lora_v), p(config.lora_v, C)
        if layer_id == 0:
            for unused in (self.v0, self.v1, self.v2):
                unused.requires_grad_(False)
        self.g1, self.g2 = (p(C, config.lora_g), p(config.lora_g, C)) if gate else (None, None)
        self.k_k, self.k_a = p(1, 1, C), p(1, 1, C)
        self.r_k = p(H, N)
        self.receptance = nn.Linear(C, C, bias=False, **dd)
        self.key = nn.Linear(C, C, bias=False, **dd)
        self.value = nn.Linear(C, C, bias=False, **dd)
        self.output = nn.Linear(C, C, bias=False, **dd)
        # eps 64e-5 = 1e-5 * 8^2: training normalises y / 8 with eps 1e-5 (docs/rwkv5.md#groupnorm-eps)
        self.ln_x = nn.GroupNorm(H, C, eps=64e-5, **dd) if group_norm else None

    def official_init(self, name: str, shape: tuple[int, ...], ctx: InitContext) -> torch.Tensor | None:
        """The official initial value of parameter ``name`` of this mix (docs/init.md)."""
        C, N, r01, r1a0 = ctx.config.n_embd, ctx.config.head_size, ctx.r01, ctx.r1a0
        n = torch.arange(C, dtype=F64)
        linear = frac(n, C - 1) - 0.5  # -0.5 .. 0.5 across the channels
        half = (N - 1) / 2
        z = frac((n % N) - half, half)  # -1 .. 1 within each head
        zigzag = z * z.abs()
        powers = {"x_r": 0.2, "x_w": 0.9, "x_k": 0.7, "x_v": 0.7, "x_a": 0.9, "x_g": 0.2}
        if name in powers:
            return 1 - ctx.ddd ** (powers[name] * r1a0)
        if name == "w0":
            return -6 + 6 * frac(n, C - 1) ** (1 + r01**0.3) + 0.5 + 2.5 * zigzag
        if name == "a0":
            return -0.19 + 0.3 * zigzag + 0.4 * linear
        if name == "v0":
            return 0.73 - 0.4 * linear
        if name == "k_k":
            return 0.71 - 0.1 * linear
        if name == "k_a":
            return torch.full(shape, 1.02, dtype=F64)
        if name == "r_k":
            return torch.full(shape, -0.04, dtype=F64)
        if name in ("w1", "a1", "v1", "g1"):
            return torch.zeros(shape)
        if name in ("w2", "a2", "v2", "g2"):
            rows, cols = shape
            gain = 0.1 * (math.sqrt(rows / cols) if rows > cols else 1.0)
            return orthogonal(rows, cols, gain, ctx.generator)
        return None

    def forward(
        self,
        x: torch.Tensor,
        shift: torch.Tensor,
        wkv_state: torch.Tensor,
        v_first: torch.Tensor | None,
        impl: str = "auto",
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One time mix.

        Args:
            x: ``[B, T, C]`` LN1 output.
            shift: ``[B, C]`` LN1 output of the token before ``x[:, 0]``.
            wkv_state: ``[B, H, N, N]`` fp32, key-major.
            v_first: ``[B, T, C]`` layer 0's values (None at layer 0).

        Returns:
            ``(out [B, T, C], new shift [B, C], new wkv state, v_first)``.
        """
        B, T, C = x.shape
        H, N = self.n_head, self.head_size
        d = token_shift(x, shift) - x
        xr, xw, xk, xv, xa = (
            torch.addcmul(x, d, m) for m in (self.x_r, self.x_w, self.x_k, self.x_v, self.x_a)
        )
        r = self.receptance(xr)
        k = self.key(xk)
        v = self.value(xv)
        w_lora = torch.tanh(xw @ self.w1) @ self.w2
        # the decay is computed in fp32 from the model-dtype pre-activation, as the official code does
        log_w = _NEG_EXP_HALF * torch.sigmoid((self.w0 + w_lora).to(acc_dtype(x)))
        a = torch.sigmoid(self.a0 + (xa @ self.a1) @ self.a2)

        kk = F.normalize((k * self.k_k).view(B, T, H, N), dim=-1, p=2.0, eps=1e-12)
        k = k * (1 + (a - 1) * self.k_a)
        if self.layer_id == 0:
            v_first = v
        else:
            v = v + (v_first - v) * torch.sigmoid(self.v0 + (xv @ self.v1) @ self.v2)

        heads = lambda t: t.view(B, T, H, N)  # noqa: E731
        a_h = heads(a)
        y, wkv_state = wkv7(heads(r), log_w.view(B, T, H, N), heads(k), heads(v), -kk, kk * a_h,
                            wkv_state, impl=impl, max_decay=MAX_LOG_DECAY)  # fmt: skip
        y = y.reshape(B * T, C).to(x.dtype)
        y = (self.ln_x(y) if self.ln_x is not None else y).view(B, T, C)
        bonus = (heads(r) * heads(k) * self.r_k).sum(dim=-1, keepdim=True) * heads(v)  # [B, T, H, N]
        y = y + bonus.view(B, T, C)
        if self.x_g is not None:
            y = y * (torch.sigmoid(torch.addcmul(x, d, self.x_g) @ self.g1) @ self.g2)
        return self.output(y), x[:, -1], wkv_state, v_first


class RWKV7ChannelMix(nn.Module):
    """The RWKV-7 feed-forward ("ffn"): ``W_v relu(W_k x_k)^2``, no receptance gate."""

    def __init__(self, config, layer_id: int, device=None, dtype=None) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        C, F_ = config.n_embd, config.dim_ffn
        self.layer_id = layer_id
        self.x_k = nn.Parameter(torch.empty(1, 1, C, **dd))
        self.key = nn.Linear(C, F_, bias=False, **dd)
        self.value = nn.Linear(F_, C, bias=False, **dd)

    def official_init(self, name: str, shape: tuple[int, ...], ctx: InitContext) -> torch.Tensor | None:
        """The official initial value of ``x_k`` (docs/init.md)."""
        return 1 - ctx.ddd ** (ctx.r1a0**4) if name == "x_k" else None

    def forward(self, x: torch.Tensor, shift: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x [B, T, C]`` (LN2 output), ``shift [B, C]`` -> ``(out [B, T, C], new shift [B, C])``."""
        k = torch.addcmul(x, token_shift(x, shift) - x, self.x_k)
        k = torch.relu(self.key(k)).square()
        return self.value(k), x[:, -1]
