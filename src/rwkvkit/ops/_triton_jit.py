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


@triton.jit
def load_step(p1, p2, p3, pv_ptr, pk, pv, mk, mv):
    """One step's inputs, fp32: three per-key rows (``p1 + pk``, ...: ``[BK]``) and one per-value row
    (``pv_ptr + pv``: ``[BV]``), 0 where masked off."""
    return load_f32(p1 + pk, mk), load_f32(p2 + pk, mk), load_f32(p3 + pk, mk), load_f32(pv_ptr + pv, mv)


@triton.jit
def step_masks(ik, jv, mk, mv, i, T):
    """The key and value masks of the step after loop iteration ``i`` of ``T`` (all off after the
    last): for loading the next step's inputs while this one computes. Built as blocks, not scalars:
    Triton's interpreter rejects a scalar condition combined with a block mask."""
    return mk & ((ik * 0 + i + 1) < T), mv & ((jv * 0 + i + 1) < T)
