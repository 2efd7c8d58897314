"""Short causal convolutions: the depthwise convolution and BASED's gated convolution ("BaseConv").

BASED (Arora et al., arXiv 2402.18668) mixes a few linear-attention and sliding-window layers with
many gated short convolutions. The language-model repository's form (HazyResearch/based,
``based/models/mixers/convolution.py``), as described in docs/seed-systems.md#based::

    u1, u2 = split(W_in u)                      # d -> 2 * expand * d / 2 each half
    y = W_out( SiLU(conv_k(u1)) * u2 )          # conv_k: causal depthwise, kernel k (3)

Both work on whole sequences ``[B, T, C]`` (training, prefill) and one token at a time with a
state: the last ``k - 1`` inputs of the convolution, ``[B, k - 1, C]`` (zeros before the first token),
so decoding costs O(k) per token and the state has a fixed size.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class ShortConv(nn.Module):
    """Causal depthwise convolution of kernel ``kernel_size`` over ``[B, T, C]`` (with bias)."""

    def __init__(self, channels: int, kernel_size: int = 3, device=None, dtype=None) -> None:
        super().__init__()
        if kernel_size < 1 or channels < 1:
            raise ValueError(
                f"ShortConv needs channels >= 1 and kernel_size >= 1, got {channels}, {kernel_size}"
            )
        self.channels, self.kernel_size = channels, kernel_size
        self.weight = nn.Parameter(torch.empty(channels, kernel_size, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(channels, device=device, dtype=dtype))
        nn.init.uniform_(self.weight, -(kernel_size**-0.5), kernel_size**-0.5)

    def initial_state(self, batch: int, device=None, dtype=None) -> torch.Tensor:
        """The state before any token: ``[B, kernel_size - 1, C]`` zeros."""
        return torch.zeros(
            batch, self.kernel_size - 1, self.channels, device=device, dtype=dtype or self.weight.dtype
        )

    def forward(
        self, x: torch.Tensor, state: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``x [B, T, C]`` (any T >= 1), ``state`` the previous ``k - 1`` inputs or None ->
        ``(y [B, T, C], new state)``. ``y_t = bias + sum_j weight[:, j] * x_{t - (k - 1) + j}``."""
        if x.dim() != 3 or x.shape[-1] != self.channels:
            raise ValueError(f"ShortConv: x must be [B, T, {self.channels}], got {tuple(x.shape)}")
        B, T, C = x.shape
        k = self.kernel_size
        if state is None:
            state = self.initial_state(B, x.device, x.dtype)
        full = torch.cat([state.to(x.dtype), x], dim=1)  # [B, k - 1 + T, C]
        y = F.conv1d(full.transpose(1, 2), self.weight.unsqueeze(1), self.bias, groups=C).transpose(1, 2)
        new_state = full[:, full.shape[1] - (k - 1) :] if k > 1 else full[:, :0]
        return y, new_state


class BaseConv(nn.Module):
    """BASED's gated short convolution: ``W_out(SiLU(conv(u1)) * u2)``, ``(u1, u2) = W_in u``."""

    def __init__(self, d_model: int, expand: int = 2, kernel_size: int = 3, device=None, dtype=None) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        inner = expand * d_model
        self.in_proj = nn.Linear(d_model, 2 * inner, bias=False, **dd)
        self.conv = ShortConv(inner, kernel_size, **dd)
        self.out_proj = nn.Linear(inner, d_model, bias=False, **dd)

    def initial_state(self, batch: int, device=None, dtype=None) -> torch.Tensor:
        return self.conv.initial_state(batch, device, dtype)

    def forward(
        self, x: torch.Tensor, state: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``x [B, T, d]`` -> ``(y [B, T, d], conv state)``; pieces with carried state equal one call."""
        u1, u2 = self.in_proj(x).chunk(2, dim=-1)
        c, state = self.conv(u1, state)
        return self.out_proj(F.silu(c) * u2), state
