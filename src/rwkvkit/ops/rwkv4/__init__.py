"""WKV-4 (RWKV-4): the stable recurrence (``naive``), chunked-parallel (``chunk``), one token (``step``)."""

from __future__ import annotations

import torch

from rwkvkit.ops.rwkv4.naive import PP_INIT, wkv4_initial_state, wkv4_naive

IMPLS = ("auto", "naive")


def wkv4(
    w: torch.Tensor,
    u: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    state: torch.Tensor | None = None,
    *,
    impl: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """WKV-4 over a sequence: ``(wkv [B, T, C], state [B, 3, C])``; see :func:`wkv4_naive`."""
    if impl not in IMPLS:
        raise ValueError(f"wkv4: unknown impl {impl!r}; choose one of {IMPLS}")
    return wkv4_naive(w, u, k, v, state)


__all__ = ["wkv4", "wkv4_naive", "wkv4_initial_state", "PP_INIT", "IMPLS"]
