"""WKV-6 / WKV-5 (RWKV-5 Eagle, RWKV-6 Finch) in five tiers: ``naive`` (reference loop), ``chunk``
(parallel), ``step`` (one token), ``kernel`` (sequential C++, CPU inference) and ``triton`` (GPU,
forward and backward). WKV-5 is WKV-6 with a decay constant over time (:func:`wkv5`)."""

from __future__ import annotations

import torch

from rwkvkit.ops._tiers import IMPLS, Tiers
from rwkvkit.ops._triton import triton_available
from rwkvkit.ops.rwkv6.chunk import DEFAULT_CHUNK_SIZE, DEFAULT_SUB_CHUNK_SIZE, wkv6_chunk
from rwkvkit.ops.rwkv6.kernel import wkv5_kernel, wkv6_kernel
from rwkvkit.ops.rwkv6.naive import wkv6_naive
from rwkvkit.ops.rwkv6.step import broadcast_wkv5, wkv6_one_token, wkv6_step
from rwkvkit.ops.rwkv6.triton_tier import wkv6_triton

_TIERS = Tiers(
    "wkv6", naive=wkv6_naive, chunk=wkv6_chunk, step=wkv6_one_token, kernel=wkv6_kernel,
    triton=wkv6_triton, triton_ready=triton_available,
)  # fmt: skip


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

    ``impl``: ``"naive"``, ``"chunk"``, ``"step"`` (needs ``T == 1``), ``"triton"`` (CUDA tensors,
    forward and backward; see :mod:`rwkvkit.ops.rwkv6.triton_tier`) or ``"auto"``: ``"triton"`` for
    CUDA tensors when Triton is installed, else the one-token form when ``T == 1`` (decoding: no chunk
    set-up to pay) and the chunked form otherwise. ``"kernel"``: the sequential C++ recurrence of
    :mod:`rwkvkit.ops.cpu` (CPU, forward only, fp32; where it cannot run it falls back to ``step`` /
    ``chunk``). ``chunk_size`` applies to ``"chunk"`` (and to fp64 inputs of ``"triton"``, which go
    there).
    """
    T = r.shape[1] if r.dim() == 4 else -1
    return _TIERS(impl, T, r, log_w, k, v, u, state, chunk_size=chunk_size)


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
    ``[H, K]`` or ``[H, 1]``. Both are broadcast (as views, no copy) to the WKV-6 shapes; ``impl`` as
    in :func:`wkv6` (``"triton"`` copies the broadcast decay to a contiguous ``[B, T, H, K]`` tensor).
    """
    log_w, u = broadcast_wkv5("wkv5", r, log_w, u)
    return wkv6(r, log_w, k, v, u, state, impl=impl, chunk_size=chunk_size)


__all__ = [
    "wkv5", "wkv6", "wkv6_naive", "wkv6_chunk", "wkv6_step", "wkv6_kernel", "wkv5_kernel", "wkv6_triton",
    "DEFAULT_CHUNK_SIZE", "DEFAULT_SUB_CHUNK_SIZE", "IMPLS",
]  # fmt: skip
