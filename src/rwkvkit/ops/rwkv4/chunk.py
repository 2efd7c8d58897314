"""WKV-4 in chunked-parallel form, pure PyTorch (CPU and GPU, differentiable with autograd).

The sequence is cut into chunks of ``L`` tokens. Inside a chunk every output row is one log-sum-exp
over broadcast ``[L, L]`` exponent matrices (per channel); between chunks only the ``(aa, bb, pp)``
state is carried, one naive-like merge per chunk.

Derivation (one channel; ``t, i`` count tokens from the chunk start; the chunk starts in state
``a_0 = aa_0 e^pp_0``, ``b_0 = bb_0 e^pp_0``). Unrolling ``a <- e^w a + e^k v`` gives::

    wkv_t = ( a_0 e^{t w} + sum_{i<t} e^{(t-1-i) w + k_i} v_i + e^{u + k_t} v_t )
          / ( b_0 e^{t w} + sum_{i<t} e^{(t-1-i) w + k_i}     + e^{u + k_t}     )

    a_end = a_0 e^{S w} + sum_{i<S} e^{(S-1-i) w + k_i} v_i          (S = tokens in the chunk)

so every term is ``coefficient * e^{exponent}``: with ``D[t, i] = (t-1-i) w`` for ``i < t``, ``u`` for
``i = t`` and ``-inf`` above the diagonal, the in-chunk exponents are ``E[t, i] = k_i + D[t, i]``, and the
state's exponent at row ``t`` is ``pp_0 + t w``.

Numerics: everything stays in log space. Per output row, ``m_t = max(max_i E[t, i], pp_0 + t w)`` is
subtracted from every exponent before ``exp``, so the largest term is exactly 1 and nothing overflows
however large ``k`` is (``e^k`` itself is never formed) nor underflows to a 0/0 however long the
sequence or strong the decay. The shifts cancel in the ratio, so they are constants for autograd.
The carried state is returned in the naive loop's normalisation: ``pp`` is the largest exponent of the
terms it sums, ``max(pp_0 + S w, max_i (S-1-i) w + k_i)``, which is exactly what the loop's running
``p = max(pp + w, k)`` computes, so the two tiers' states agree component by component (up to rounding)
and can be mixed along one sequence.

Rounding: in-chunk exponents are formed directly as ``(t-1-i) w + k_i`` (one rounding each, nothing
accumulates), and the carry between chunks runs in fp64 (fp32 on MPS, which has no fp64). That is
what keeps long fp32 sequences accurate: the naive loop's ``pp + w`` loses most of ``w`` when ``|w|`` is
far below ``ulp(pp)`` (``|k| ~ 50``, ``w ~ -5e-5``), and those roundings add up over the sequence. At
``T = 8192`` with such inputs the fp32 naive loop is off by 1.2e-4 (relative RMS against the fp64
loop), an fp32 carry would be off by 1.4e-5 at ``L = 8``, and this form is off by 1.8e-7 for any ``L``.

Cost: ``O(B T L C)`` time and memory (the ``[B, N, L, L, C]`` exponent tensor, which autograd keeps for
backward: ``4 B T L C`` bytes in fp32, 64 MiB for ``B T = 4096, C = 512, L = 8``), plus a Python loop
of ``T / L`` small steps. Only the lower triangle of each ``[L, L]`` block is used, and the work is
memory-bound on CPU, so short chunks win there. Measured on one thread of a busy 2-core CPU (fp32,
fresh state, best of 2 x 5 runs, milliseconds ``forward (no_grad) / forward + backward`` of outputs
and final state)::

    B, T, C          L = 4      L = 8      L = 16     L = 32     L = 64      naive loop
    1, 1024, 512     25 / 129   43 /  89   80 / 180   151 / 330  326 / 673   40 /  468
    4,  256, 512     18 /  56   28 /  56   74 / 165   152 / 329  324 / 668   13 /  133
    1, 4096, 128     45 / 408   38 / 184   69 / 218   159 / 368  307 / 670  149 / 2081

hence ``DEFAULT_CHUNK_SIZE = 8``: the fastest (or tied) with backward in all three (2.4-11x the loop), and
within 2x of the fastest forward. (A no_grad forward over wide, short inputs is about as fast as
the loop: the loop's per-token cost is small on CPU.) On a GPU, where the Python loop over chunks
dominates, a larger chunk is likely better (not measured).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from rwkvkit.ops._layout import compute_dtype, no_autocast
from rwkvkit.ops.rwkv4.naive import check_wkv4, wkv4_initial_state

DEFAULT_CHUNK_SIZE = 8

_NEG_INF = float("-inf")


def _in_chunk_exponents(w: torch.Tensor, u: torch.Tensor, L: int) -> torch.Tensor:
    """``D [L(t), L(i), C]``: ``(t-1-i) w`` below the diagonal, ``u`` on it, ``-inf`` above it."""
    idx = torch.arange(L, device=w.device)
    lag = (idx[:, None] - idx[None, :] - 1).to(w.dtype)  # t - 1 - i
    below = (idx[:, None] > idx[None, :]).unsqueeze(-1)
    diag = (idx[:, None] == idx[None, :]).unsqueeze(-1)
    # torch.where, not a multiply by a 0/1 mask: -inf * 0 would be NaN
    return torch.where(below, lag.unsqueeze(-1) * w, torch.where(diag, u, _NEG_INF))


@no_autocast
def wkv4_chunk(
    w: torch.Tensor,
    u: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    state: torch.Tensor | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked-parallel WKV-4; same contract as :func:`rwkvkit.ops.rwkv4.naive.wkv4_naive`.

    Args:
        w: ``[C]`` decay exponent per step, negative (``-exp(time_decay)``); any shape with ``C`` elements.
        u: ``[C]`` bonus of the current token (``time_first``).
        k, v: ``[B, T, C]``.
        state: ``[B, 3, C]`` = ``(aa, bb, pp)``, or None for a fresh state.
        chunk_size: tokens per chunk (``T`` need not be a multiple; the last chunk is shorter).

    Returns:
        ``(wkv [B, T, C] in v.dtype, state [B, 3, C] in fp32 / fp64)``, the state in the naive loop's
        ``(aa, bb, pp)`` normalisation.

    Example::

        >>> B, T, C = 2, 100, 64
        >>> w = -torch.exp(torch.randn(C))  # -exp(time_decay)
        >>> u = torch.randn(C)
        >>> k, v = torch.randn(B, T, C), torch.randn(B, T, C)
        >>> y, state = wkv4_chunk(w, u, k, v)
        >>> y2, state = wkv4_chunk(w, u, k, v, state)  # continue the same sequences
    """
    op = "wkv4_chunk"
    check_wkv4(op, w, u, k, v, state)
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"{op}: chunk_size must be an int >= 1, got {chunk_size!r}")
    B, T, C = k.shape
    dt = compute_dtype(w, u, k, v)
    out_dtype = v.dtype if v.dtype.is_floating_point else dt
    w, u = w.reshape(C).to(dt), u.reshape(C).to(dt)
    state = wkv4_initial_state(B, C, device=k.device, dtype=dt) if state is None else state.to(dt)
    if T == 0:
        return v.new_zeros(B, 0, C, dtype=out_dtype), state

    L = min(chunk_size, T)
    N = math.ceil(T / L)
    pad = N * L - T
    # [B, T, C] -> [B, N, L, C]; padded tokens are masked out of every sum that real rows and the
    # carried state see (only the discarded padding rows of the last chunk read them)
    k_, v_ = (F.pad(x.to(dt), (0, 0, 0, pad)).view(B, N, L, C) for x in (k, v))
    pos = torch.arange(L, device=k.device)
    span = torch.full((N,), L, device=k.device)  # tokens per chunk: L, ..., L, and the remainder
    span[-1] = T - (N - 1) * L

    # --- in-chunk part, all chunks at once: wkv_t's sums normalised by the in-chunk row maximum ----
    E = k_.unsqueeze(2) + _in_chunk_exponents(w, u, L)  # [B, N, L(t), L(i), C]
    m_in = E.detach().amax(dim=3)  # [B, N, L, C]: finite (the diagonal is never masked)
    # in place: E is not needed by autograd (the add's backward saves nothing), saves a full buffer
    P = E.sub_(m_in.unsqueeze(3)).exp_()  # e^{E - m_in}, the largest term of every row is 1
    num_in = (P * v_.unsqueeze(2)).sum(dim=3)  # [B, N, L, C]
    den_in = P.sum(dim=3)  # >= 1

    # --- what each chunk adds to the carried state: exponents (S-1-i) w + k_i over its S tokens ------
    end_lag = (span[:, None] - 1 - pos[None, :]).to(dt)  # [N, L]
    valid = (pos[None, :] < span[:, None]).unsqueeze(-1)  # [N, L, 1]
    E_end = torch.where(valid, k_ + end_lag.unsqueeze(-1) * w, _NEG_INF)  # [B, N, L, C]
    # the maximum keeps its gradient: it becomes the new pp, which is part of the returned state
    p_end = E_end.amax(dim=2)  # [B, N, C]
    p_end_c = p_end.detach()  # as a shift inside A/B it cancels (A e^{p_end - p} below)
    X = torch.exp(E_end - p_end_c.unsqueeze(2))
    A_end, B_end = (X * v_).sum(dim=2), X.sum(dim=2)  # [B, N, C]
    # The carry runs in fp64 where the device has it (not MPS): pp takes one rounding per chunk, and in
    # fp32 a weak decay S w is far below ulp(pp) when k is large, so over thousands of chunks those
    # roundings would add up (T = 8192, |k| ~ 50, w ~ -5e-5: ~1e-5 relative error at L = 8). In fp64
    # the in-chunk exponents' single roundings are all that is left. It is [B, C] work per chunk.
    wide = torch.float64 if k.device.type != "mps" else dt
    chunk_decay = span.to(wide)[:, None] * w.to(wide)  # [N, C]: S w
    p_end_w, p_end_cw, A_end, B_end = (x.to(wide) for x in (p_end, p_end_c, A_end, B_end))

    # --- the only sequential part: carry (aa, bb, pp) across chunks, as the naive loop would ---------
    aa, bb, pp = state.to(wide).unbind(1)
    starts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    for n in range(N):
        starts.append((aa, bb, pp))
        ww = pp + chunk_decay[n]
        p = torch.maximum(ww, p_end_w[:, n])
        e1, e2 = torch.exp(ww - p), torch.exp(p_end_cw[:, n] - p)
        aa, bb, pp = e1 * aa + e2 * A_end[:, n], e1 * bb + e2 * B_end[:, n], p
    aa0, bb0, pp0 = (torch.stack(x, dim=1).unsqueeze(2) for x in zip(*starts))  # [B, N, 1, C]

    # --- outputs: merge each row's in-chunk sums with the chunk's starting state (exponent pp0 + t w)
    s = (pp0 + pos.to(wide)[:, None] * w.to(wide)).to(dt)  # [B, N, L, C], rounded once
    aa0, bb0 = aa0.to(dt), bb0.to(dt)
    with torch.no_grad():  # both shifts are constants: they cancel in the ratio
        m = torch.maximum(m_in, s)
        f_in = torch.exp(m_in - m)
    f_s = torch.exp(s - m)
    y = (num_in * f_in + aa0 * f_s) / (den_in * f_in + bb0 * f_s)
    y = y.reshape(B, N * L, C)[:, :T]
    return y.to(out_dtype), torch.stack([aa, bb, pp], dim=1).to(dt)
