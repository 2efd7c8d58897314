"""BASED linear attention for one token: the recurrent (decoding) form, and the state size.

Per head, with ``phi`` the Taylor feature map (``F = 1 + D + D^2`` features)::

    KV_t = KV_{t-1} + phi(k_t) v_t^T       [F, V]
    Z_t  = Z_{t-1}  + phi(k_t)             [F]
    o_t  = KV_t^T phi(q_t) / (Z_t . phi(q_t) + eps)      # the UPDATED state: token t sees itself

Same math as :mod:`rwkvkit.ops.based.naive` for one position; O(F V) per token and head.
"""

from __future__ import annotations

import torch

from rwkvkit.ops._layout import compute_dtype, no_autocast
from rwkvkit.ops.based.naive import check_based, check_based_state, feature_size, taylor_feature_map


@no_autocast
def based_step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    state: tuple[torch.Tensor, torch.Tensor] | None = None,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """One BASED step.

    Args:
        q, k: ``[B, H, D]`` (before the feature map). v: ``[B, H, V]``.
        state: ``(kv [B, H, F, V], k_sum [B, H, F])`` or None (zeros: the first token).
        eps: added to the normaliser.

    Returns:
        ``(o [B, H, V] in q.dtype, (kv, k_sum))`` with the new state in fp32 (fp64 for fp64 inputs).
    """
    op = "based_step"
    check_based(op, q, k, v, eps, ndim=3)
    B, H, D = q.shape
    V = v.shape[-1]
    F = feature_size(D)
    check_based_state(op, state, B, H, F, V)
    dt = compute_dtype(q, k, v)
    out_dtype = q.dtype
    fq, fk = taylor_feature_map(q.to(dt)), taylor_feature_map(k.to(dt))  # [B, H, F]
    v = v.to(dt)
    if state is None:
        kv, z = fk.unsqueeze(-1) * v.unsqueeze(-2), fk
    else:
        kv = state[0].to(dt) + fk.unsqueeze(-1) * v.unsqueeze(-2)
        z = state[1].to(dt) + fk
    num = (fq.unsqueeze(-2) @ kv).squeeze(-2)  # [B, H, V]
    den = (fq * z).sum(-1, keepdim=True)  # [B, H, 1]
    return (num / (den + eps)).to(out_dtype), (kv, z)


def based_state_size(D: int, V: int, H: int, symmetric: bool = True) -> int:
    """Recurrent state floats per sequence of one BASED layer: ``H * (V + 1) * F``.

    Each head keeps ``kv [F, V]`` and the normaliser ``k_sum [F]``, i.e. ``F (V + 1)`` floats, where
    ``F`` is the number of features of the Taylor map of a ``D``-dim key:

    - ``symmetric=True`` (default; BASED's own accounting, the x-axis of its recall/state plots):
      ``F = D (D + 1) / 2 + D + 1``, since ``x x^T`` is symmetric and only its upper triangle is
      independent (153 for ``D = 16``);
    - ``symmetric=False``: ``F = 1 + D + D^2``, what :func:`based_chunk` / :func:`based_step`
      actually store (the full outer product; 273 for ``D = 16``).

    Example: BASED-360M (``D = 16``, 16 heads of ``V = 64``) -> ``16 * 65 * 153 = 159120``.
    """
    for name, n in (("D", D), ("V", V), ("H", H)):
        if int(n) != n or n < 1:
            raise ValueError(f"based_state_size: {name} must be a positive integer, got {n!r}")
    F = D * (D + 1) // 2 + D + 1 if symmetric else feature_size(D)
    return H * (V + 1) * F
