"""WKV-6 (and WKV-5) for one token: the decoding form.

Same math as :mod:`rwkvkit.ops.rwkv6.naive` for ``T = 1``, without the time dimension, so the
decoding loop pays no reshapes. Inputs ``[B, H, K]`` (``v``: ``[B, H, V]``), state ``[B, H, K, V]``::

    y = S^T r + (r . (u * k)) v          S' = diag(exp(log_w)) S + k v^T
"""

from __future__ import annotations

import torch

from rwkvkit.ops._layout import check_bthk, check_same_shape, check_state, compute_dtype, no_autocast
from rwkvkit.ops._tiers import require_one_token
from rwkvkit.ops.rwkv6.chunk import check_value_layout


@no_autocast
def wkv6_step(
    r: torch.Tensor,
    log_w: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    u: torch.Tensor,
    state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One WKV-6 step.

    Args:
        r, log_w, k: ``[B, H, K]``; ``log_w`` = log of the decay (``<= 0``).
        v: ``[B, H, V]``.
        u: ``[H, K]`` bonus.
        state: ``[B, H, K, V]`` or None (zeros).

    Returns:
        ``(y [B, H, V] in r.dtype, new state [B, H, K, V] in fp32 / fp64)``.
    """
    op = "wkv6_step"
    for name, x in zip("r log_w k v".split(), (r, log_w, k, v)):
        check_bthk(op, name, x, ndim=3)
    check_same_shape(op, ("r", "log_w", "k"), (r, log_w, k))
    check_value_layout(op, r, v)
    B, H, K = r.shape
    V = v.shape[-1]
    if tuple(u.shape) != (H, K):
        raise ValueError(f"{op}: `u` must be [H, K] = {(H, K)}, got {tuple(u.shape)}")
    check_state(op, state, B, H, K, V)
    dt = compute_dtype(r, log_w, k, v, u)
    out_dtype = r.dtype if r.dtype.is_floating_point else dt
    r, log_w, k, v, u = (x.to(dt) for x in (r, log_w, k, v, u))
    S = r.new_zeros(B, H, K, V) if state is None else state.to(dt)
    # the bonus term reads the current token without touching the state: (r . (u * k)) v
    y = (r.unsqueeze(-2) @ S).squeeze(-2) + (r * u * k).sum(-1, keepdim=True) * v  # [B, H, V]
    S = S * log_w.exp().unsqueeze(-1) + k.unsqueeze(-1) * v.unsqueeze(-2)
    return y.to(out_dtype), S


def wkv6_one_token(r, log_w, k, v, u, state=None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`wkv6_step` in the sequence layout (``[B, 1, H, K]`` in, ``y [B, 1, H, V]`` out): the
    ``step`` tier of :func:`rwkvkit.ops.wkv6`, and the kernel's fallback for one token."""
    for name, x in zip("r log_w k v".split(), (r, log_w, k, v)):
        check_bthk("wkv6", name, x)  # before x[:, 0], so a 3-dim input is named, not mis-sliced
    require_one_token("wkv6", r.shape[1], f"input of shape {tuple(r.shape)}")
    y, S = wkv6_step(*(x[:, 0] for x in (r, log_w, k, v)), u, state)
    return y.unsqueeze(1), S


def broadcast_wkv5(op: str, r: torch.Tensor, log_w: torch.Tensor, u: torch.Tensor):
    """WKV-5's decay and bonus, ``[H, K]`` (5.2) or ``[H, 1]`` (5.0 / 5.1), as WKV-6 operands: the
    decay ``[B, T, H, K]`` and the bonus ``[H, K]``, stride-0 views (no copy)."""
    check_bthk(op, "r", r)
    B, T, H, K = r.shape
    for name, x in (("log_w", log_w), ("u", u)):
        if x.dim() != 2 or x.shape[0] != H or x.shape[1] not in (1, K):
            raise ValueError(f"{op}: `{name}` must be [H, K] = {(H, K)} or [H, 1], got {tuple(x.shape)}")
    return log_w.expand(H, K).expand(B, T, H, K), u.expand(H, K)
