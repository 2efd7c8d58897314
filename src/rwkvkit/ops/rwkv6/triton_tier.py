"""WKV-6 (and WKV-5) on the GPU through Triton: the ``triton`` tier of :func:`rwkvkit.ops.wkv6`,
differentiable.

The kernels are in :mod:`rwkvkit.ops.rwkv6.triton_kernels` (their docstring has the math); this module
checks the arguments, allocates, launches, computes the bonus's gradients and ``d log_w`` (elementwise
and a reverse cumulative sum, in torch), and wires the backward into autograd. It imports Triton only
when the tier first runs, so rwkvkit works without it; ``impl="auto"`` picks this tier for CUDA
tensors when Triton is installed.

Contract: that of :func:`rwkvkit.ops.rwkv6.naive.wkv6_naive` for inputs of any float dtype but fp64
(fp16, bf16 and fp32 are read as they are and computed in fp32; fp64 inputs go to the ``chunk`` tier,
which computes in fp64): ``y`` in ``r``'s dtype, the final state in fp32, gradients of every input
(``u`` and the initial state included) in that input's dtype. Any ``T``; ``T == 0`` returns the state
as it was. Inputs that are not contiguous (WKV-5's decay, broadcast over ``B`` and ``T`` as a stride-0
view) are copied to contiguous ones first.

On a CPU the kernels run only in Triton's interpreter (``TRITON_INTERPRET=1`` set before the first
call), which is how the tests check them without a GPU.
"""

from __future__ import annotations

import functools

import torch

from rwkvkit.ops._layout import no_autocast
from rwkvkit.ops._triton import cdiv, check_device, column_block, empty_sequence, needs_grad, pow2
from rwkvkit.ops.rwkv6.chunk import DEFAULT_CHUNK_SIZE, wkv6_chunk
from rwkvkit.ops.rwkv6.naive import check_wkv6

# Columns of the state per program. Backward: one block for V <= 64 (RWKV-6's head size), so the
# per-key partial sums ([cdiv(V, BV), B, T, H, K] fp32, four of them) are not multiplied. Not tuned on
# a GPU yet.
_FWD_BV = 32
_BWD_BV = 64


@functools.cache
def _kernels():
    # Triton is optional, and it fixes interpreter-or-GPU when the kernels are decorated
    from rwkvkit.ops.rwkv6 import triton_kernels  # deferred: Triton is optional (see above)

    return triton_kernels


def _forward(r, log_w, k, v, u, state):
    """Launch the forward: ``(y, sT)``."""
    B, T, H, K = r.shape
    V = v.shape[-1]
    y = torch.empty(B, T, H, V, dtype=r.dtype, device=r.device)
    sT = torch.empty(B, H, K, V, dtype=torch.float32, device=r.device)
    BV = column_block(B, H, V, _FWD_BV)
    _kernels().wkv6_fwd_kernel[(cdiv(V, BV), B * H)](
        r, log_w, k, v, u, state if state is not None else sT, y, sT,
        T, H=H, K=K, V=V, BK=pow2(K), BV=BV, HAS_S0=state is not None,
    )  # fmt: skip
    return y, sT


def _backward(r, log_w, k, v, u, state, do, dsT):
    """The gradients, fp32: ``(dr, dlog_w, dk, dv, du, dstate)``. ``do``, ``dsT``: None for zeros."""
    B, T, H, K = r.shape
    V = v.shape[-1]
    dev = r.device
    kern = _kernels()
    BV = min(pow2(V), _BWD_BV)
    NV = cdiv(V, BV)
    f32 = dict(dtype=torch.float32, device=dev)
    do = torch.zeros(B, T, H, V, dtype=r.dtype, device=dev) if do is None else do.contiguous()
    dsT = None if dsT is None else dsT.contiguous()
    dr, x, dk, z = (torch.empty(NV, B, T, H, K, **f32) for _ in range(4))
    last = torch.zeros(NV, B * H, K, **f32)
    dv = torch.empty(B, T, H, V, **f32)
    ds0 = torch.empty(B, H, K, V, **f32)
    grid = (NV, B * H)
    kern.wkv6_bwd_state_kernel[grid](
        log_w, k, v, state if state is not None else ds0, do, dsT if dsT is not None else ds0,
        dr, x, last,
        T, B=B, H=H, K=K, V=V, BK=pow2(K), BV=BV, HAS_S0=state is not None, HAS_DST=dsT is not None,
    )  # fmt: skip
    kern.wkv6_bwd_adjoint_kernel[grid](
        r, log_w, k, v, do, dsT if dsT is not None else ds0, dk, z, dv, ds0,
        T, B=B, H=H, K=K, V=V, BK=pow2(K), BV=BV, HAS_DST=dsT is not None,
    )  # fmt: skip
    dr, x, dk, z, last = (g.sum(0) for g in (dr, x, dk, z, last))
    r, k, v, u, do = (t.float() for t in (r, k, v, u, do))
    # the bonus (r_t . (u * k_t)) v_t
    vdo = (v * do).sum(-1, keepdim=True)
    dr += u * k * vdo
    dk += u * r * vdo
    du = (r * k * vdo).sum((0, 1))
    dv += (r * u * k).sum(-1, keepdim=True) * do
    # d log_w: a reverse cumulative sum of dL/dG (see triton_kernels)
    dG = torch.empty(B, T, H, K, **f32)
    dG[:, :-1] = r[:, 1:] * x[:, 1:] - k[:, :-1] * z[:, :-1]
    dG[:, -1] = last.view(B, H, K)
    dlw = dG.flip(1).cumsum(1).flip(1)
    return dr, dlw, dk, dv, du, ds0


class _WKV6Triton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, r, log_w, k, v, u, state):
        y, sT = _forward(r, log_w, k, v, u, state)
        ctx.save_for_backward(r, log_w, k, v, u, state)
        return y, sT

    @staticmethod
    def backward(ctx, dy, dsT):
        r, log_w, k, v, u, state = ctx.saved_tensors
        grads = _backward(r, log_w, k, v, u, state, dy, dsT)
        inputs = (r, log_w, k, v, u, state)
        return tuple(
            g.to(x.dtype) if need else None for g, x, need in zip(grads, inputs, ctx.needs_input_grad)
        )


@no_autocast
def wkv6_triton(
    r: torch.Tensor,
    log_w: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    u: torch.Tensor,
    state: torch.Tensor | None = None,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """WKV-6 in Triton; the contract of :func:`rwkvkit.ops.rwkv6.naive.wkv6_naive` (see the module
    docstring for dtypes). ``chunk_size`` applies only to fp64 inputs, which go to the ``chunk`` tier."""
    op = "wkv6_triton"
    check_wkv6(op, r, log_w, k, v, u, state)
    check_device(op, (r, log_w, k, v, u, state))
    if any(x.dtype == torch.float64 for x in (r, log_w, k, v, u)):
        return wkv6_chunk(r, log_w, k, v, u, state, chunk_size=chunk_size)
    if r.shape[1] == 0:
        return empty_sequence(r, v, state)
    # contiguous copies: the kernels read [B, T, H, K] rows (WKV-5's broadcast decay is a stride-0 view)
    r, log_w, k, v, u = (x.contiguous() for x in (r, log_w, k, v, u))
    state = None if state is None else state.contiguous()
    if not needs_grad(r, log_w, k, v, u, state):
        return _forward(r, log_w, k, v, u, state)
    return _WKV6Triton.apply(r, log_w, k, v, u, state)
