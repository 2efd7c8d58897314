"""Sliding-window attention (SWA): exact causal softmax attention over the last ``window`` tokens.

Per head, with ``W = window`` and scale ``1 / sqrt(K)`` (``K`` = key dim)::

    o_t = sum_{t - W < i <= t} softmax_i(q_t . k_i / sqrt(K)) v_i

BASED pairs it with its linear attention (small windows, 64-256) for exact local recall. Three forms:

- :func:`swa_naive`: the full ``T x T`` scores with an explicit band mask (the reference);
- :func:`swa_chunk`: queries in blocks of ``W`` tokens, each attending to its own block and the one
  before it (``[W, 2W]`` scores per block): ``O(T W)`` memory, differentiable;
- :func:`swa_step`: one token against a ring buffer of the last ``W`` keys / values (:class:`SWACache`),
  ``O(W)`` per token: the decoding form.

Layout ``[B, T, H, K]`` (values ``[B, T, H, V]``); softmax in fp32 (fp64 for fp64 inputs), output
in ``q.dtype``. Errors are ``ValueError`` naming the offending argument.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rwkvkit.ops._layout import check_qkv, compute_dtype, no_autocast, to_chunks


def _check_window(op: str, window: int) -> None:
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"{op}: window must be an integer >= 1, got {window!r}")


def _check_qkv(op: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ndim: int = 4) -> None:
    check_qkv(op, q, k, v, ndim=ndim)


def _scale(K: int, scale: float | None) -> float:
    return 1.0 / math.sqrt(K) if scale is None else float(scale)


@no_autocast
def swa_naive(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int, *, scale: float | None = None
) -> torch.Tensor:
    """Reference SWA: ``T x T`` scores, band mask ``t - window < i <= t``, softmax, values.

    Args:
        q, k: ``[B, T, H, K]``; v: ``[B, T, H, V]``.
        window: tokens each position sees, itself included (``>= 1``; ``>= T`` is full causal attention).
        scale: score scale, ``1 / sqrt(K)`` if None.

    Returns:
        ``o [B, T, H, V]`` in ``q.dtype``.
    """
    op = "swa_naive"
    _check_qkv(op, q, k, v)
    _check_window(op, window)
    T, K = q.shape[1], q.shape[-1]
    dt = compute_dtype(q, k, v)
    qh, kh, vh = (x.to(dt).transpose(1, 2) for x in (q, k, v))  # [B, H, T, X]
    scores = (qh @ kh.mT) * _scale(K, scale)  # [B, H, T, T]
    t = torch.arange(T, device=q.device)
    band = (t[None, :] <= t[:, None]) & (t[None, :] > t[:, None] - window)  # [query, key]
    scores = scores.masked_fill(~band, float("-inf"))
    o = torch.softmax(scores, dim=-1) @ vh
    return o.transpose(1, 2).to(q.dtype)


@no_autocast
def swa_chunk(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int, *, scale: float | None = None
) -> torch.Tensor:
    """SWA without the ``T x T`` matrix; same contract as :func:`swa_naive`.

    Queries are cut into blocks of ``C = min(window, T)`` tokens. A query at ``t`` needs keys in
    ``(t - W, t]``, which lie in its own block or the previous one (``C = W``), or all in its own
    block (``C = T <= W``). Each block thus scores against ``2C`` keys: memory ``O(T C)``, and the
    whole thing is batched matrix products (autograd gives the gradients).
    """
    op = "swa_chunk"
    _check_qkv(op, q, k, v)
    _check_window(op, window)
    B, T, H, K = q.shape
    V = v.shape[-1]
    dt = compute_dtype(q, k, v)
    if T == 0:
        return q.new_zeros(B, 0, H, V)
    C = min(window, T)
    N = math.ceil(T / C)

    def blocks(x: torch.Tensor) -> torch.Tensor:
        # [B, T, H, X] -> [B, H, N, C, X], zero-padded at the end (padded keys lie after every
        # real query, so the causal mask hides them)
        return to_chunks(x, C, dt)

    q_, k_, v_ = blocks(q), blocks(k), blocks(v)

    def with_previous(x: torch.Tensor) -> torch.Tensor:
        # [B, H, N, C, X] -> [B, H, N, 2C, X]: block n-1 (zeros for n = 0), then block n
        prev = F.pad(x, (0, 0, 0, 0, 1, 0))[:, :, :N]
        return torch.cat([prev, x], dim=-2)

    k2, v2 = with_previous(k_), with_previous(v_)
    scores = (q_ @ k2.mT) * _scale(K, scale)  # [B, H, N, C, 2C]

    n = torch.arange(N, device=q.device)[:, None, None]
    qpos = n * C + torch.arange(C, device=q.device)[None, :, None]  # [N, C, 1]
    kpos = n * C - C + torch.arange(2 * C, device=q.device)[None, None, :]  # [N, 1, 2C]
    band = (kpos <= qpos) & (kpos > qpos - window) & (kpos >= 0)  # [N, C, 2C]; kpos = qpos always in
    scores = scores.masked_fill(~band, float("-inf"))
    o = torch.softmax(scores, dim=-1) @ v2  # [B, H, N, C, V]
    o = o.permute(0, 2, 3, 1, 4).reshape(B, N * C, H, V)[:, :T]
    return o.to(q.dtype)


@dataclass(frozen=True)
class SWACache:
    """Decoding state of SWA: a ring buffer of the last ``window`` keys and values.

    Attributes:
        k: ``[B, H, window, K]``; v: ``[B, H, window, V]``. Token number ``p`` (0-based) lives in
            slot ``p % window``; slots not yet written are ignored.
        pos: tokens seen so far (the same for every sequence of the batch).

    Softmax attention has no notion of order here (no positional bias inside the op), so the
    ring order of the slots does not matter.
    """

    k: torch.Tensor
    v: torch.Tensor
    pos: int = 0

    @property
    def window(self) -> int:
        return self.k.shape[2]


def swa_initial_cache(
    B: int,
    H: int,
    K: int,
    V: int,
    window: int,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> SWACache:
    """An empty :class:`SWACache` (``pos = 0``). ``dtype`` is the storage dtype of the keys/values
    (e.g. bf16 to halve the cache); scores and softmax are computed in fp32 regardless."""
    _check_window("swa_initial_cache", window)
    for name, n in (("B", B), ("H", H), ("K", K), ("V", V)):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"swa_initial_cache: {name} must be an integer >= 1, got {n!r}")
    k = torch.zeros(B, H, window, K, dtype=dtype, device=device)
    v = torch.zeros(B, H, window, V, dtype=dtype, device=device)
    return SWACache(k, v, 0)


@no_autocast
def swa_step(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: SWACache, *, scale: float | None = None
) -> tuple[torch.Tensor, SWACache]:
    """One SWA token: write ``(k, v)`` into the ring buffer, then attend over the filled slots.

    Args:
        q, k: ``[B, H, K]``; v: ``[B, H, V]``.
        cache: from :func:`swa_initial_cache` or the previous step (its window is ``cache.window``).
        scale: score scale, ``1 / sqrt(K)`` if None.

    Returns:
        ``(o [B, H, V] in q.dtype, new cache)``. The update is functional: the new cache holds new
        buffers (one ``O(window)`` copy) and the given one stays valid, so autograd and rollback work.
    """
    op = "swa_step"
    _check_qkv(op, q, k, v, ndim=3)
    if not isinstance(cache, SWACache):
        raise ValueError(f"{op}: `cache` must be an SWACache (see swa_initial_cache), got {type(cache)}")
    B, H, K = q.shape
    V = v.shape[-1]
    W = cache.window
    if tuple(cache.k.shape) != (B, H, W, K) or tuple(cache.v.shape) != (B, H, W, V):
        raise ValueError(
            f"{op}: cache buffers k {tuple(cache.k.shape)}, v {tuple(cache.v.shape)} do not fit q "
            f"{tuple(q.shape)} / v {tuple(v.shape)}; expected [B, H, window, K] and [B, H, window, V]"
        )
    slot = cache.pos % W
    kb, vb = cache.k.clone(), cache.v.clone()
    kb[:, :, slot] = k.to(kb.dtype)
    vb[:, :, slot] = v.to(vb.dtype)
    dt = compute_dtype(q, kb, vb)
    scores = (kb.to(dt) @ q.to(dt).unsqueeze(-1)).squeeze(-1) * _scale(K, scale)  # [B, H, W]
    filled = cache.pos + 1
    if filled < W:  # slots [filled, W) are still empty
        empty = torch.arange(W, device=q.device) >= filled
        scores = scores.masked_fill(empty, float("-inf"))
    o = (torch.softmax(scores, dim=-1).unsqueeze(-2) @ vb.to(dt)).squeeze(-2)  # [B, H, V]
    return o.to(q.dtype), SWACache(kb, vb, cache.pos + 1)


__all__ = ["swa_naive", "swa_chunk", "swa_step", "swa_initial_cache", "SWACache"]
