"""WKV-6 / WKV-5 (RWKV-5 Eagle, RWKV-6 Finch): ``naive`` loop, ``chunk`` parallel form, ``step``."""

from __future__ import annotations

import torch

from rwkvkit.ops.rwkv6.naive import wkv6_naive

IMPLS = ("auto", "naive")


def wkv6(
    r: torch.Tensor,
    log_w: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    u: torch.Tensor,
    state: torch.Tensor | None = None,
    *,
    impl: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """WKV-6 over a sequence: ``(y [B, T, H, V], state [B, H, K, V])``; see :func:`wkv6_naive`."""
    if impl not in IMPLS:
        raise ValueError(f"wkv6: unknown impl {impl!r}; choose one of {IMPLS}")
    return wkv6_naive(r, log_w, k, v, u, state)


def wkv5(
    r: torch.Tensor,
    log_w: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    u: torch.Tensor,
    state: torch.Tensor | None = None,
    *,
    impl: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """WKV-5: WKV-6 with a decay constant over time.

    ``log_w`` is ``[H, K]`` (5.2: per channel) or ``[H, 1]`` (5.0/5.1: per head); ``u`` likewise
    ``[H, K]`` or ``[H, 1]``. Both are broadcast (as views, no copy) to the WKV-6 shapes.
    """
    B, T, H, K = r.shape
    return wkv6(r, log_w.expand(H, K).expand(B, T, H, K), k, v, u.expand(H, K), state, impl=impl)


__all__ = ["wkv5", "wkv6", "wkv6_naive", "IMPLS"]
