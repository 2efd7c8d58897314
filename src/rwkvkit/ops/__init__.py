"""Pure tensor operators (no nn.Module; nothing imported but torch, and the compiled CPU tier).

Layout everywhere: inputs ``[B, T, H, K]``, state ``[B, H, K, V]``. Each WKV operator comes in tiers:
``naive`` (the recurrence as a readable fp32 loop: the reference), ``chunk`` (parallel form in pure
PyTorch: training and prefill), ``step`` (one token: decoding) and ``kernel`` (the sequential C++
recurrences of :mod:`rwkvkit.ops.cpu`: CPU, forward only, fp32, compiled on first use); WKV-5/6 and
WKV-7 also ``triton`` (Triton kernels for CUDA tensors, forward and backward). The
dispatchers :func:`wkv4`, :func:`wkv5`, :func:`wkv6`, :func:`wkv7` pick one with ``impl=`` (one rule
for all: :mod:`rwkvkit.ops._tiers`). Where the kernels cannot run (no build, ``RWKVKIT_NO_KERNELS=1``,
gradients needed, non-CPU or fp64 tensors) ``"kernel"`` falls back to ``step`` / ``chunk``;
``"auto"`` never picks it.
"""

from __future__ import annotations

from rwkvkit.ops._tiers import IMPLS
from rwkvkit.ops.based import based_chunk, based_naive, based_state_size, based_step, taylor_feature_map
from rwkvkit.ops.biwkv import biwkv, biwkv_naive, qshift
from rwkvkit.ops.rwkv4 import wkv4, wkv4_chunk, wkv4_initial_state, wkv4_naive, wkv4_step
from rwkvkit.ops.rwkv6 import wkv5, wkv6, wkv6_chunk, wkv6_naive, wkv6_step
from rwkvkit.ops.rwkv7 import wkv7, wkv7_chunk, wkv7_naive, wkv7_step
from rwkvkit.ops.sliding_window import SWACache, swa_chunk, swa_initial_cache, swa_naive, swa_step

__all__ = [
    "wkv4", "wkv4_naive", "wkv4_chunk", "wkv4_step", "wkv4_initial_state",
    "wkv5", "wkv6", "wkv6_naive", "wkv6_chunk", "wkv6_step",
    "wkv7", "wkv7_naive", "wkv7_chunk", "wkv7_step",
    "biwkv", "biwkv_naive", "qshift",
    "based_naive", "based_chunk", "based_step", "based_state_size", "taylor_feature_map",
    "swa_naive", "swa_chunk", "swa_step", "swa_initial_cache", "SWACache",
    "IMPLS",
]  # fmt: skip
