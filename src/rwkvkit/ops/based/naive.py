"""BASED linear attention: the Taylor feature map and the quadratic reference.

BASED (Arora et al. 2024, arXiv 2402.18668) replaces ``exp(q.k / sqrt(d))`` by its second-order
Taylor expansion, written as the inner product of a feature map ``phi`` (``d`` = feature dim)::

    phi(x) = [1, x / d^(1/4), vec(x x^T) / (sqrt(2) sqrt(d))]          # 1 + d + d^2 features
    phi(q) . phi(k) = 1 + q.k / sqrt(d) + (q.k)^2 / (2 d)  ~=  exp(q.k / sqrt(d))

``1 + s + s^2 / 2 >= 1/2`` for every real ``s``, so every attention weight is positive. Causal linear
attention with the normaliser (per head, ``i`` and ``t`` time steps)::

    A_ti = phi(q_t) . phi(k_i)          for i <= t (0 otherwise)
    o_t  = sum_i A_ti v_i / (sum_i A_ti + eps)

This module is the reference (trust chain naive -> chunk -> step): it builds the ``T x T`` matrix
from the explicit features. It computes in fp32 (fp64 if given fp64 inputs).
"""

from __future__ import annotations

import math

import torch

from rwkvkit.ops._layout import check_qkv, compute_dtype, no_autocast


def taylor_feature_map(x: torch.Tensor) -> torch.Tensor:
    """Second-order Taylor feature map of BASED: ``[..., d] -> [..., 1 + d + d*d]``.

    ``phi(x) = [1, x / d^(1/4), vec(x x^T) / sqrt(2 d)]`` with the full (not symmetric-packed)
    outer product, row-major ``vec``, so that ``phi(q) . phi(k) = 1 + q.k/sqrt(d) + (q.k)^2/(2d)``.
    Computed in the dtype of ``x`` (the operators cast to fp32 / fp64 before calling it).
    """
    if x.dim() < 1:
        raise ValueError(f"taylor_feature_map: input needs a feature dimension, got shape {tuple(x.shape)}")
    d = x.shape[-1]
    if d < 1:
        raise ValueError(f"taylor_feature_map: feature dimension must be >= 1, got shape {tuple(x.shape)}")
    ones = x.new_ones(*x.shape[:-1], 1)
    x1 = x * d**-0.25
    x2 = (x.unsqueeze(-1) * x.unsqueeze(-2)).flatten(-2) / math.sqrt(2 * d)
    return torch.cat([ones, x1, x2], dim=-1)


def feature_size(d: int) -> int:
    """Number of features ``F = 1 + d + d^2`` of :func:`taylor_feature_map` for feature dim ``d``."""
    return 1 + d + d * d


def check_based(
    op: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float, ndim: int = 4
) -> None:
    """Shapes: ``q, k [B, T, H, D]``, ``v [B, T, H, V]`` (``ndim=3``: no ``T``); ``eps >= 0``."""
    check_qkv(op, q, k, v, ndim=ndim)
    if not eps >= 0:
        raise ValueError(f"{op}: eps must be >= 0, got {eps}")


def check_based_state(
    op: str, state: tuple[torch.Tensor, torch.Tensor] | None, B: int, H: int, F: int, V: int
) -> None:
    """``state = (kv [B, H, F, V], k_sum [B, H, F])`` or None."""
    if state is None:
        return
    if not isinstance(state, (tuple, list)) or len(state) != 2:
        raise ValueError(
            f"{op}: `state` must be a pair (kv [B, H, F, V], k_sum [B, H, F]), got {type(state)}"
        )
    kv, k_sum = state
    if tuple(kv.shape) != (B, H, F, V):
        raise ValueError(
            f"{op}: state `kv` has shape {tuple(kv.shape)}, expected [B, H, F, V] = {(B, H, F, V)}"
        )
    if tuple(k_sum.shape) != (B, H, F):
        raise ValueError(
            f"{op}: state `k_sum` has shape {tuple(k_sum.shape)}, expected [B, H, F] = {(B, H, F)}"
        )


@no_autocast
def based_naive(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Causal BASED linear attention, quadratic form (the reference).

    Args:
        q, k: ``[B, T, H, D]``, BEFORE the feature map (``D`` = feature dim, 16 in BASED).
        v: ``[B, T, H, V]``.
        eps: added to the normaliser ``sum_i A_ti`` (which is ``>= (t + 1) / 2`` anyway).

    Returns:
        ``o [B, T, H, V]`` in ``q.dtype``; computed in fp32 (fp64 for fp64 inputs).
    """
    op = "based_naive"
    check_based(op, q, k, v, eps)
    dt = compute_dtype(q, k, v)
    out_dtype = q.dtype
    T = q.shape[1]
    fq, fk = taylor_feature_map(q.to(dt)), taylor_feature_map(k.to(dt))  # [B, T, H, F]
    A = torch.einsum("bthf,bshf->bhts", fq, fk)  # [B, H, T, T]
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    A = torch.where(causal, A, A.new_zeros(()))
    num = torch.einsum("bhts,bshv->bthv", A, v.to(dt))
    den = A.sum(-1).transpose(1, 2).unsqueeze(-1)  # [B, T, H, 1]
    return (num / (den + eps)).to(out_dtype)
