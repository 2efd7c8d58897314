"""Sliding-window attention: blocked form and ring-buffer decoding against the band-masked reference."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from rwkvkit.ops.sliding_window import SWACache, swa_chunk, swa_initial_cache, swa_naive, swa_step
from rwkvkit.utils.testing import assert_close

# Tolerances (relative RMS error against the naive reference, same dtype).
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}
DTYPES = pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])


def make_inputs(B, T, H, K, V, dtype, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(B, T, H, n, generator=g, dtype=dtype) for n in (K, K, V)]
    if requires_grad:
        xs = [x.requires_grad_() for x in xs]
    return xs


# (T, window): windows 1, 3, 8 with T < window, T == window, T >> window, T not a multiple
CASES = [(1, 1), (5, 1), (2, 3), (3, 3), (17, 3), (50, 3), (5, 8), (8, 8), (9, 8), (70, 8), (64, 8)]


def test_naive_matches_explicit_loop():
    """The band-masked reference against softmax over k[t-W+1 .. t] per position (fp64, 1e-12)."""
    q, k, v = make_inputs(2, 12, 2, 4, 3, torch.float64)
    W = 4
    o = swa_naive(q, k, v, W)
    for t in range(12):
        lo = max(0, t - W + 1)
        s = torch.einsum("bhk,bihk->bhi", q[:, t], k[:, lo : t + 1]) / 2.0  # 1/sqrt(K), K = 4
        o_t = torch.einsum("bhi,bihv->bhv", s.softmax(-1), v[:, lo : t + 1])
        assert_close(f"o[{t}]", o_t, o[:, t], 1e-12)


@DTYPES
@pytest.mark.parametrize("T,W", CASES)
def test_chunk_matches_naive(T, W, dtype):
    q, k, v = make_inputs(2, T, 2, 8, 6, dtype)
    o_ref = swa_naive(q, k, v, W)
    o = swa_chunk(q, k, v, W)
    assert o.dtype == dtype and o.shape == (2, T, 2, 6)
    assert_close("o", o_ref, o, TOL[dtype])  # fp64 1e-10, fp32 1e-5 relative RMS


@DTYPES
@pytest.mark.parametrize("T,W", CASES)
def test_step_ring_buffer_matches_naive(T, W, dtype):
    B, H, K, V = 2, 2, 8, 6
    q, k, v = make_inputs(B, T, H, K, V, dtype)
    o_ref = swa_naive(q, k, v, W)
    cache = swa_initial_cache(B, H, K, V, W, dtype)
    outs = []
    for t in range(T):
        o, cache = swa_step(q[:, t], k[:, t], v[:, t], cache)
        outs.append(o)
    assert cache.pos == T and cache.window == W
    assert_close("o", o_ref, torch.stack(outs, 1), TOL[dtype])  # fp64 1e-10, fp32 1e-5


@pytest.mark.parametrize("T", [1, 7, 20])
def test_window_covering_everything_is_causal_attention(T):
    q, k, v = make_inputs(2, T, 3, 8, 5, torch.float64)
    sdpa = F.scaled_dot_product_attention(*(x.transpose(1, 2) for x in (q, k, v)), is_causal=True)
    ref = sdpa.transpose(1, 2)
    for W in (T, T + 5):
        # fp64, same softmax written two ways: 1e-12 relative RMS
        assert_close(f"naive W={W}", ref, swa_naive(q, k, v, W), 1e-12)
        assert_close(f"chunk W={W}", ref, swa_chunk(q, k, v, W), 1e-12)


@pytest.mark.parametrize("T,W", [(1, 1), (9, 1), (20, 3), (30, 8), (5, 8)])
def test_chunk_gradients_match_naive(T, W):
    xs = make_inputs(2, T, 2, 4, 3, torch.float64, requires_grad=True)
    do = torch.randn(2, T, 2, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    g_ref = torch.autograd.grad((swa_naive(*xs, W) * do).sum(), xs)
    g = torch.autograd.grad((swa_chunk(*xs, W) * do).sum(), xs)
    for name, gr, gc in zip("qkv", g_ref, g):
        assert_close(f"d{name}", gr, gc, 1e-10)  # fp64: 1e-10 relative RMS


def test_chunk_gradcheck():
    xs = make_inputs(1, 7, 1, 2, 2, torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda q, k, v: swa_chunk(q, k, v, 3), xs, eps=1e-6, atol=1e-7)


def test_custom_scale():
    q, k, v = make_inputs(1, 10, 2, 4, 4, torch.float64)
    assert_close("scale", swa_naive(q * 0.3, k, v, 4, scale=1.0), swa_chunk(q, k, v, 4, scale=0.3), 1e-12)


def test_step_cache_is_functional_and_low_precision_storage():
    B, H, K, V, W = 1, 2, 4, 4, 3
    q, k, v = make_inputs(B, 6, H, K, V, torch.float32)
    c0 = swa_initial_cache(B, H, K, V, W, torch.bfloat16)
    assert c0.k.shape == (B, H, W, K) and c0.v.shape == (B, H, W, V) and c0.pos == 0
    o, c1 = swa_step(q[:, 0], k[:, 0], v[:, 0], c0)
    assert c0.pos == 0 and torch.count_nonzero(c0.k) == 0  # the old cache is untouched
    assert c1.k.dtype == torch.bfloat16 and o.dtype == torch.float32
    # bf16 storage of k, v only: compare with the reference on the same rounded k, v
    ref = swa_naive(q, k.bfloat16().float(), v.bfloat16().float(), W)
    c, outs = c0, []
    for t in range(6):
        o, c = swa_step(q[:, t], k[:, t], v[:, t], c)
        outs.append(o)
    assert_close("o", ref, torch.stack(outs, 1), 1e-5)  # fp32 compute on identical inputs


def test_bad_inputs_raise_clear_errors():
    q, k, v = make_inputs(1, 5, 2, 4, 3, torch.float32)
    for fn in (swa_naive, swa_chunk):
        with pytest.raises(ValueError, match="window must be an integer >= 1"):
            fn(q, k, v, 0)
        with pytest.raises(ValueError, match="window must be an integer >= 1"):
            fn(q, k, v, 2.5)
        with pytest.raises(ValueError, match="must have 4 dims"):
            fn(q[0], k, v, 2)
        with pytest.raises(ValueError, match="`k` has shape"):
            fn(q, k[..., :2], v, 2)
        with pytest.raises(ValueError, match="`v` has shape .* leading dims"):
            fn(q, k, v[:, :4], 2)
    cache = swa_initial_cache(1, 2, 4, 3, 2)
    with pytest.raises(ValueError, match="must have 3 dims"):
        swa_step(q, k, v, cache)
    with pytest.raises(ValueError, match="do not fit"):
        swa_step(q[:, 0], k[:, 0], v[:, 0], swa_initial_cache(1, 2, 4, 5, 2))
    with pytest.raises(ValueError, match="must be an SWACache"):
        swa_step(q[:, 0], k[:, 0], v[:, 0], (cache.k, cache.v))
    with pytest.raises(ValueError, match="window must be an integer >= 1"):
        swa_initial_cache(1, 2, 4, 3, 0)
    assert isinstance(cache, SWACache) and math.isclose(cache.window, 2)
