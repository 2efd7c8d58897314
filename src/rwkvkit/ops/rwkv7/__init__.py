"""WKV-7 (RWKV-7 "Goose") in five tiers: ``naive`` (reference loop), ``chunk`` (parallel), ``step``
(one token), ``kernel`` (sequential C++, CPU inference) and ``triton`` (GPU, forward and backward);
:func:`wkv7` picks one."""

from __future__ import annotations

import torch

from rwkvkit.ops._tiers import IMPLS, Tiers
from rwkvkit.ops._triton import triton_available
from rwkvkit.ops.rwkv7.chunk import DEFAULT_CHUNK_SIZE, wkv7_chunk
from rwkvkit.ops.rwkv7.kernel import wkv7_kernel
from rwkvkit.ops.rwkv7.naive import wkv7_naive
from rwkvkit.ops.rwkv7.step import wkv7_one_token, wkv7_step
from rwkvkit.ops.rwkv7.triton_tier import wkv7_triton

_TIERS = Tiers(
    "wkv7", naive=wkv7_naive, chunk=wkv7_chunk, step=wkv7_one_token, kernel=wkv7_kernel,
    triton=wkv7_triton, triton_ready=triton_available,
)  # fmt: skip


def wkv7(
    r: torch.Tensor,
    log_w: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    state: torch.Tensor | None = None,
    *,
    impl: str = "auto",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    max_decay: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """WKV-7 over a sequence: ``(o [B, T, H, V], state [B, H, K, V])``.

    ``impl``: ``"naive"``, ``"chunk"``, ``"step"`` (needs ``T == 1``), ``"kernel"`` (the C++
    sequential recurrence, forward only; see :mod:`rwkvkit.ops.cpu`), ``"triton"`` (CUDA tensors,
    forward and backward; see :mod:`rwkvkit.ops.rwkv7.triton_tier`) or ``"auto"``: ``"triton"`` for
    CUDA tensors when Triton is installed, else the one-token form when ``T == 1`` (decoding: no chunk
    set-up to pay) and the chunked form otherwise.
    ``chunk_size`` applies to ``"chunk"`` only. ``max_decay`` (a stated bound on ``|log_w|``, so that no
    read of the tensor is needed: see :func:`~rwkvkit.ops.rwkv7.chunk.wkv7_chunk`) sets the chunk size
    of ``"chunk"`` and the backward's checkpoint interval of ``"triton"``.
    """
    T = r.shape[1] if r.dim() == 4 else -1
    return _TIERS(impl, T, r, log_w, k, v, a, b, state, chunk_size=chunk_size, max_decay=max_decay)


__all__ = [
    "wkv7", "wkv7_naive", "wkv7_chunk", "wkv7_step", "wkv7_kernel", "wkv7_triton",
    "DEFAULT_CHUNK_SIZE", "IMPLS",
]  # fmt: skip
