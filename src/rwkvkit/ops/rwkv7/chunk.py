"""WKV-7 in chunked-parallel form, pure PyTorch (CPU and GPU, differentiable with autograd).

The sequence is cut into chunks of ``C`` tokens. Inside a chunk everything is matrix products;
between chunks only the ``[K, V]`` state is carried, one small matmul per chunk.

Derivation (one head; S key-major ``[K, V]``; rows of the ``[C, K]`` matrices are time steps).
The step ``S_t = diag(w_t) S_{t-1} + b_t sa_t^T + k_t v_t^T`` with ``sa_t = S_{t-1}^T a_t`` unrolls,
with ``G_t = prod_{s<=t} w_s`` (``g = cumsum(log_w)``, so ``G = exp(g)``), to::

    S_t = diag(G_t) ( S_0 + sum_{s<=t} diag(1/G_s) (b_s sa_s^T + k_s v_s^T) )

Hence, with ``a~_t = a_t G_{t-1}``, ``r~_t = r_t G_t``, ``b^_s = b_s / G_s``, ``k^_s = k_s / G_s``::

    SA = A~ S_0 + L_ab SA + L_ak V          L_ab = strict_tril(a~ b^T), L_ak = strict_tril(a~ k^T)
    SA = (I - L_ab)^{-1} (A~ S_0 + L_ak V)  =: P S_0 + Q       (unit lower triangular solve)
    O  = R~ S_0 + M_rb SA + M_rk V          M_rb = tril(r~ b^T),  M_rk = tril(r~ k^T)
       = (R~ + M_rb P) S_0 + (M_rb Q + M_rk V)
    S_C = diag(G_C) S_0 + B'^T SA + K'^T V  B'_s = b_s G_C/G_s,  K'_s = k_s G_C/G_s
        = (diag(G_C) + B'^T P) S_0 + (B'^T Q + K'^T V)

Everything except the ``S_0`` products is computed for all chunks at once; the carried state then
needs one ``[K, K] @ [K, V]`` product per chunk, and the outputs one batched product at the end.

Numerics: the pairwise factors ``G_t / G_s`` are formed as ``exp(g_t - m) * exp(m - g_s)`` with ``m``
the log-decay at the middle of the chunk, so no factor exceeds ``exp(max|log_w| * C / 2)``. RWKV-7's
decay is at least ``exp(-exp(-0.5)) ~ 0.545`` (``|log_w| < 0.61``): with ``C = 64`` that is ``e^19``,
far from fp32 overflow. For stronger decays the chunk length is reduced automatically so that the
bound (``_EXP_LIMIT``) always holds; the result is exact either way (``C = 1`` is the recurrence).

That reduction needs the largest ``|log_w|``. A caller that knows a bound states it (``max_decay``:
the RWKV-7 layer passes ``exp(-0.5)``) and the chunk length follows from Python floats alone;
otherwise it is measured, ``log_w.min()`` read on the host: a device sync on a GPU, and a graph
break under ``torch.compile``. The two agree whenever the bound holds and does not force a halving
the data would not (for RWKV-7, ``C = 32``: ``0.61 * 32 = 19.4 < 60``, no halving either way).
"""

from __future__ import annotations

import math

import torch

from rwkvkit.ops._layout import (
    compute_dtype,
    no_autocast,
    to_chunks,
)
from rwkvkit.ops.rwkv7.naive import check_wkv7

DEFAULT_CHUNK_SIZE = 32

# Largest exponent we let a pairwise decay factor reach, per compute dtype (fp32 overflows at ~88,
# and a factor multiplies inputs of size ~1; fp64 at ~709).
_EXP_LIMIT = {torch.float32: 60.0, torch.float64: 600.0}


def _safe_chunk_size(log_w: torch.Tensor, chunk_size: int, dt: torch.dtype, max_decay: float | None) -> int:
    """The largest power-of-two-halving of ``chunk_size`` whose worst pairwise exponent is bounded.

    ``max_decay``: a stated bound on ``|log_w|`` (no tensor read); None measures it (a host sync).
    """
    worst = decay_bound(log_w, max_decay)
    limit = _EXP_LIMIT.get(dt, 60.0)
    C = chunk_size
    while C > 1 and worst * C > limit:  # the span t - s < C, so |g_t - g_s| <= worst * C
        C //= 2
    return C


def decay_bound(log_w: torch.Tensor, max_decay: float | None) -> float:
    """The largest ``|log_w|`` the tiers must allow for: ``max_decay`` when stated (no tensor read),
    else measured (a host sync; 0 for an empty tensor)."""
    if max_decay is not None:
        return float(max_decay)
    if log_w.numel() == 0:
        return 0.0
    return float(log_w.detach().min().neg().clamp_min(0.0))  # largest |log decay| per step


def check_max_decay(op: str, max_decay: object) -> None:
    """ValueError unless ``max_decay`` is None or a finite Python number ``>= 0`` (not a bool, not a
    tensor: the point of stating a bound is that nothing is read from a tensor)."""
    ok = isinstance(max_decay, (int, float)) and not isinstance(max_decay, bool) and 0 <= max_decay < math.inf
    if max_decay is not None and not ok:
        msg = f"max_decay must be a finite number >= 0 (a bound on |log_w|), got {max_decay!r}"
        raise ValueError(f"{op}: {msg}")


@no_autocast
def wkv7_chunk(
    r: torch.Tensor,
    log_w: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    state: torch.Tensor | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    *,
    max_decay: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked-parallel WKV-7; same contract as :func:`rwkvkit.ops.rwkv7.naive.wkv7_naive`.

    Args:
        r, log_w, k, a, b: ``[B, T, H, K]``; ``log_w`` = log of the decay (``<= 0``).
        v: ``[B, T, H, V]``.
        state: optional initial state ``[B, H, K, V]``.
        chunk_size: tokens per chunk (``T`` need not be a multiple; the tail is padded with
            identity steps, which leave the state unchanged). Halved while ``max|log_w| * C`` could
            overflow the compute dtype (see the module docstring).
        max_decay: a bound the caller guarantees, ``|log_w| <= max_decay`` everywhere (a Python
            float ``>= 0``); the chunk size is then computed without reading ``log_w`` (no host
            sync, ``torch.compile(fullgraph=True)`` works). None (default): measure ``log_w.min()``.
            A bound that does not hold can overflow the exponent factors.

    Returns:
        ``(o [B, T, H, V] in r.dtype, final state [B, H, K, V] in fp32 / fp64)``.

    Example::

        >>> B, T, H, K = 2, 100, 4, 64
        >>> r, k, v = (torch.randn(B, T, H, K) for _ in range(3))
        >>> kk = torch.nn.functional.normalize(torch.randn(B, T, H, K), dim=-1)
        >>> a_icl = torch.rand(B, T, H, K)
        >>> log_w = -0.6 * torch.rand(B, T, H, K)
        >>> o, S = wkv7_chunk(r, log_w, k, v, -kk, kk * a_icl)
    """
    op = "wkv7_chunk"
    check_wkv7(op, r, log_w, k, v, a, b, state)
    if chunk_size < 1:
        raise ValueError(f"{op}: chunk_size must be >= 1, got {chunk_size}")
    check_max_decay(op, max_decay)
    B, T, H, K = r.shape
    V = v.shape[-1]
    dt = compute_dtype(r, log_w, k, v, a, b)
    out_dtype = r.dtype
    S0 = r.new_zeros(B, H, K, V, dtype=dt) if state is None else state.to(dt)
    if T == 0:
        return r.new_zeros(B, 0, H, V), S0

    C = _safe_chunk_size(log_w, min(chunk_size, T), dt, max_decay)
    N = math.ceil(T / C)

    def chunked(x: torch.Tensor) -> torch.Tensor:
        # [B, T, H, D] -> [B, H, N, C, D]; zero padding = identity steps (log_w 0, a = b = k = v = 0)
        return to_chunks(x, C, dt)

    r_, lw, k_, v_, a_, b_ = (chunked(x) for x in (r, log_w, k, v, a, b))

    g = lw.cumsum(dim=-2)  # [B, H, N, C, K] log G_t, inclusive, from the chunk start
    g_prev = g - lw  # log G_{t-1}
    g_last = g[..., -1:, :]  # log G_C
    m = g[..., C // 2 : C // 2 + 1, :]  # centre of the chunk: keeps every factor within e^(|lw| C/2)

    r_c = r_ * torch.exp(g - m)  # r~ (centred)
    a_c = a_ * torch.exp(g_prev - m)  # a~ (centred)
    inv = torch.exp(m - g)
    b_c = b_ * inv  # b^ (centred)
    k_c = k_ * inv  # k^ (centred)

    idx = torch.arange(C, device=r.device)
    strict = idx[:, None] > idx[None, :]  # s < t
    incl = idx[:, None] >= idx[None, :]  # s <= t
    zero = r_.new_zeros(())
    # torch.where, not a multiply: the masked-out upper triangle may hold large values
    L_ab = torch.where(strict, a_c @ b_c.mT, zero)  # [.., C, C]
    L_ak = torch.where(strict, a_c @ k_c.mT, zero)
    M_rb = torch.where(incl, r_c @ b_c.mT, zero)
    M_rk = torch.where(incl, r_c @ k_c.mT, zero)

    # SA = P S_0 + Q: one unit-lower-triangular solve for both right-hand sides
    eye = torch.eye(C, dtype=dt, device=r.device)
    rhs = torch.cat([a_ * torch.exp(g_prev), L_ak @ v_], dim=-1)  # [.., C, K + V]
    PQ = torch.linalg.solve_triangular(eye - L_ab, rhs, upper=False, unitriangular=True)
    P, Q = PQ.split([K, V], dim=-1)

    O_S = r_ * torch.exp(g) + M_rb @ P  # [.., C, K]: output = O_S @ S_0 + O_c
    O_c = M_rb @ Q + M_rk @ v_  # [.., C, V]
    to_end = torch.exp(g_last - g)  # G_C / G_s <= 1
    Bt = (b_ * to_end).mT  # [.., K, C]
    A_ch = torch.diag_embed(torch.exp(g_last.squeeze(-2))) + Bt @ P  # [.., K, K]: S_C = A_ch S_0 + U_ch
    U_ch = Bt @ Q + (k_ * to_end).mT @ v_  # [.., K, V]

    # the only sequential part: carry the state across chunks
    starts = []
    S = S0
    # unbind, not A_ch[:, :, n]: indexing in a loop makes autograd write a full-size gradient per step
    for A_n, U_n in zip(A_ch.unbind(2), U_ch.unbind(2)):
        starts.append(S)
        S = A_n @ S + U_n
    S_starts = torch.stack(starts, dim=2)  # [B, H, N, K, V]: state at the start of each chunk

    o = O_S @ S_starts + O_c  # [B, H, N, C, V]
    o = o.permute(0, 2, 3, 1, 4).reshape(B, N * C, H, V)[:, :T]
    return o.to(out_dtype), S
