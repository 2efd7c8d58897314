"""WKV-7 in Triton (GPU training and prefill): the ``triton`` tier of :func:`rwkvkit.ops.wkv7`.

Import this module only through :func:`rwkvkit.ops.rwkv7.triton_tier.wkv7_triton`, which imports it
on first use: Triton decides at decoration time whether a kernel compiles for the GPU or runs in its
interpreter (``TRITON_INTERPRET=1``, how the tests run these kernels on a CPU).

The design: the recurrence of :mod:`rwkvkit.ops.rwkv7.naive`, one program per ``(batch, head,
block of value columns)``, with the ``[K, BV]`` slice of the state held in registers in fp32 for the
whole sequence. The columns of the state evolve independently (``sa = S^T a`` and ``o = S^T r`` are
per column), so splitting ``V`` needs no communication; the per-key gradients (``dr``, ``dw``,
``dk``, ``da``, ``db``) are sums over columns, so with more than one block of columns each block
writes a partial sum and the caller adds them.

Forward, when a backward will follow, stores two things: ``sa_t = S_{t-1}^T a_t`` for every step
(``[B, T, H, V]`` fp32), and the state at the end of every chunk of ``C`` steps plus the initial state
(``[B*H, N + 1, K, V]`` fp32, ``N = ceil(T / C)``). Backward walks the chunks from the last, starting
each from its stored end state, and walks back inside a chunk by undoing one step at a time::

    S_{t-1} = (S_t - b_t sa_t^T - k_t v_t^T) / w_t

which is exact up to rounding, amplified by ``1 / w`` per undone step. So a chunk is walked back
in segments of ``SEG`` steps, the last first: each segment's start state is recomputed forward from
the chunk's stored start (at most ``C - SEG`` steps, no outputs), and at most ``SEG - 1`` steps are
undone from its end, so rounding grows by at most ``exp(max|log_w| * (SEG - 1))``: the caller picks
``SEG`` from the decay bound (see :func:`rwkvkit.ops.rwkv7.triton_tier.undo_span`). Undoing all
``C - 1`` steps of a chunk measured gradient errors of 1e-3 in a
small RWKV-7 model with decays near the bound; segments of 8 bring them to the fp32 recurrence's.
The recomputation costs ``SEG * n(n - 1) / 2`` steps per chunk of ``n = C / SEG`` segments (RWKV-7,
``C = 16``, ``SEG = 8``: half a forward). The adjoint state runs backwards alongside::

    dS_t     += r_t do_t^T
    dr_t      = S_t do_t             dsa_t = dS_t^T b_t
    dw_t      = rowsum(dS_t * S_{t-1})      (dlog_w = dw * w)
    dk_t      = dS_t v_t             dv_t  = dS_t^T k_t
    db_t      = dS_t sa_t            da_t  = S_{t-1} dsa_t
    dS_{t-1}  = diag(w_t) dS_t + a_t dsa_t^T

and what is left of it at ``t = 0`` is the gradient of the initial state.
"""

from __future__ import annotations

import triton
import triton.language as tl

from rwkvkit.ops._triton_jit import load_f32, load_step, state_tile, step_masks


@triton.jit
def wkv7_fwd_kernel(
    r_ptr,
    lw_ptr,
    k_ptr,
    v_ptr,
    a_ptr,
    b_ptr,
    s0_ptr,
    o_ptr,
    sT_ptr,
    ck_ptr,
    sa_ptr,
    T,
    H: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    C: tl.constexpr,
    HAS_S0: tl.constexpr,
    SAVE: tl.constexpr,
):
    """Grid ``(cdiv(V, BV), B * H)``. Inputs ``[B, T, H, K|V]`` contiguous, any float dtype;
    ``o`` in its own dtype; ``sT`` ``[B, H, K, V]`` fp32. ``SAVE``: also write ``sa`` and the chunk
    states ``ck`` for the backward."""
    iv, bh, bi, hi, ik, jv, mk, mv, mkv, kv_off = state_tile(H, K, V, BK, BV)
    if HAS_S0:
        S = load_f32(s0_ptr + bh * K * V + kv_off, mkv)
    else:
        S = tl.zeros([BK, BV], dtype=tl.float32)
    n_chunks = tl.cdiv(T, C)
    ck_base = ck_ptr + bh * (n_chunks + 1) * K * V
    if SAVE:
        tl.store(ck_base + kv_off, S, mask=mkv)
    pk = bi * T * H * K + hi * K + ik
    pv = bi * T * H * V + hi * V + jv
    # software pipelining: the inputs of step t + 1 are loaded while step t computes (the loop is
    # latency-bound: every step waits on the reductions of the one before)
    r, lw, kk, v = load_step(r_ptr, lw_ptr, k_ptr, v_ptr, pk, pv, mk, mv)
    a, b = load_f32(a_ptr + pk, mk), load_f32(b_ptr + pk, mk)
    for t in range(T):
        more_k, more_v = step_masks(ik, jv, mk, mv, t, T)
        r_n, lw_n, kk_n, v_n = load_step(r_ptr, lw_ptr, k_ptr, v_ptr, pk + H * K, pv + H * V, more_k, more_v)
        a_n, b_n = load_f32(a_ptr + pk + H * K, more_k), load_f32(b_ptr + pk + H * K, more_k)
        sa = tl.sum(S * a[:, None], axis=0)
        S = S * tl.exp(lw)[:, None] + b[:, None] * sa[None, :] + kk[:, None] * v[None, :]
        o = tl.sum(S * r[:, None], axis=0)
        tl.store(o_ptr + pv, o.to(o_ptr.dtype.element_ty), mask=mv)
        if SAVE:
            tl.store(sa_ptr + pv, sa, mask=mv)
            at_end = ((t + 1) % C == 0) | (t == T - 1)
            tl.store(ck_base + (t // C + 1) * K * V + kv_off, S, mask=mkv & at_end)
        r, lw, kk, a, b, v = r_n, lw_n, kk_n, a_n, b_n, v_n
        pk += H * K
        pv += H * V
    tl.store(sT_ptr + bh * K * V + kv_off, S, mask=mkv)


@triton.jit
def wkv7_bwd_kernel(
    r_ptr,
    lw_ptr,
    k_ptr,
    v_ptr,
    a_ptr,
    b_ptr,
    ck_ptr,
    sa_ptr,
    do_ptr,
    dsT_ptr,
    dr_ptr,
    dlw_ptr,
    dk_ptr,
    dv_ptr,
    da_ptr,
    db_ptr,
    ds0_ptr,
    T,
    B: tl.constexpr,
    H: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    C: tl.constexpr,
    SEG: tl.constexpr,
    HAS_DST: tl.constexpr,
):
    """Grid ``(cdiv(V, BV), B * H)``. The per-key gradients go to ``[cdiv(V, BV), B, T, H, K]``
    (one partial sum per block of columns), ``dv`` to ``[B, T, H, V]``, ``ds0`` ``[B, H, K, V]`` fp32.

    Each chunk of ``C`` steps is walked back in segments of ``SEG`` steps, the last segment first.
    A segment starts from the state before it, recomputed forward from the chunk's stored start,
    and is walked back from the state after it by undoing at most ``SEG - 1`` steps."""
    iv, bh, bi, hi, ik, jv, mk, mv, mkv, kv_off = state_tile(H, K, V, BK, BV)
    n_chunks = tl.cdiv(T, C)
    ck_base = ck_ptr + bh * (n_chunks + 1) * K * V
    part = iv.to(tl.int64) * B * T * H * K  # this block's partial sums
    row_k = bi * T * H * K + hi * K + ik  # offsets of token 0
    row_v = bi * T * H * V + hi * V + jv
    if HAS_DST:
        dS = load_f32(dsT_ptr + bh * K * V + kv_off, mkv)
    else:
        dS = tl.zeros([BK, BV], dtype=tl.float32)
    for i in range(n_chunks):
        n = n_chunks - 1 - i
        t_lo = n * C
        t_end = tl.minimum(t_lo + C, T)  # one past the chunk's last step
        S_start = load_f32(ck_base + n * K * V + kv_off, mkv)
        S_after = load_f32(ck_base + (n + 1) * K * V + kv_off, mkv)
        n_seg = tl.cdiv(t_end - t_lo, SEG)
        for q in range(n_seg):
            seg_lo = t_lo + (n_seg - 1 - q) * SEG
            seg_len = tl.minimum(seg_lo + SEG, t_end) - seg_lo
            # the state before the segment: recomputed from the chunk's start
            S_before = S_start
            for t in range(t_lo, seg_lo):
                lw, kk, a, v = load_step(
                    lw_ptr, k_ptr, a_ptr, v_ptr, row_k + t * H * K, row_v + t * H * V, mk, mv
                )
                w = tl.exp(lw)
                b = load_f32(b_ptr + row_k + t * H * K, mk)
                sa = tl.sum(S_before * a[:, None], axis=0)
                S_before = S_before * w[:, None] + b[:, None] * sa[None, :] + kk[:, None] * v[None, :]
            S = S_after
            pk = row_k + (seg_lo + seg_len - 1) * H * K
            pv = row_v + (seg_lo + seg_len - 1) * H * V
            for j in range(seg_len):
                r, lw, kk, v = load_step(r_ptr, lw_ptr, k_ptr, v_ptr, pk, pv, mk, mv)
                a, b = load_f32(a_ptr + pk, mk), load_f32(b_ptr + pk, mk)
                do = load_f32(do_ptr + pv, mv)
                sa = load_f32(sa_ptr + pv, mv)
                w = tl.exp(lw)
                # S_{t-1}: the segment's start for its first step, else one step undone
                first = (ik[:, None] * 0 + j) == seg_len - 1  # [BK, 1]: a block, as masks must be
                undone = (S - b[:, None] * sa[None, :] - kk[:, None] * v[None, :]) * tl.exp(-lw)[:, None]
                S_prev = tl.where(first, S_before, undone)

                dS += r[:, None] * do[None, :]
                dsa = tl.sum(dS * b[:, None], axis=0)
                tl.store(dr_ptr + part + pk, tl.sum(S * do[None, :], axis=1), mask=mk)
                tl.store(dlw_ptr + part + pk, tl.sum(dS * S_prev, axis=1) * w, mask=mk)
                tl.store(dk_ptr + part + pk, tl.sum(dS * v[None, :], axis=1), mask=mk)
                tl.store(db_ptr + part + pk, tl.sum(dS * sa[None, :], axis=1), mask=mk)
                tl.store(da_ptr + part + pk, tl.sum(S_prev * dsa[None, :], axis=1), mask=mk)
                tl.store(dv_ptr + pv, tl.sum(dS * kk[:, None], axis=0), mask=mv)
                dS = dS * w[:, None] + a[:, None] * dsa[None, :]
                S = S_prev
                pk -= H * K
                pv -= H * V
            S_after = S_before
    tl.store(ds0_ptr + bh * K * V + kv_off, dS, mask=mkv)
