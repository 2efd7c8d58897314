"""Bi-WKV, the bidirectional WKV of Vision-RWKV (arXiv 2403.02308), and its Q-Shift.

Per channel ``c`` (dropped below), with ``T`` tokens, raw parameters ``w, u`` and the scaled
``w' = w / T``, ``u' = u / T``::

    wkv_t = ( sum_{i != t} e^{-(|t-i|-1) w' + k_i} v_i + e^{u' + k_t} v_t )
          / ( sum_{i != t} e^{-(|t-i|-1) w' + k_i}     + e^{u' + k_t}     )

The ``1 / T`` scaling is applied here, inside the operator (the official code calls its kernel with
``spatial_decay / T, spatial_first / T``): pass the raw parameters. ``w`` is used as is, not
exponentiated; a negative ``w`` makes far tokens weigh more. Because of the scaling the whole decay
exponent over the sequence is bounded by ``|w|``. ``causal=True`` keeps only ``i <= t`` (the
one-directional ablation of the paper; then ``wkv_t`` is RWKV-4's WKV with decay ``w / T``).

Two tiers: :func:`biwkv_naive` (the ``O(T^2)`` spec, the reference) and :func:`biwkv` (linear time).
Both compute in fp32, or fp64 for fp64 inputs, and return ``v.dtype``.
"""

from __future__ import annotations

import torch

from rwkvkit.ops._layout import compute_dtype, no_autocast

DEFAULT_CHUNK_SIZE = 64


def _check(op: str, w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    if k.dim() != 3:
        raise ValueError(f"{op}: `k` must have 3 dims [B, T, C], got shape {tuple(k.shape)}")
    if v.shape != k.shape:
        raise ValueError(
            f"{op}: `v` has shape {tuple(v.shape)} but `k` has {tuple(k.shape)}; both are [B, T, C]"
        )
    C = k.shape[-1]
    for name, p in (("w", w), ("u", u)):
        if p.shape != (C,):
            raise ValueError(f"{op}: `{name}` must have shape [C] = ({C},), got {tuple(p.shape)}")
    for name, x in (("w", w), ("u", u), ("k", k), ("v", v)):
        if not x.is_floating_point():
            raise ValueError(f"{op}: `{name}` must be a floating-point tensor, got {x.dtype}")


@no_autocast
def biwkv_naive(
    w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False
) -> torch.Tensor:
    """Bi-WKV as written: the full ``[T, T]`` exponent matrix per channel (``O(B T^2 C)`` memory).

    Args:
        w, u: ``[C]``, raw (this op divides them by ``T``).
        k, v: ``[B, T, C]``.
        causal: keep only ``i <= t``.

    Returns:
        ``[B, T, C]`` in ``v.dtype``.

    Numerics: every row's exponents are shifted by their (detached) maximum before ``exp``, so the
    largest term of each row is exactly 1: no overflow, and no 0/0, for any ``w, u, k``.
    """
    _check("biwkv_naive", w, u, k, v)
    B, T, C = k.shape
    if T == 0:
        return v.new_zeros(B, 0, C)
    dt = compute_dtype(w, u, k, v)
    w, u, k, v_ = (x.to(dt) for x in (w, u, k, v))
    t = torch.arange(T, device=k.device, dtype=dt)
    dist = (t[:, None] - t[None, :]).abs()  # [T(t), T(i)]
    E = -(dist - 1)[..., None] * (w / T) + k[:, None, :, :]  # [B, T, T, C]: exponent of (t, i)
    eye = torch.eye(T, dtype=torch.bool, device=k.device)[..., None]
    E = torch.where(eye, (u / T) + k[:, None, :, :], E)
    if causal:
        upper = torch.ones(T, T, dtype=torch.bool, device=k.device).triu(1)[..., None]
        E = E.masked_fill(upper, float("-inf"))
    P = torch.exp(E - E.amax(dim=2, keepdim=True).detach())
    out = torch.einsum("btic,bic->btc", P, v_) / P.sum(dim=2)
    return out.to(v.dtype)


def _one_way(w: torch.Tensor, k: torch.Tensor, v: torch.Tensor, L: int):
    """The strictly-past half ``F_t = sum_{i<t} e^{-(t-1-i) w + k_i} (v_i, 1)``, in log-scaled form.

    ``w`` is the per-step decay ``[C]`` (already divided by T), ``k, v`` are ``[B, T, C]``. Returns
    ``(log_scale, num, den)``, each ``[B, T, C]``, with ``F_t = e^{log_scale_t} (num_t, den_t)``;
    ``log_scale`` is detached and is the log of the (detached) denominator itself, so ``den`` is 1 in
    value (``log_scale = -inf`` and ``num = den = 0`` where the sum is empty or underflowed).

    Chunks of ``L`` tokens: inside a chunk one exclusive cumulative sum of ``e^{j w + k_j - m}``
    (``j`` the local index, ``m`` the chunk's max exponent); between chunks the carried state
    ``X_n = sum_{i < nL} e^{-(nL-1-i) w + k_i} v_i`` is kept as ``e^{p_n} (N_n, D_n)`` and updated once
    per chunk (a Python loop of ``T / L`` small steps, like WKV-4's naive loop but per chunk).
    """
    B, T, C = k.shape
    n = -(-T // L)
    pad = n * L - T
    if pad:  # padded tokens have k = -inf: weight exactly 0, only ever in the last chunk
        k = torch.cat([k, k.new_full((B, pad, C), float("-inf"))], dim=1)
        v = torch.cat([v, v.new_zeros(B, pad, C)], dim=1)
    k = k.view(B, n, L, C)
    v = v.view(B, n, L, C)
    j = torch.arange(L, device=k.device, dtype=k.dtype)[:, None]  # [L, 1]
    a = j * w + k  # [B, n, L, C]: exponents in the chunk's own frame
    m = a.detach().amax(dim=2, keepdim=True)  # [B, n, 1, C], finite (each chunk has a real token)
    e = torch.exp(a - m)  # <= 1
    ev = e * v
    cP, cQ = torch.cumsum(ev, dim=2), torch.cumsum(e, dim=2)
    # exclusive prefix sums (i < j) by shifting, not cumsum - x (which cancels when e_j >> the prefix)
    P = torch.nn.functional.pad(cP[:, :, :-1], (0, 0, 1, 0))
    Q = torch.nn.functional.pad(cQ[:, :, :-1], (0, 0, 1, 0))

    # carry between chunks: X_{c+1} = e^{-L w} X_c + e^{m_c - (L-1) w} (chunk total)
    wd = w.detach()
    p = k.new_full((B, C), float("-inf"))
    N = D = k.new_zeros(B, C)
    p_s, N_s, D_s = [p], [N], [D]
    for c in range(n - 1):
        mc = m[:, c, 0]
        p_new = torch.maximum(p - L * wd, mc - (L - 1) * wd)
        f_new = torch.exp(mc - p_new - (L - 1) * w)
        N_new, D_new = f_new * cP[:, c, -1], f_new * cQ[:, c, -1]
        if c:  # chunk 0 has no carried state (p = -inf)
            f_old = torch.exp(p - p_new - L * w)
            N_new, D_new = N_new + f_old * N, D_new + f_old * D
        p, N, D = p_new, N_new, D_new
        p_s.append(p)
        N_s.append(N)
        D_s.append(D)
    p_s, N_s, D_s = (torch.stack(x, dim=1)[:, :, None] for x in (p_s, N_s, D_s))  # [B, n, 1, C]

    # row t = cL + j: F_t = e^{-j w} X_c + e^{m_c - (j-1) w} (P_j, Q_j)
    scale = torch.maximum(p_s - j * wd, m - (j - 1) * wd)  # [B, n, L, C], detached, finite
    f_carry = torch.exp(p_s - scale - j * w)  # 0 in chunk 0 (p = -inf)
    f_in = torch.exp(m - scale - (j - 1) * w)
    num = f_carry * N_s + f_in * P
    den = f_carry * D_s + f_in * Q
    # renormalise by the detached denominator: the scale becomes the row's true log magnitude, so the
    # parts of a row can be compared exactly and the largest one has den == 1
    dd = den.detach()
    empty = dd <= 0
    dd = torch.where(empty, 1.0, dd)
    scale = torch.where(empty, float("-inf"), scale + torch.log(dd))
    num, den = num / dd, den / dd
    return (x.reshape(B, n * L, C)[:, :T] for x in (scale, num, den))


@no_autocast
def biwkv(
    w: torch.Tensor,
    u: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> torch.Tensor:
    """Bi-WKV in linear time: a forward and a backward scan plus the ``t = i`` bonus term.

    Args:
        w, u: ``[C]``, raw (this op divides them by ``T``, as the official kernel's caller does).
        k, v: ``[B, T, C]``.
        causal: keep only ``i <= t`` (the forward scan and the bonus term).
        chunk_size: tokens per chunk of the scans (see below); any value >= 1 gives the same result.

    Returns:
        ``[B, T, C]`` in ``v.dtype``.

    Method: for a row ``t`` the past half is ``sum_{i<t} e^{-(t-1-i) w' + k_i} v_i`` and the future half
    is the same sum on the time-reversed sequence, so one scan routine serves both (run on ``flip``ped
    inputs for the future). Each scan cuts the sequence into chunks of ``chunk_size`` tokens: inside a
    chunk it is one cumulative sum of ``e^{j w' + k_j - m_chunk} v_j`` (``j`` local), between chunks a
    ``[B, C]`` state ``e^{p} (N, D)`` is carried with a running max ``p`` (one loop step per chunk).
    The three parts (past, future, bonus) are then put on a common per-row scale
    ``r_t = max(past, future, u' + k_t)`` and summed; ``wkv = num / den``. Cost ``O(B T C)`` time and
    memory, plus ``2 T / chunk_size`` small loop steps.

    Numerics: every ``exp`` has a non-positive argument (shifted by a detached max), so nothing
    overflows for any ``w, u, k``. A term can only underflow when it is ``e^{-87}`` (fp32) below the
    largest one of its chunk, i.e. when ``k`` spans more than about 80 inside one chunk (or
    ``|w| chunk_size / T`` does): such terms are negligible in their row unless every other term of
    that row is too, which needs ``|k|`` far beyond the ~20 this op is tested for. Tested: fp32 with
    ``|k| <= 20``, ``w`` in ``[-5, 3] * 10``, ``T <= 4096`` against the fp64 reference.

    Gradients: plain autograd through this linear-time form (no custom ``autograd.Function``): the
    shifts are detached constants (they cancel in ``num / den``), and the backward that autograd
    builds is itself linear-time (reverse cumulative sums and the chunk loop run backwards).
    """
    _check("biwkv", w, u, k, v)
    if chunk_size < 1:
        raise ValueError(f"biwkv: chunk_size must be >= 1, got {chunk_size}")
    B, T, C = k.shape
    if T == 0:
        return v.new_zeros(B, 0, C)
    dt = compute_dtype(w, u, k, v)
    w, u, k, v_ = (x.to(dt) for x in (w, u, k, v))
    w = w / T
    s = u / T + k  # exponent of the bonus term
    L = min(chunk_size, T)
    parts = [tuple(_one_way(w, k, v_, L))]
    if not causal:
        sb, nb, db = _one_way(w, k.flip(1), v_.flip(1), L)
        parts.append((sb.flip(1), nb.flip(1), db.flip(1)))
    r = s.detach()
    for sc, _, _ in parts:
        r = torch.maximum(r, sc)
    f_self = torch.exp(s - r)
    num = f_self * v_
    den = f_self
    for sc, nm, dn in parts:
        f = torch.exp(sc - r)  # sc = -inf (empty sum) gives 0
        num = num + f * nm
        den = den + f * dn
    return (num / den).to(v.dtype)


@no_autocast
def qshift(x: torch.Tensor, hw: tuple[int, int], shift: int = 1, gamma: float = 0.25) -> torch.Tensor:
    """Q-Shift of Vision-RWKV: each channel quarter takes a neighbour pixel on the ``H x W`` grid.

    Args:
        x: ``[B, T, C]`` tokens in row-major grid order, ``T = H * W``.
        hw: ``(H, W)``.
        shift: distance in pixels (``0`` returns ``x`` unchanged).
        gamma: fraction of the channels per direction (``<= 1/4``); with ``g = int(C * gamma)``:
            channels ``[0, g)`` take the pixel on the left (``x - shift``), ``[g, 2g)`` the one on the
            right, ``[2g, 3g)`` the one above (``y - shift``), ``[3g, 4g)`` the one below; the rest
            are unshifted. Pixels shifted in from outside the grid are zero.

    Returns:
        ``[B, T, C]``.
    """
    if x.dim() != 3:
        raise ValueError(f"qshift: `x` must have 3 dims [B, T, C], got shape {tuple(x.shape)}")
    H, W = hw
    B, T, C = x.shape
    if H * W != T:
        raise ValueError(f"qshift: hw = {tuple(hw)} has {H * W} pixels but `x` has T = {T} tokens")
    if not 0 <= gamma <= 0.25:
        raise ValueError(f"qshift: gamma must be in [0, 1/4], got {gamma}")
    if shift < 0:
        raise ValueError(f"qshift: shift must be >= 0, got {shift}")
    if shift == 0:
        return x
    g = int(C * gamma)
    s = shift
    ws, hs = max(W - s, 0), max(H - s, 0)  # a shift beyond the grid leaves only zeros
    xg = x.view(B, H, W, C)
    out = torch.zeros_like(xg)
    out[:, :, s:, 0:g] = xg[:, :, :ws, 0:g]  # from the left
    out[:, :, :ws, g : 2 * g] = xg[:, :, s:, g : 2 * g]  # from the right
    out[:, s:, :, 2 * g : 3 * g] = xg[:, :hs, :, 2 * g : 3 * g]  # from above
    out[:, :hs, :, 3 * g : 4 * g] = xg[:, s:, :, 3 * g : 4 * g]  # from below
    out[..., 4 * g :] = xg[..., 4 * g :]
    return out.view(B, T, C)
