"""WKV-4 (RWKV-4): the stable recurrence (``naive``), chunked-parallel (``chunk``), one token (``step``)
and the sequential C++ recurrence (``kernel``, CPU inference); :func:`wkv4` picks one."""

from __future__ import annotations

import torch

from rwkvkit.ops._tiers import IMPLS, Tiers
from rwkvkit.ops.rwkv4.chunk import DEFAULT_CHUNK_SIZE, wkv4_chunk
from rwkvkit.ops.rwkv4.kernel import wkv4_kernel
from rwkvkit.ops.rwkv4.naive import PP_INIT, wkv4_initial_state, wkv4_naive
from rwkvkit.ops.rwkv4.step import wkv4_one_token, wkv4_step

_TIERS = Tiers("wkv4", naive=wkv4_naive, chunk=wkv4_chunk, step=wkv4_one_token, kernel=wkv4_kernel)


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
    ``"kernel"``: the sequential C++ recurrence of :mod:`rwkvkit.ops.cpu` (CPU, forward only, fp32;
    where it cannot run it falls back to ``step`` / ``chunk``).
    """
    T = k.shape[1] if k.dim() == 3 else -1
    return _TIERS(impl, T, w, u, k, v, state, chunk_size=chunk_size)


__all__ = [
    "wkv4",
    "wkv4_naive",
    "wkv4_chunk",
    "wkv4_step",
    "wkv4_kernel",
    "wkv4_initial_state",
    "PP_INIT",
    "IMPLS",
    "DEFAULT_CHUNK_SIZE",
]
