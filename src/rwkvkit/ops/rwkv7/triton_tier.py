"""WKV-7 on the GPU through Triton: the ``triton`` tier of :func:`rwkvkit.ops.wkv7`, differentiable.

The kernels are in :mod:`rwkvkit.ops.rwkv7.triton_kernels` (their docstring has the math); this
module checks the arguments, allocates, launches, and wires the backward into autograd. It imports
Triton only when the tier first runs, so rwkvkit works without it; ``impl="auto"`` picks this tier
for CUDA tensors when Triton is installed.

Contract: that of :func:`rwkvkit.ops.rwkv7.naive.wkv7_naive` for inputs of any float dtype but fp64
(fp16, bf16 and fp32 are read as they are and computed in fp32; fp64 inputs go to the ``chunk`` tier,
which computes in fp64): ``o`` in ``r``'s dtype, the final state in fp32, gradients of every input
(the initial state included) in that input's dtype. Any ``T``; ``T == 0`` returns the state as it was.

On a CPU the kernels run only in Triton's interpreter (``TRITON_INTERPRET=1`` set before the first
call), which is how the tests check them without a GPU.
"""

from __future__ import annotations

import functools

import torch

from rwkvkit.ops._layout import no_autocast
from rwkvkit.ops._triton import cdiv, check_device, column_block, empty_sequence, needs_grad, pow2
from rwkvkit.ops.rwkv7.chunk import check_max_decay, decay_bound, wkv7_chunk
from rwkvkit.ops.rwkv7.naive import check_wkv7

# The forward stores the state every CHECKPOINT_INTERVAL steps for the backward (fp32, [K, V] per
# head and interval: for B8 T4096 H32 K64 that is 1 GiB). The backward walks each interval back in
# segments, undoing at most (segment - 1) steps from a known state (see triton_kernels). Undoing a
# step divides by the decay w = exp(log_w), so rounding grows by at most exp(|log_w|) per step: the
# segment is halved until max|log_w| * (segment - 1) <= _UNDO_LIMIT. For RWKV-7 (|log_w| < exp(-0.5)
# = 0.61) that gives segments of 8 (worst growth e^4.2 ~ 70 of fp32 rounding; the measured gradient
# errors vs the naive recurrence are in tests/ops/test_wkv7_triton.py).
CHECKPOINT_INTERVAL = 16
_UNDO_LIMIT = 4.5

# Columns of the state per program and warps per program, forward and backward. The backward's
# per-key gradients are summed over blocks of columns, so one block (V <= 64) writes them directly.
# One warp keeps the forward's reductions over K inside a warp (shuffles, no shared memory) for a
# [64, 32] slice (64 registers a thread); the backward holds two [64, 64] slices (S and dS) and
# needs more threads for its registers. Not yet tuned on a GPU: benchmarks/gpu.py measures variants.
_FWD_BV = 32
_BWD_BV = 64
_FWD_WARPS = 1
_BWD_WARPS = 4


@functools.cache
def _kernels():
    # Triton is optional, and it fixes interpreter-or-GPU when the kernels are decorated
    from rwkvkit.ops.rwkv7 import triton_kernels  # deferred: Triton is optional (see above)

    return triton_kernels


def undo_span(log_w: torch.Tensor, max_decay: float | None) -> int:
    """Steps per segment of the backward's walk (at most ``span - 1`` undone from a known state):
    :data:`CHECKPOINT_INTERVAL`, halved while undoing could amplify rounding more than
    ``exp(_UNDO_LIMIT)``. ``max_decay`` is a stated bound on ``|log_w|`` (no tensor read); None
    measures ``log_w`` (a host sync)."""
    worst = decay_bound(log_w, max_decay)
    span = CHECKPOINT_INTERVAL
    while span > 1 and worst * (span - 1) > _UNDO_LIMIT:
        span //= 2
    return span


def _forward(r, log_w, k, v, a, b, state, C: int, save: bool):
    """Launch the forward: ``(o, sT, ck, sa)`` (``ck``, ``sa`` None unless ``save``)."""
    B, T, H, K = r.shape
    V = v.shape[-1]
    kern = _kernels()
    o = torch.empty(B, T, H, V, dtype=r.dtype, device=r.device)
    sT = torch.empty(B, H, K, V, dtype=torch.float32, device=r.device)
    N = cdiv(T, C)
    ck = torch.empty(B * H, N + 1, K, V, dtype=torch.float32, device=r.device) if save else sT
    sa = torch.empty(B, T, H, V, dtype=torch.float32, device=r.device) if save else sT
    BV = column_block(B, H, V, _FWD_BV)
    grid = (cdiv(V, BV), B * H)
    kern.wkv7_fwd_kernel[grid](
        r, log_w, k, v, a, b, state if state is not None else sT, o, sT, ck, sa,
        T, H=H, K=K, V=V, BK=pow2(K), BV=BV, C=C, HAS_S0=state is not None, SAVE=save,
        num_warps=_FWD_WARPS,
    )  # fmt: skip
    return o, sT, (ck if save else None), (sa if save else None)


class _WKV7Triton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, r, log_w, k, v, a, b, state, seg):
        o, sT, ck, sa = _forward(r, log_w, k, v, a, b, state, CHECKPOINT_INTERVAL, save=True)
        ctx.save_for_backward(r, log_w, k, v, a, b, ck, sa)
        ctx.seg = seg
        ctx.state_dtype = None if state is None else state.dtype
        return o, sT

    @staticmethod
    def backward(ctx, do, dsT):
        r, log_w, k, v, a, b, ck, sa = ctx.saved_tensors
        B, T, H, K = r.shape
        V = v.shape[-1]
        BV = min(pow2(V), _BWD_BV)
        NV = cdiv(V, BV)
        dev = r.device
        do = torch.zeros(B, T, H, V, dtype=r.dtype, device=dev) if do is None else do.contiguous()
        # one block of columns: per-key gradients stored in their dtype; else fp32 partial sums
        key_grads = [
            torch.empty(NV, B, T, H, K, dtype=x.dtype if NV == 1 else torch.float32, device=dev)
            for x in (r, log_w, k, a, b)
        ]
        dv = torch.empty_like(v)
        ds0 = torch.empty(B, H, K, V, dtype=torch.float32, device=dev)
        dr, dlw, dk, da, db = key_grads
        _kernels().wkv7_bwd_kernel[(NV, B * H)](
            r, log_w, k, v, a, b, ck, sa, do, dsT.contiguous() if dsT is not None else ds0,
            dr, dlw, dk, dv, da, db, ds0,
            T, B=B, H=H, K=K, V=V, BK=pow2(K), BV=BV, C=CHECKPOINT_INTERVAL, SEG=ctx.seg,
            HAS_DST=dsT is not None, num_warps=_BWD_WARPS,
        )  # fmt: skip
        dr, dlw, dk, da, db = (g.sum(0).to(x.dtype) for g, x in zip(key_grads, (r, log_w, k, a, b)))
        ds0 = ds0.to(ctx.state_dtype) if ctx.needs_input_grad[6] else None
        return dr, dlw, dk, dv, da, db, ds0, None


@no_autocast
def wkv7_triton(
    r: torch.Tensor,
    log_w: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    state: torch.Tensor | None = None,
    *,
    max_decay: float | None = None,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """WKV-7 in Triton; the contract of :func:`rwkvkit.ops.rwkv7.naive.wkv7_naive` (see the module
    docstring for dtypes). ``max_decay``: a stated bound on ``|log_w|`` that fixes the backward's
    segment length (:func:`undo_span`) without reading ``log_w`` (None: measured, a host sync, and only when a
    backward will follow). ``chunk_size`` belongs to the ``chunk`` tier and is ignored here."""
    op = "wkv7_triton"
    tensors = (r, log_w, k, v, a, b)
    check_wkv7(op, *tensors, state)
    check_max_decay(op, max_decay)
    check_device(op, (*tensors, state))
    if any(x.dtype == torch.float64 for x in tensors):
        return wkv7_chunk(r, log_w, k, v, a, b, state, max_decay=max_decay)
    if r.shape[1] == 0:
        return empty_sequence(r, v, state)
    r, log_w, k, v, a, b = (x.contiguous() for x in tensors)
    state = None if state is None else state.contiguous()
    if not needs_grad(r, log_w, k, v, a, b, state):
        o, sT, _, _ = _forward(r, log_w, k, v, a, b, state, CHECKPOINT_INTERVAL, save=False)
        return o, sT
    return _WKV7Triton.apply(r, log_w, k, v, a, b, state, undo_span(log_w, max_decay))
