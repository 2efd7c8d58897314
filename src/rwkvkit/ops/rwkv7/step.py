"""WKV-7 for one token: the decoding form.

Same math as :mod:`rwkvkit.ops.rwkv7.naive` for ``T = 1``, without the time dimension, so the
decoding loop pays no reshapes. Inputs ``[B, H, K]`` (``v``: ``[B, H, V]``), state ``[B, H, K, V]``.
"""

from __future__ import annotations

import torch

from rwkvkit.ops._layout import check_bthk, check_same_shape, check_state, compute_dtype, no_autocast
from rwkvkit.ops._tiers import require_one_token


@no_autocast
def wkv7_step(
    r: torch.Tensor,
    log_w: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One WKV-7 step. Returns ``(o [B, H, V] in r.dtype, new state [B, H, K, V] in fp32/fp64)``."""
    op = "wkv7_step"
    for name, x in zip("r log_w k v a b".split(), (r, log_w, k, v, a, b)):
        check_bthk(op, name, x, ndim=3)
    check_same_shape(op, ("r", "log_w", "k", "a", "b"), (r, log_w, k, a, b))
    B, H, K = r.shape
    V = v.shape[-1]
    check_state(op, state, B, H, K, V)
    dt = compute_dtype(r, log_w, k, v, a, b)
    out_dtype = r.dtype
    r, log_w, k, v, a, b = (x.to(dt) for x in (r, log_w, k, v, a, b))
    S = r.new_zeros(B, H, K, V) if state is None else state.to(dt)
    sa = (a.unsqueeze(-2) @ S).squeeze(-2)  # [B, H, V] = a^T S
    S = S * log_w.exp().unsqueeze(-1) + b.unsqueeze(-1) * sa.unsqueeze(-2) + k.unsqueeze(-1) * v.unsqueeze(-2)
    o = (r.unsqueeze(-2) @ S).squeeze(-2)  # [B, H, V] = S^T r
    return o.to(out_dtype), S


def wkv7_one_token(r, log_w, k, v, a, b, state=None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`wkv7_step` in the sequence layout (``[B, 1, H, K]`` in, ``o [B, 1, H, V]`` out): the
    ``step`` tier of :func:`rwkvkit.ops.wkv7`, and the kernel's fallback for one token."""
    require_one_token("wkv7", r.shape[1] if r.dim() == 4 else -1, f"input of shape {tuple(r.shape)}")
    o, S = wkv7_step(*(x[:, 0] for x in (r, log_w, k, v, a, b)), state)
    return o.unsqueeze(1), S
