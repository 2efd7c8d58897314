"""WKV-4 (RWKV-4): the stable recurrence (``naive``), chunked-parallel (``chunk``), one token (``step``)."""

from __future__ import annotations

import torch

from rwkvkit.ops.rwkv4.chunk import DEFAULT_CHUNK_SIZE, wkv4_chunk
from rwkvkit.ops.rwkv4.naive import PP_INIT, check_wkv4, wkv4_initial_state, wkv4_naive
from rwkvkit.ops.rwkv4.step import wkv4_step

IMPLS = ("auto", "naive", "chunk", "step", "kernel")


def wkv4(
    w: torch.Tensor,
    u: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    state: torch.Tensor | None = None,
    *,
    impl: str = "auto",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """WKV-4 over a sequence: ``(wkv [B, T, C], state [B, 3, C])``; see :func:`wkv4_naive`.

    ``impl``: ``"naive"``, ``"chunk"``, ``"step"`` (needs ``T == 1``) or ``"auto"``: the one-token
    form when ``T == 1`` (decoding: no chunk set-up to pay), the chunked form otherwise. All tiers
    return the state in the same ``(aa, bb, pp)`` normalisation, so they can be mixed along a sequence.
    ``"kernel"``: the sequential C++ recurrence of :mod:`rwkvkit.inference.kernels.wkv_seq` (CPU,
    forward only, fp32; imported on first use; where it cannot run it falls back to ``step`` /
    ``chunk``).
    """
    if impl not in IMPLS:
        raise ValueError(f"wkv4: unknown impl {impl!r}; choose one of {IMPLS}")
    if impl == "kernel":
        from rwkvkit.inference.kernels import wkv_seq  # imports rwkvkit.ops: only on first use

        return wkv_seq.wkv4_kernel(w, u, k, v, state)
    T = k.shape[1] if k.dim() == 3 else -1
    if impl == "auto":
        impl = "step" if T == 1 else "chunk"
    if impl == "naive":
        return wkv4_naive(w, u, k, v, state)
    if impl == "chunk":
        return wkv4_chunk(w, u, k, v, state, chunk_size=chunk_size)
    check_wkv4("wkv4", w, u, k, v, state)  # shape errors in terms of [B, T, C] before slicing
    if T != 1:
        raise ValueError(f"wkv4: impl='step' takes one token (T == 1), got k of shape {tuple(k.shape)}")
    y, new_state = wkv4_step(w, u, k[:, 0], v[:, 0], state)
    return y.unsqueeze(1), new_state


__all__ = [
    "wkv4",
    "wkv4_naive",
    "wkv4_chunk",
    "wkv4_step",
    "wkv4_initial_state",
    "PP_INIT",
    "IMPLS",
    "DEFAULT_CHUNK_SIZE",
]
