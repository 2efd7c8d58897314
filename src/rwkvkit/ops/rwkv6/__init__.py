"""WKV-6 / WKV-5 (RWKV-5 Eagle, RWKV-6 Finch) in three tiers: ``naive`` (reference loop), ``chunk``
(parallel), ``step`` (one token). WKV-5 is WKV-6 with a decay constant over time (:func:`wkv5`)."""

from __future__ import annotations

import torch

from rwkvkit.ops._layout import check_bthk
from rwkvkit.ops.rwkv6.chunk import DEFAULT_CHUNK_SIZE, DEFAULT_SUB_CHUNK_SIZE, wkv6_chunk
from rwkvkit.ops.rwkv6.naive import wkv6_naive
from rwkvkit.ops.rwkv6.step import wkv6_step

IMPLS = ("auto", "naive", "chunk", "step", "kernel")


def wkv6(
    r: torch.Tensor,
    log_w: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    u: torch.Tensor,
    state: torch.Tensor | None = None,
    *,
    impl: str = "auto",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """WKV-6 over a sequence: ``(y [B, T, H, V], state [B, H, K, V])``; see :func:`wkv6_naive`.

    ``impl``: ``"naive"``, ``"chunk"``, ``"step"`` (needs ``T == 1``) or ``"auto"``: the one-token
    form when ``T == 1`` (decoding: no chunk set-up to pay), the chunked form otherwise. ``"kernel"``: the
    sequential C++ recurrence of :mod:`rwkvkit.inference.kernels.wkv_seq` (CPU, forward only, fp32;
    imported on first use; where it cannot run it falls back to ``step`` / ``chunk``).
    """
    if impl not in IMPLS:
        raise ValueError(f"wkv6: unknown impl {impl!r}; choose one of {IMPLS}")
    if impl == "kernel":
        from rwkvkit.inference.kernels import wkv_seq  # imports rwkvkit.ops: only on first use

        return wkv_seq.wkv6_kernel(r, log_w, k, v, u, state)
    T = r.shape[1] if r.dim() == 4 else -1
    if impl == "auto":
        impl = "step" if T == 1 else "chunk"
    if impl == "naive":
        return wkv6_naive(r, log_w, k, v, u, state)
    if impl == "chunk":
        return wkv6_chunk(r, log_w, k, v, u, state, chunk_size=chunk_size)
    for name, x in zip("r log_w k v".split(), (r, log_w, k, v)):
        check_bthk("wkv6", name, x)  # before x[:, 0], so a 3-dim input is named, not mis-sliced
    if T != 1:
        raise ValueError(f"wkv6: impl='step' takes one token (T == 1), got input of shape {tuple(r.shape)}")
    y, S = wkv6_step(*(x[:, 0] for x in (r, log_w, k, v)), u, state)
    return y.unsqueeze(1), S


def wkv5(
    r: torch.Tensor,
    log_w: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    u: torch.Tensor,
    state: torch.Tensor | None = None,
    *,
    impl: str = "auto",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """WKV-5: WKV-6 with a decay constant over time.

    ``log_w`` is ``[H, K]`` (5.2: per channel) or ``[H, 1]`` (5.0/5.1: per head); ``u`` likewise
    ``[H, K]`` or ``[H, 1]``. Both are broadcast (as views, no copy) to the WKV-6 shapes.
    """
    check_bthk("wkv5", "r", r)
    B, T, H, K = r.shape
    for name, x in (("log_w", log_w), ("u", u)):
        if x.dim() != 2 or x.shape[0] != H or x.shape[1] not in (1, K):
            raise ValueError(f"wkv5: `{name}` must be [H, K] = {(H, K)} or [H, 1], got {tuple(x.shape)}")
    log_w = log_w.expand(H, K).expand(B, T, H, K)  # stride-0 views over B and T
    return wkv6(r, log_w, k, v, u.expand(H, K), state, impl=impl, chunk_size=chunk_size)


__all__ = [
    "wkv5", "wkv6", "wkv6_naive", "wkv6_chunk", "wkv6_step",
    "DEFAULT_CHUNK_SIZE", "DEFAULT_SUB_CHUNK_SIZE", "IMPLS",
]  # fmt: skip
