"""Triton device functions the WKV kernels share (:mod:`rwkvkit.ops.rwkv7.triton_kernels`,
:mod:`rwkvkit.ops.rwkv6.triton_kernels`). Imports Triton: import it only from those modules, which
the tiers import on first use."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def load_f32(ptr, mask):
    """A masked load (0 where masked off), widened to fp32: every input of a step."""
    return tl.load(ptr, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def state_tile(H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr):
    """This program's slice of a ``[K, V]`` state, for the grid ``(cdiv(V, BV), B * H)``:
    ``(iv, bh, batch, head, ik, jv, mk, mv, mkv, kv_off)``: the block of columns, the flat
    ``batch * H + head`` (int64), key and value indices with their masks, the ``[BK, BV]`` mask and
    the offsets of the slice inside one ``[K, V]`` state."""
    iv = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    ik = tl.arange(0, BK)
    jv = iv * BV + tl.arange(0, BV)
    mk = ik < K
    mv = jv < V
    return iv, bh, bh // H, bh % H, ik, jv, mk, mv, mk[:, None] & mv[None, :], ik[:, None] * V + jv[None, :]
