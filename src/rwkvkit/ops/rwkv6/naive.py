"""WKV-6 (and WKV-5) reference: the RWKV-5/6 recurrence of docs/rwkv6.md#recurrence, a readable loop over T.

Per head, key-major state ``S`` ``[K, V]`` (the official v5/v6 package layout ``S[key, value]``)::

    y_t = S_{t-1}^T r_t + (r_t . (u * k_t)) v_t          # bonus u on the current token
    S_t = diag(w_t) S_{t-1} + k_t v_t^T                 # w_t = exp(log_w_t)

RWKV-6 has a data-dependent decay per token and channel; RWKV-5 a constant one (per channel in
5.2, per head in 5.0/5.1), passed here broadcast over ``T`` (see :func:`rwkvkit.ops.wkv5`).
"""

from __future__ import annotations

import torch

from rwkvkit.ops._layout import check_bthk, check_same_shape, check_state, check_v, compute_dtype, no_autocast


def check_wkv6(op: str, r, log_w, k, v, u, state) -> None:
    for name, x in zip("r log_w k v".split(), (r, log_w, k, v)):
        check_bthk(op, name, x)
    check_same_shape(op, ("r", "log_w", "k"), (r, log_w, k))
    check_v(op, r, v)
    B, T, H, K = r.shape
    if tuple(u.shape) != (H, K):
        raise ValueError(f"{op}: `u` must be [H, K] = {(H, K)}, got {tuple(u.shape)}")
    check_state(op, state, B, H, K, v.shape[-1])


@no_autocast
def wkv6_naive(
    r: torch.Tensor,
    log_w: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    u: torch.Tensor,
    state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequential WKV-6.

    Args:
        r, log_w, k: ``[B, T, H, K]``; ``log_w`` = log of the decay (``<= 0``; ``-exp(w_raw)``
            in RWKV-5/6, may be very negative).
        v: ``[B, T, H, V]``.
        u: ``[H, K]`` bonus (``time_faaaa``).
        state: ``[B, H, K, V]`` or None (zeros).

    Returns:
        ``(y [B, T, H, V] in r.dtype, state [B, H, K, V] in fp32 / fp64)``.
    """
    check_wkv6("wkv6_naive", r, log_w, k, v, u, state)
    B, T, H, K = r.shape
    V = v.shape[-1]
    dt = compute_dtype(r, log_w, k, v, u)
    out_dtype = r.dtype
    r, log_w, k, v, u = (x.to(dt) for x in (r, log_w, k, v, u))
    S = r.new_zeros(B, H, K, V) if state is None else state.to(dt)
    w = torch.exp(log_w)
    out = []
    # unbind, not x[:, t]: indexing in a loop makes autograd write a full-size gradient per step
    for r_t, w_t, k_t, v_t in zip(*(x.unbind(1) for x in (r, w, k, v))):
        kv = k_t[..., None] * v_t[:, :, None, :]  # [B, H, K, V]
        out.append(torch.einsum("bhk,bhkv->bhv", r_t, S + u[:, :, None] * kv))
        S = S * w_t[..., None] + kv
    y = torch.stack(out, dim=1) if out else r.new_zeros(B, 0, H, V)
    return y.to(out_dtype), S
