"""BASED linear attention in chunked-parallel form, pure PyTorch (CPU and GPU, differentiable).

The sequence is cut into chunks of ``C`` tokens. Per head, with ``phi`` the Taylor feature map
(:func:`rwkvkit.ops.based.naive.taylor_feature_map`, ``F = 1 + D + D^2`` features) and the running
state at the start of chunk ``n``::

    KV_n = KV_0 + sum_{i < nC} phi(k_i) v_i^T      [F, V]
    Z_n  = Z_0  + sum_{i < nC} phi(k_i)            [F]

a position ``t`` of chunk ``n`` gets::

    num_t = phi(q_t)^T KV_n + sum_{nC <= i <= t} A_ti v_i      A_ti = 1 + s + s^2/2, s = q_t.k_i / sqrt(D)
    den_t = phi(q_t) . Z_n  + sum_{nC <= i <= t} A_ti
    o_t   = num_t / (den_t + eps)

The intra-chunk weights use the closed form of ``phi(q).phi(k)`` (a ``[C, D]`` product instead of
``[C, F]``); the inter-chunk part uses the explicit features. The chunk states are one exclusive
cumulative sum over chunks (no Python loop), so everything is batched matrix products.
Memory: ``O(T C + (T / C) F V)`` per head.
"""

from __future__ import annotations

import math

import torch

from rwkvkit.ops._layout import compute_dtype, no_autocast, to_chunks
from rwkvkit.ops.based.naive import check_based, check_based_state, feature_size, taylor_feature_map

DEFAULT_CHUNK_SIZE = 64


@no_autocast
def based_chunk(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    state: tuple[torch.Tensor, torch.Tensor] | None = None,
    eps: float = 1e-6,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """Chunked-parallel causal BASED linear attention; same outputs as :func:`based_naive`.

    Args:
        q, k: ``[B, T, H, D]`` before the feature map. v: ``[B, T, H, V]``.
        state: optional ``(kv [B, H, F, V], k_sum [B, H, F])`` with ``F = 1 + D + D^2``: the sums
            ``sum_i phi(k_i) v_i^T`` and ``sum_i phi(k_i)`` over earlier tokens (zeros if None).
        eps: added to the normaliser.
        chunk_size: tokens per chunk; ``T`` need not be a multiple (the tail is padded and masked).

    Returns:
        ``(o, (kv, k_sum))``: ``o [B, T, H, V]`` in ``q.dtype``; the final state in the compute
        dtype (fp32, or fp64 for fp64 inputs).

    Example::

        >>> q, k = torch.randn(2, 100, 4, 16), torch.randn(2, 100, 4, 16)
        >>> v = torch.randn(2, 100, 4, 64)
        >>> o, state = based_chunk(q, k, v)           # o [2, 100, 4, 64]; state[0] [2, 4, 273, 64]
        >>> o2, state = based_chunk(q, k, v, state)   # continue the same sequences
    """
    op = "based_chunk"
    check_based(op, q, k, v, eps)
    if chunk_size < 1:
        raise ValueError(f"{op}: chunk_size must be >= 1, got {chunk_size}")
    B, T, H, D = q.shape
    V = v.shape[-1]
    F = feature_size(D)
    check_based_state(op, state, B, H, F, V)
    dt = compute_dtype(q, k, v)
    out_dtype = q.dtype
    if state is None:
        kv0, z0 = q.new_zeros(B, H, F, V, dtype=dt), q.new_zeros(B, H, F, dtype=dt)
    else:
        kv0, z0 = state[0].to(dt), state[1].to(dt)
    if T == 0:
        return q.new_zeros(B, 0, H, V), (kv0, z0)

    C = min(chunk_size, T)
    N = math.ceil(T / C)
    pad = N * C - T

    def chunked(x: torch.Tensor) -> torch.Tensor:
        # [B, T, H, X] -> [B, H, N, C, X], zero-padded at the end
        return to_chunks(x, C, dt)

    q_, k_, v_ = chunked(q), chunked(k), chunked(v)

    # intra-chunk: A = 1 + s + s^2/2 with s = q.k / sqrt(D), causal inside the chunk
    s = (q_ @ k_.mT) / math.sqrt(D)  # [B, H, N, C, C]
    idx = torch.arange(C, device=q.device)
    causal = idx[:, None] >= idx[None, :]
    A = torch.where(causal, 1 + s + 0.5 * s * s, s.new_zeros(()))
    num = A @ v_  # [B, H, N, C, V]
    den = A.sum(-1)  # [B, H, N, C]

    # inter-chunk: the state at the start of each chunk. Padded keys are not zero features
    # (phi(0) = [1, 0, ...]), so they are masked out of the sums explicitly.
    fk = taylor_feature_map(k_)  # [B, H, N, C, F]
    if pad:
        valid = (torch.arange(N * C, device=q.device) < T).view(N, C, 1).to(dt)
        fk = fk * valid
    kv_c = fk.mT @ v_  # [B, H, N, F, V]: each chunk's own contribution
    z_c = fk.sum(-2)  # [B, H, N, F]
    kv_all = torch.cat([kv0.unsqueeze(2), kv_c], dim=2).cumsum(2)  # [B, H, N + 1, F, V]
    z_all = torch.cat([z0.unsqueeze(2), z_c], dim=2).cumsum(2)  # [B, H, N + 1, F]

    fq = taylor_feature_map(q_)  # [B, H, N, C, F]
    num = num + fq @ kv_all[:, :, :N]
    den = den + (fq @ z_all[:, :, :N].unsqueeze(-1)).squeeze(-1)
    o = num / (den + eps).unsqueeze(-1)
    o = o.permute(0, 2, 3, 1, 4).reshape(B, N * C, H, V)[:, :T]
    return o.to(out_dtype), (kv_all[:, :, N], z_all[:, :, N])
