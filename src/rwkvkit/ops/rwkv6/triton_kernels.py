"""WKV-6 in Triton (GPU training and prefill): the ``triton`` tier of :func:`rwkvkit.ops.wkv6` (and so
of ``wkv5``).

Import this module only through :func:`rwkvkit.ops.rwkv6.triton_tier.wkv6_triton`, which imports it
on first use: Triton decides at decoration time whether a kernel compiles for the GPU or runs in its
interpreter (``TRITON_INTERPRET=1``, how the tests run these kernels on a CPU).

The design: the recurrence of :mod:`rwkvkit.ops.rwkv6.naive`, one program per ``(batch, head, block
of value columns)``, with the ``[K, BV]`` slice of the state (or of its adjoint) held in registers in
fp32 for the whole sequence. Columns evolve independently, so splitting ``V`` needs no communication;
per-key results (sums over columns) are written as one partial sum per block of columns, added up by
the caller. Unlike WKV-7, the state update does not read the state, so the backward needs no stored
states and no undoing: two sweeps, each starting from what it is given::

    forward        y_t = S_{t-1}^T r_t + (r_t . (u * k_t)) v_t          S_t = diag(w_t) S_{t-1} + k_t v_t^T
    sweep A (t ->)  dr_t = S_{t-1} do_t                                 (from S_{-1} = the initial state)
    sweep B (<- t)  dk_t = dS_t v_t    dv_t = dS_t^T k_t                 (from dS_{T-1} = d final state)
                    dS_{t-1} = diag(w_t) dS_t + r_t do_t^T             (dS_{-1}: d initial state)

The backward kernels compute the state's part only; the bonus's gradients are elementwise and done
by the caller, and so is ``d log_w``, from the cumulative decay ``G_j = sum_{s <= j} log_w_s``: the
loss reads ``G`` through ``r_{j+1} e^{G_j}``, ``k_j e^{-G_j}`` and the final state's ``e^{G_{T-1}}``, so

    dL/dG_j = r_{j+1} * dr_{j+1} - k_j * dk_j   (+ rowsum(dS_final * S_final) at j = T - 1)
    d log_w_t = sum_{j >= t} dL/dG_j

Written so, the two products share the term ``r_{j+1} k_j (v_j . do_{j+1})``, which cancels: with
strong decays (``w ~ e^-10``) ``dL/dG`` is ``w`` times smaller than either product, and fp32 rounding
of the products swamped it (relative error 7e-3 with every decay in ``[e^-10, e^-8]``, in a torch
prototype of these sweeps). So the sweeps keep the state as a decayed part plus the last rank-one
term (``S_{t-1} = P_{t-1} + k_{t-1} v_{t-1}^T``, ``P_{t-1} = diag(w_{t-1}) S_{t-2}``; likewise
``dS_t = Q_t + r_{t+1} do_{t+1}^T``) and also write the products with the decayed parts alone,
``x_t = P_{t-1} do_t`` and ``z_t = Q_t v_t``::

    dL/dG_j = r_{j+1} * x_{j+1} - k_j * z_j          (j < T - 1)
    dL/dG_{T-1} = rowsum(dS_final * P_{T-1})

in which nothing cancels (the relative error above, over 100 steps, drops to 1.5e-6).
"""

from __future__ import annotations

import triton
import triton.language as tl

from rwkvkit.ops._triton_jit import load_f32, load_step, state_tile, step_masks


@triton.jit
def wkv6_fwd_kernel(
    r_ptr,
    lw_ptr,
    k_ptr,
    v_ptr,
    u_ptr,
    s0_ptr,
    y_ptr,
    sT_ptr,
    T,
    H: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    HAS_S0: tl.constexpr,
):
    """Grid ``(cdiv(V, BV), B * H)``. Inputs ``[B, T, H, K|V]`` contiguous, any float dtype, ``u``
    ``[H, K]``; ``y`` (the bonus included) in its own dtype; ``sT`` ``[B, H, K, V]`` fp32."""
    iv, bh, bi, hi, ik, jv, mk, mv, mkv, kv_off = state_tile(H, K, V, BK, BV)
    if HAS_S0:
        S = load_f32(s0_ptr + bh * K * V + kv_off, mkv)
    else:
        S = tl.zeros([BK, BV], dtype=tl.float32)
    u = load_f32(u_ptr + hi * K + ik, mk)
    pk = bi * T * H * K + hi * K + ik
    pv = bi * T * H * V + hi * V + jv
    # software pipelining: the inputs of step t + 1 are loaded while step t computes (the loop is
    # latency-bound: every step waits on the one before)
    r, lw, kk, v = load_step(r_ptr, lw_ptr, k_ptr, v_ptr, pk, pv, mk, mv)
    for t in range(T):
        more_k, more_v = step_masks(ik, jv, mk, mv, t, T)
        r_n, lw_n, kk_n, v_n = load_step(r_ptr, lw_ptr, k_ptr, v_ptr, pk + H * K, pv + H * V, more_k, more_v)
        y = tl.sum(S * r[:, None], axis=0) + tl.sum(r * u * kk) * v  # the state before the update
        tl.store(y_ptr + pv, y.to(y_ptr.dtype.element_ty), mask=mv)
        S = S * tl.exp(lw)[:, None] + kk[:, None] * v[None, :]
        r, lw, kk, v = r_n, lw_n, kk_n, v_n
        pk += H * K
        pv += H * V
    tl.store(sT_ptr + bh * K * V + kv_off, S, mask=mkv)


@triton.jit
def wkv6_bwd_state_kernel(
    lw_ptr,
    k_ptr,
    v_ptr,
    s0_ptr,
    do_ptr,
    dsT_ptr,
    dr_ptr,
    x_ptr,
    last_ptr,
    T,
    B: tl.constexpr,
    H: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    HAS_S0: tl.constexpr,
    HAS_DST: tl.constexpr,
):
    """Sweep A, forward in time. Grid ``(cdiv(V, BV), B * H)``. Writes fp32 partial sums (one per
    block of columns): ``dr_t = S_{t-1} do_t`` and ``x_t = P_{t-1} do_t`` to ``[cdiv(V, BV), B, T, H, K]``,
    and (``HAS_DST``) ``rowsum(dS_final * P_{T-1})`` to ``[cdiv(V, BV), B * H, K]``."""
    iv, bh, bi, hi, ik, jv, mk, mv, mkv, kv_off = state_tile(H, K, V, BK, BV)
    part = iv.to(tl.int64) * B * T * H * K  # this block's partial sums
    # S_{t-1} = P + kp vp^T: the decayed part and the last rank-one term, kept apart
    if HAS_S0:
        P = load_f32(s0_ptr + bh * K * V + kv_off, mkv)
    else:
        P = tl.zeros([BK, BV], dtype=tl.float32)
    kp = tl.zeros([BK], dtype=tl.float32)
    vp = tl.zeros([BV], dtype=tl.float32)
    pk = bi * T * H * K + hi * K + ik
    pv = bi * T * H * V + hi * V + jv
    lw = load_f32(lw_ptr + pk, mk)
    kk = load_f32(k_ptr + pk, mk)
    v = load_f32(v_ptr + pv, mv)
    do = load_f32(do_ptr + pv, mv)
    for t in range(T):
        more_k, more_v = step_masks(ik, jv, mk, mv, t, T)
        lw_n = load_f32(lw_ptr + pk + H * K, more_k)
        kk_n = load_f32(k_ptr + pk + H * K, more_k)
        v_n = load_f32(v_ptr + pv + H * V, more_v)
        do_n = load_f32(do_ptr + pv + H * V, more_v)
        x = tl.sum(P * do[None, :], axis=1)
        tl.store(x_ptr + part + pk, x, mask=mk)
        tl.store(dr_ptr + part + pk, x + kp * tl.sum(vp * do), mask=mk)
        P = (P + kp[:, None] * vp[None, :]) * tl.exp(lw)[:, None]
        kp, vp = kk, v
        lw, kk, v, do = lw_n, kk_n, v_n, do_n
        pk += H * K
        pv += H * V
    if HAS_DST:
        dS = load_f32(dsT_ptr + bh * K * V + kv_off, mkv)
        tl.store(last_ptr + iv.to(tl.int64) * B * H * K + bh * K + ik, tl.sum(dS * P, axis=1), mask=mk)


@triton.jit
def wkv6_bwd_adjoint_kernel(
    r_ptr,
    lw_ptr,
    k_ptr,
    v_ptr,
    do_ptr,
    dsT_ptr,
    dk_ptr,
    z_ptr,
    dv_ptr,
    ds0_ptr,
    T,
    B: tl.constexpr,
    H: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    HAS_DST: tl.constexpr,
):
    """Sweep B, backward in time. Grid ``(cdiv(V, BV), B * H)``. Writes fp32 partial sums
    ``dk_t = dS_t v_t`` and ``z_t = Q_t v_t`` to ``[cdiv(V, BV), B, T, H, K]``; ``dv_t = dS_t^T k_t``
    (the state's part) to ``[B, T, H, V]`` fp32, and the initial state's gradient to ``[B, H, K, V]``
    fp32."""
    iv, bh, bi, hi, ik, jv, mk, mv, mkv, kv_off = state_tile(H, K, V, BK, BV)
    part = iv.to(tl.int64) * B * T * H * K
    # dS_t = Q + rn dn^T: the decayed part and the rank-one term of step t + 1, kept apart
    if HAS_DST:
        Q = load_f32(dsT_ptr + bh * K * V + kv_off, mkv)
    else:
        Q = tl.zeros([BK, BV], dtype=tl.float32)
    rn = tl.zeros([BK], dtype=tl.float32)
    dn = tl.zeros([BV], dtype=tl.float32)
    pk = bi * T * H * K + hi * K + ik + (T - 1) * H * K  # the last step
    pv = bi * T * H * V + hi * V + jv + (T - 1) * H * V
    r, lw, kk, v = load_step(r_ptr, lw_ptr, k_ptr, v_ptr, pk, pv, mk, mv)
    do = load_f32(do_ptr + pv, mv)
    for i in range(T):
        more_k, more_v = step_masks(ik, jv, mk, mv, i, T)  # step t - 1 = T - 2 - i exists
        r_n, lw_n, kk_n, v_n = load_step(r_ptr, lw_ptr, k_ptr, v_ptr, pk - H * K, pv - H * V, more_k, more_v)
        do_n = load_f32(do_ptr + pv - H * V, more_v)
        z = tl.sum(Q * v[None, :], axis=1)
        tl.store(z_ptr + part + pk, z, mask=mk)
        tl.store(dk_ptr + part + pk, z + rn * tl.sum(dn * v), mask=mk)
        tl.store(dv_ptr + pv, tl.sum(Q * kk[:, None], axis=0) + dn * tl.sum(rn * kk), mask=mv)
        Q = (Q + rn[:, None] * dn[None, :]) * tl.exp(lw)[:, None]
        rn, dn = r, do
        r, lw, kk, v, do = r_n, lw_n, kk_n, v_n, do_n
        pk -= H * K
        pv -= H * V
    tl.store(ds0_ptr + bh * K * V + kv_off, Q + rn[:, None] * dn[None, :], mask=mkv)
