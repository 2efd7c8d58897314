"""BASED's attention layers: Taylor linear attention and sliding-window attention, with the
recurrent (decoding) forms of both. The math lives in :mod:`rwkvkit.ops.based` and
:mod:`rwkvkit.ops.sliding_window`; these modules add the projections.

Shapes: ``x [B, T, d]``; ``n_heads`` heads of ``d / n_heads`` value channels. Linear attention
projects q and k to ``n_heads x feature_dim`` (BASED: 16 x 16) and applies the second-order Taylor
map, so its state per head is ``(1 + D + D^2) x (d / n_heads + 1)`` numbers whatever the length.
Sliding-window attention keeps the last ``window`` keys and values (a ring buffer).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from rwkvkit.ops.based import based_chunk, based_step
from rwkvkit.ops.sliding_window import SWACache, swa_chunk, swa_initial_cache, swa_step


class BasedLinearAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, feature_dim: int = 16, device=None, dtype=None) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.n_heads, self.feature_dim, self.head_dim = n_heads, feature_dim, d_model // n_heads
        self.q_proj = nn.Linear(d_model, n_heads * feature_dim, bias=False, **dd)
        self.k_proj = nn.Linear(d_model, n_heads * feature_dim, bias=False, **dd)
        self.v_proj = nn.Linear(d_model, d_model, bias=False, **dd)
        self.out_proj = nn.Linear(d_model, d_model, bias=False, **dd)

    def forward(self, x: torch.Tensor, state=None):
        """``x [B, T, d]``, ``state`` ``(kv, k_sum)`` or None -> ``(y [B, T, d], new state)``."""
        B, T, _ = x.shape
        H, D = self.n_heads, self.feature_dim
        q = self.q_proj(x).view(B, T, H, D)
        k = self.k_proj(x).view(B, T, H, D)
        v = self.v_proj(x).view(B, T, H, self.head_dim)
        if T == 1:
            o, state = based_step(q[:, 0], k[:, 0], v[:, 0], state)
            o = o.unsqueeze(1)
        else:
            o, state = based_chunk(q, k, v, state)
        return self.out_proj(o.reshape(B, T, -1)), state


class SlidingWindowAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, window: int, device=None, dtype=None) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.n_heads, self.head_dim, self.window = n_heads, d_model // n_heads, window
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False, **dd)
        self.out_proj = nn.Linear(d_model, d_model, bias=False, **dd)

    def forward(self, x: torch.Tensor, cache: SWACache | None = None):
        """``x [B, T, d]``, ``cache`` or None -> ``(y [B, T, d], new cache)``."""
        B, T, d = x.shape
        H, N, W = self.n_heads, self.head_dim, self.window
        q, k, v = (t.reshape(B, T, H, N) for t in self.qkv(x).split(d, dim=-1))
        if cache is None and T > 1:  # a fresh sequence: the parallel form, then the last W tokens
            o = swa_chunk(q, k, v, W)
            cache = _cache_from(k, v, W)
        else:  # decoding (or a prompt continuing a cache): one ring-buffer step per token
            if cache is None:
                cache = swa_initial_cache(B, H, N, N, W, dtype=k.dtype, device=x.device)
            outs = []
            for t in range(T):
                o_t, cache = swa_step(q[:, t], k[:, t], v[:, t], cache)
                outs.append(o_t)
            o = torch.stack(outs, dim=1)
        return self.out_proj(o.reshape(B, T, d)), cache


def _cache_from(k: torch.Tensor, v: torch.Tensor, window: int) -> SWACache:
    """The ring buffer after tokens ``0 .. T-1``: token ``p`` in slot ``p % window``."""
    B, T, H, N = k.shape
    kb = k.new_zeros(B, H, window, N)
    vb = v.new_zeros(B, H, window, v.shape[-1])
    first = max(0, T - window)
    slots = torch.arange(first, T, device=k.device) % window
    kb[:, :, slots] = k[:, first:].transpose(1, 2)
    vb[:, :, slots] = v[:, first:].transpose(1, 2)
    return SWACache(kb, vb, T)
