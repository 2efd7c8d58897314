"""Pure tensor operators (no nn.Module, nothing imported but torch).

Layout everywhere: inputs ``[B, T, H, K]``, state ``[B, H, K, V]``. Each operator comes in tiers:
``naive`` (the recurrence as a readable fp32 loop: the reference), ``chunk`` (parallel form in pure
PyTorch: training and prefill) and ``step`` (one token: decoding). :func:`wkv7` picks one.

``impl="kernel"`` (every dispatcher here: :func:`wkv4`, :func:`wkv5`, :func:`wkv6`, :func:`wkv7`)
runs the sequential C++ recurrences of :mod:`rwkvkit.inference.kernels.wkv_seq` (CPU, forward only,
fp32; imported on first use). Where they cannot run (no build, ``RWKVKIT_NO_KERNELS=1``, gradients
needed, non-CPU or fp64 tensors) that falls back to ``step`` / ``chunk``. ``"auto"`` never picks it.
"""

from __future__ import annotations

import torch

from rwkvkit.ops.based import based_chunk, based_naive, based_state_size, based_step, taylor_feature_map
from rwkvkit.ops.biwkv import biwkv, biwkv_naive, qshift
from rwkvkit.ops.rwkv4 import wkv4, wkv4_chunk, wkv4_initial_state, wkv4_naive, wkv4_step
from rwkvkit.ops.rwkv6 import wkv5, wkv6, wkv6_chunk, wkv6_naive, wkv6_step
from rwkvkit.ops.rwkv7 import DEFAULT_CHUNK_SIZE, wkv7_chunk, wkv7_naive, wkv7_step
from rwkvkit.ops.sliding_window import SWACache, swa_chunk, swa_initial_cache, swa_naive, swa_step

IMPLS = ("auto", "naive", "chunk", "step", "kernel")


def _kernels():
    """The C++ tier, imported on first use (it imports this package; ``rwkvkit.ops`` stays torch-only)."""
    from rwkvkit.inference.kernels import wkv_seq

    return wkv_seq


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
) -> tuple[torch.Tensor, torch.Tensor]:
    """WKV-7 over a sequence: ``(o [B, T, H, V], state [B, H, K, V])``.

    ``impl``: ``"naive"``, ``"chunk"``, ``"step"`` (needs ``T == 1``), ``"kernel"`` (the C++
    sequential recurrence, forward only; see the module docstring) or ``"auto"``: the one-token
    form when ``T == 1`` (decoding: no chunk set-up to pay), the chunked form otherwise.
    """
    if impl not in IMPLS:
        raise ValueError(f"wkv7: unknown impl {impl!r}; choose one of {IMPLS}")
    if impl == "kernel":
        return _kernels().wkv7_kernel(r, log_w, k, v, a, b, state)
    T = r.shape[1] if r.dim() == 4 else -1
    if impl == "auto":
        impl = "step" if T == 1 else "chunk"
    if impl == "naive":
        return wkv7_naive(r, log_w, k, v, a, b, state)
    if impl == "chunk":
        return wkv7_chunk(r, log_w, k, v, a, b, state, chunk_size=chunk_size)
    if T != 1:
        raise ValueError(f"wkv7: impl='step' takes one token (T == 1), got input of shape {tuple(r.shape)}")
    o, S = wkv7_step(*(x[:, 0] for x in (r, log_w, k, v, a, b)), state)
    return o.unsqueeze(1), S


__all__ = [
    "wkv4", "wkv4_naive", "wkv4_chunk", "wkv4_step", "wkv4_initial_state",
    "wkv5", "wkv6", "wkv6_naive", "wkv6_chunk", "wkv6_step",
    "wkv7", "wkv7_naive", "wkv7_chunk", "wkv7_step",
    "biwkv", "biwkv_naive", "qshift",
    "based_naive", "based_chunk", "based_step", "based_state_size", "taylor_feature_map",
    "swa_naive", "swa_chunk", "swa_step", "swa_initial_cache", "SWACache",
    "IMPLS",
]  # fmt: skip
