"""WKV-6 (and WKV-5) in chunked-parallel form, pure PyTorch (CPU and GPU, differentiable with autograd).

The sequence is cut into chunks of ``C`` tokens, each chunk into ``n = C / c`` sub-chunks of ``c``
tokens. Inside a chunk everything is matrix products; between chunks only the ``[K, V]`` state is
carried (one elementwise update per chunk).

Derivation (one head; S key-major ``[K, V]``; local time ``0 <= t < C`` inside a chunk with start
state ``S_0``). Write ``lam(a, b) = sum_{a < m < b} log_w_m`` for the log-decay strictly between
steps ``a`` and ``b`` (a vector over the K channels, always ``<= 0``). Unrolling
``S_t = diag(w_t) S_{t-1} + k_t v_t^T`` in ``y_t = S_{t-1}^T r_t + (r_t . (u * k_t)) v_t`` gives::

    y_t = (r_t * e^lam(-1, t))^T S_0  +  sum_{s < t} A_ts v_s  +  (r_t . (u * k_t)) v_t
    A_ts = sum_k r_tk k_sk e^lam(s, t)_k
    S_C = diag(e^lam(-1, C)) S_0  +  sum_s (k_s * e^lam(s, C)) v_s^T

Every factor ``e^lam`` lies in [0, 1], but ``A`` is no plain matrix product: its decay depends on the
channel ``k`` and on both ``t`` and ``s``. The usual split ``lam(s, t) = g_{t-1} - g_s`` (``g`` the
cumulative log-decay) gives ``A = (R * e^g) (K * e^-g)^T``, whose factor ``e^-g`` grows like
``e^(|log_w| C)``: fine for RWKV-7 (``|log_w| < 0.61``), hopeless for RWKV-5/6, whose decays
``exp(-exp(x))`` can be ``e^-30`` or ``e^-10000``. Instead, per pair of sub-chunks ``(i, j)``:

* ``j < i`` (``s`` in sub-chunk ``j``, ``t`` in ``i``): with ``e_j`` the last step of ``j`` and ``b_i``
  the first of ``i``, ``lam(s, t) = lam(s, e_j + 1) + lam(e_j, b_i) + lam(b_i - 1, t)``: a suffix
  inside ``j``, the whole sub-chunks strictly between, a prefix inside ``i``. All three are ``<= 0``, so::

      A_ij = (R_i * e^lam(b_i - 1, t)) diag(e^lam(e_j, b_i)) (K_j * e^lam(s, e_j + 1))^T

  is one ``[c, K] @ [K, c]`` product of factors in [0, 1] (FLA's inter-sub-chunk scheme).
* ``j == i``: the pairwise decay cannot be split safely, so it is formed explicitly: ``e^lam(s, t)``
  for the ``c (c - 1) / 2`` pairs ``s < t`` of the sub-chunk, ``[c (c - 1) / 2, K]``, contracted with
  ``r_t * k_s``; the bonus ``r_t . (u * k_t)`` fills the diagonal.
* The chunk boundary uses ``r_t * e^lam(-1, t)`` and ``k_s * e^lam(s, C)``, again factors in [0, 1].

So no factor ever exceeds 1, whatever ``log_w <= 0`` is, and no chunk has to shrink. Underflow is
harmless: a product of factors in [0, 1] is at most its smallest factor, so a factor that flushes
to 0 stands for a term that is below the smallest float anyway.

Numerics of the exponents: every ``lam`` is computed as a plain sum of the log-decays it spans (a
product with a 0/1 matrix), never as the difference of two cumulative sums. After one very strong
step (``log_w = -1e4``) ``g`` is about ``-1e4`` for the rest of the chunk, and ``g_{t-1} - g_s``
would lose ``1e4 * eps``: a relative error of ~6e-4 (fp32) in every later decay factor of the chunk
(the "spikes" tests measure 3e-4 on the outputs that way). A sum of terms of one sign has a relative
error of at most ``C * eps``, so ``e^lam`` is off by at most ``|lam| C eps`` relatively: small
wherever the factor is not negligible. ``log_w = -inf`` (a zero decay) is clamped to ``-1e30``
(``0 * inf`` in the 0/1 product would be NaN); ``e^-1e30`` is 0 as well. Everything is
data-independent (no branch on the values, no host sync): one code path on any device. Under TF32
(``torch.backends.cuda.matmul.allow_tf32``) the 0/1 products round ``log_w`` to 10 bits like any
fp32 matmul input; since ``|lam| e^lam <= 1/e``, that costs at most ~2e-4 absolute per factor, the
order of TF32's own rounding of the products.

Cost per token and head: the explicit pairwise decays ``(c - 1) / 2 * K`` elements (exp, two
products, a sum), the inter-sub-chunk products ``(n - 1) / 2 * c * K`` multiply-adds over
``(n - 1) / 2 * K`` scaled elements, ``C * V`` for ``A @ V``, ``2 K V`` for the state. Measured on
the 2-core CPU this was built on (torch 2.13, fp32, 2 threads, K = V = 64, random moderate decays;
wall ms, best of 5 interleaved runs on a shared machine, so +-10%)::

    (C, c)             prefill, no grad   train, fwd+bwd   small, fwd+bwd   long, fwd+bwd
    B x T, H           1 x 2048, 32       4 x 512, 8       8 x 256, 4       1 x 4096, 8
    naive loop         273                2637 (*)         358              17271 (*)
    (8, 8)             109                122              59               266
    (16, 8)            110                102              50               237
    (32, 8) default    108                98               46               224
    (64, 8)            132                104              52               240
    (32, 4)            122                98               52               224
    (32, 16)           134                114              58               259

    (*) the naive loop's backward grows like T^2 (each ``x[:, t]`` slice backward writes a full-size
        zero tensor), and varies 3x between runs

``C = 32, c = 8`` is the fastest or within noise of it everywhere: a larger ``c`` pays for the
``c^2 K`` explicit factor, a smaller one for more, smaller products; a larger ``C`` for more
sub-chunk pairs, a smaller one for more state hand-overs and a longer Python loop.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from rwkvkit.ops._layout import compute_dtype, no_autocast
from rwkvkit.ops.rwkv6.naive import check_wkv6

DEFAULT_CHUNK_SIZE = 32
DEFAULT_SUB_CHUNK_SIZE = 8

# log_w below this is clamped to it: exp() of it is 0 in every float dtype, and unlike -inf it stays
# finite through the 0/1 products below (0 * -inf = NaN). Sums of a chunk of them stay far from overflow.
_LOG_W_FLOOR = -1e30


def _interval_sums(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """``out[..., p, :] = sum_{lo[p] < m < hi[p]} x[..., m, :]`` over the open interval.

    ``x``: ``[..., L, K]``; ``lo``, ``hi``: ``[P]`` integer (``lo = -1`` / ``hi = L`` for an open end).
    Returns ``[..., P, K]``. A product with a 0/1 matrix: each output is a plain sum of the entries it
    spans (``1 * x`` and ``0 * x`` are exact), never a difference of two cumulative sums.
    """
    m = torch.arange(x.shape[-2], device=x.device)
    sel = (m > lo[:, None]) & (m < hi[:, None])  # [P, L]
    return sel.to(x.dtype) @ x


def _placement(index: torch.Tensor, size: int, dtype: torch.dtype) -> torch.Tensor:
    """0/1 matrix ``[P, size]`` with a single 1 at ``(p, index[p])``: ``values @ it`` scatters ``values``.

    A scatter written as a matmul: exact (each output gets one term), differentiable, and deterministic
    on every device (``index_copy`` is not, on CUDA), with no host sync (``F.one_hot`` may check).
    """
    return (index[:, None] == torch.arange(size, device=index.device)).to(dtype)


@no_autocast
def wkv6_chunk(
    r: torch.Tensor,
    log_w: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    u: torch.Tensor,
    state: torch.Tensor | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    sub_chunk_size: int = DEFAULT_SUB_CHUNK_SIZE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked-parallel WKV-6; same contract as :func:`rwkvkit.ops.rwkv6.naive.wkv6_naive`.

    Args:
        r, log_w, k: ``[B, T, H, K]``; ``log_w`` = log of the decay, any value ``<= 0`` (``-1e4``
            and ``-inf`` included).
        v: ``[B, T, H, V]``.
        u: ``[H, K]`` bonus (``time_faaaa``).
        state: optional initial state ``[B, H, K, V]``.
        chunk_size: tokens per chunk ``C`` (``T`` need not be a multiple: the tail is padded with
            identity steps, which leave the state unchanged).
        sub_chunk_size: tokens per sub-chunk ``c``; the one actually used is ``gcd(C, c)`` (so that
            it divides the chunk), and neither exceeds ``T`` rounded up to a sub-chunk.

    Returns:
        ``(y [B, T, H, V] in r.dtype, final state [B, H, K, V] in fp32 / fp64)``. Computes in fp32
        (fp64 if an input is fp64).

    Example::

        >>> B, T, H, K = 2, 100, 4, 64
        >>> r, k, v = (torch.randn(B, T, H, K) for _ in range(3))
        >>> log_w = -torch.exp(torch.randn(B, T, H, K))  # RWKV-6: w = exp(-exp(x))
        >>> u = torch.randn(H, K)
        >>> y, S = wkv6_chunk(r, log_w, k, v, u)
    """
    op = "wkv6_chunk"
    check_wkv6(op, r, log_w, k, v, u, state)
    check_value_layout(op, r, v)
    if chunk_size < 1 or sub_chunk_size < 1:
        raise ValueError(
            f"{op}: chunk_size and sub_chunk_size must be >= 1, got {chunk_size} and {sub_chunk_size}"
        )
    B, T, H, K = r.shape
    V = v.shape[-1]
    dt = compute_dtype(r, log_w, k, v, u)
    out_dtype = r.dtype if r.dtype.is_floating_point else dt
    S0 = r.new_zeros(B, H, K, V, dtype=dt) if state is None else state.to(dt)
    if T == 0:
        return r.new_zeros(B, 0, H, V, dtype=out_dtype), S0

    c = min(math.gcd(chunk_size, sub_chunk_size), T)
    C = min(chunk_size, math.ceil(T / c) * c)  # both multiples of c
    n = C // c  # sub-chunks per chunk
    N = math.ceil(T / C)  # chunks
    pad = N * C - T
    dev = r.device

    def chunked(x: torch.Tensor) -> torch.Tensor:
        # [B, T, H, D] -> [B, H, N, n, c, D]; zero padding = identity steps (log_w 0, k = v = r = 0)
        x = x.to(dt)
        if pad:
            x = F.pad(x, (0, 0, 0, 0, 0, pad))
        return x.view(B, N, n, c, H, x.shape[-1]).permute(0, 4, 1, 2, 3, 5)

    r_, lw, k_, v_ = (chunked(x) for x in (r, log_w, k, v))
    lw = lw.clamp(min=_LOG_W_FLOOR)  # after the cast to fp32 / fp64, where -1e30 is finite
    u_ = u.to(dt)[None, :, None, None, None, :]  # [1, H, 1, 1, 1, K]

    # --- diagonal sub-blocks: explicit pairwise decays e^lam(s, t), s < t, packed as [P, K] ---
    ti, si = torch.tril_indices(c, c, offset=-1, device=dev)  # the P = c (c - 1) / 2 pairs s < t
    # exp_ in place: the matmul's backward needs only its inputs, so its output may be overwritten
    decay = _interval_sums(lw, si, ti).exp_()  # [B, H, N, n, P, K] = e^lam(s, t)
    a = (decay * r_[..., ti, :] * k_[..., si, :]).sum(-1)  # [B, H, N, n, P]
    A_d = (a @ _placement(ti * c + si, c * c, dt)).view(*a.shape[:-1], c, c)
    A_d = A_d + torch.diag_embed((r_ * u_ * k_).sum(-1))  # bonus on the diagonal: [B, H, N, n, c, c]

    # --- within each sub-chunk: prefix decay into t, suffix decay out of s ---
    idx = torch.arange(c, device=dev)
    r_in = r_ * _interval_sums(lw, torch.full_like(idx, -1), idx).exp()  # r_t e^lam(b_i - 1, t)
    k_out = k_ * _interval_sums(lw, idx, torch.full_like(idx, c)).exp()  # k_s e^lam(s, e_j + 1)

    if n == 1:
        A = A_d.reshape(B, H, N, C, C)
    else:
        # whole sub-chunks: lam over the sub-chunks strictly between j and i, before i, after j
        tot = lw.sum(dim=-2)  # [B, H, N, n, K] log-decay of each whole sub-chunk
        bi, bj = torch.tril_indices(n, n, offset=-1, device=dev)  # sub-chunk pairs j < i
        mid = _interval_sums(tot, bj, bi).exp()  # [B, H, N, Pb, K]
        A_o = (r_in[..., bi, :, :] * mid[..., None, :]) @ k_out[..., bj, :, :].mT  # [B, H, N, Pb, c, c]
        # place the off-diagonal and diagonal blocks into the [n, n] grid of c x c blocks
        jdx = torch.arange(n, device=dev)
        slot = torch.cat([bi * n + bj, jdx * n + jdx])  # row-major position in the grid
        blocks = torch.cat([A_o, A_d], dim=-3)  # [B, H, N, Pb + n, c, c]
        A = torch.einsum("pq,...pxy->...qxy", _placement(slot, n * n, dt), blocks)
        A = A.reshape(B, H, N, n, n, c, c).transpose(-3, -2).reshape(B, H, N, C, C)
        # extend the sub-chunk prefix / suffix decays to the chunk's start / end
        before = _interval_sums(tot, torch.full_like(jdx, -1), jdx).exp()  # [B, H, N, n, K]
        after = _interval_sums(tot, jdx, torch.full_like(jdx, n)).exp()
        r_in = r_in * before[..., None, :]
        k_out = k_out * after[..., None, :]

    # --- across chunks: y += (r_t e^lam(-1, t))^T S_0, S_C = diag(e^lam(-1, C)) S_0 + K'^T V ---
    v_c = v_.reshape(B, H, N, C, V)
    y = A @ v_c  # [B, H, N, C, V]: everything inside the chunk
    chunk_decay = lw.sum(dim=(3, 4)).exp()  # [B, H, N, K] = e^lam(-1, C)
    U = k_out.reshape(B, H, N, C, K).mT @ v_c  # [B, H, N, K, V]

    # the only sequential part: carry the state across chunks. unbind, not U[:, :, i]: the backward
    # of an indexed slice materialises a zero tensor of U's full size per chunk (O(N^2) traffic).
    starts = []
    S = S0
    for d_i, U_i in zip(chunk_decay.unbind(2), U.unbind(2)):
        starts.append(S)
        S = d_i[..., None] * S + U_i
    S_starts = torch.stack(starts, dim=2)  # [B, H, N, K, V]: state at the start of each chunk

    y = y + r_in.reshape(B, H, N, C, K) @ S_starts
    y = y.permute(0, 2, 3, 1, 4).reshape(B, N * C, H, V)[:, :T]
    return y.to(out_dtype), S


def check_value_layout(op: str, r: torch.Tensor, v: torch.Tensor) -> None:
    """``v`` must share ``r``'s leading dims (``[B, T, H]`` or, for one token, ``[B, H]``)."""
    if v.shape[:-1] != r.shape[:-1]:
        layout = "[B, T, H, V]" if r.dim() == 4 else "[B, H, V]"
        raise ValueError(
            f"{op}: `v` has shape {tuple(v.shape)}, expected {layout} with leading dims {tuple(r.shape[:-1])}"
        )
