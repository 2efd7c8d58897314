"""WKV-7: chunk and step against the naive reference (outputs, final state, every gradient)."""

from __future__ import annotations

import pytest
import torch

from rwkvkit.ops import wkv7, wkv7_chunk, wkv7_naive, wkv7_step
from rwkvkit.utils.testing import assert_close

# Decay regimes. RWKV-7's decay is exp(-exp(-0.5) * sigmoid(.)) in (0.5452, 1), i.e. log_w in
# (-0.6065, 0): both ends of that range, and a spread over all of it.
DECAYS = {"near_0.545": (-0.6065, -0.59), "near_1": (-1e-4, 0.0), "full": (-0.6065, 0.0)}

# Tolerances (relative RMS error against the naive loop, same dtype), from the acceptance.
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


def make_inputs(B, T, H, K, V, dtype, decay, requires_grad=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    lo, hi = DECAYS[decay]
    r = torch.randn(B, T, H, K, generator=g, dtype=dtype)
    k = torch.randn(B, T, H, K, generator=g, dtype=dtype)
    v = torch.randn(B, T, H, V, generator=g, dtype=dtype)
    kk = torch.nn.functional.normalize(torch.randn(B, T, H, K, generator=g, dtype=dtype), dim=-1)
    a_icl = torch.rand(B, T, H, K, generator=g, dtype=dtype)
    log_w = lo + (hi - lo) * torch.rand(B, T, H, K, generator=g, dtype=dtype)
    state = torch.randn(B, H, K, V, generator=g, dtype=dtype)  # random non-zero initial state
    xs = [r, log_w, k, v, -kk, kk * a_icl, state]
    if requires_grad:
        xs = [x.detach().requires_grad_() for x in xs]
    return xs


NAMES = ["r", "log_w", "k", "v", "a", "b", "state"]

CASES = [
    # (B, T, H, K, chunk_size, decay)
    (1, 1, 1, 16, 16, "full"),
    (2, 15, 2, 16, 16, "near_0.545"),
    (2, 15, 3, 32, 8, "near_1"),
    (1, 64, 4, 64, 16, "full"),
    (2, 64, 2, 32, 64, "near_0.545"),
    (1, 257, 1, 64, 32, "near_1"),
    (2, 257, 3, 16, 64, "near_0.545"),
    (1, 257, 2, 32, 32, "full"),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("B,T,H,K,C,decay", CASES)
def test_chunk_matches_naive_forward_and_grads(B, T, H, K, C, decay, dtype):
    xs = make_inputs(B, T, H, K, K, dtype, decay, requires_grad=True)
    g = torch.Generator().manual_seed(1)
    do = torch.randn(B, T, H, K, generator=g, dtype=dtype)
    dS = torch.randn(B, H, K, K, generator=g, dtype=dtype)

    def run(fn, **kw):
        o, S = fn(*xs, **kw)
        loss = (o * do).sum() + (S * dS).sum()
        grads = torch.autograd.grad(loss, xs)
        return o.detach(), S.detach(), grads

    o_ref, S_ref, g_ref = run(wkv7_naive)
    o, S, grads = run(wkv7_chunk, chunk_size=C)
    tol = TOL[dtype]
    assert_close("o", o_ref, o, tol)
    assert_close("final state", S_ref, S, tol)
    for name, gr, gc in zip(NAMES, g_ref, grads):
        assert_close(f"d{name}", gr, gc, tol)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
def test_step_matches_naive(dtype):
    B, T, H, K = 2, 20, 2, 32
    r, lw, k, v, a, b, S0 = make_inputs(B, T, H, K, K, dtype, "full")
    o_ref, S_ref = wkv7_naive(r, lw, k, v, a, b, S0)
    S = S0
    outs = []
    for t in range(T):
        o, S = wkv7_step(r[:, t], lw[:, t], k[:, t], v[:, t], a[:, t], b[:, t], S)
        outs.append(o)
    assert_close("o", o_ref, torch.stack(outs, 1), TOL[dtype])
    assert_close("state", S_ref, S, TOL[dtype])


def test_value_dim_may_differ_from_key_dim():
    xs = make_inputs(2, 33, 2, 16, 16, torch.float64, "full")
    v = torch.randn(2, 33, 2, 24, dtype=torch.float64)
    S0 = torch.randn(2, 2, 16, 24, dtype=torch.float64)
    xs[3], xs[6] = v, S0
    o_ref, S_ref = wkv7_naive(*xs)
    o, S = wkv7_chunk(*xs, chunk_size=8)
    assert o.shape == (2, 33, 2, 24) and S.shape == (2, 2, 16, 24)
    assert_close("o", o_ref, o, 1e-10)
    assert_close("state", S_ref, S, 1e-10)


def test_splitting_a_sequence_carries_the_state():
    """Running [0, T) at once equals [0, t) then [t, T) with the state handed over."""
    r, lw, k, v, a, b, S0 = make_inputs(2, 50, 2, 16, 16, torch.float64, "full")
    o_all, S_all = wkv7_chunk(r, lw, k, v, a, b, S0, chunk_size=16)
    cut = 23
    o1, S1 = wkv7_chunk(*(x[:, :cut] for x in (r, lw, k, v, a, b)), S0, chunk_size=16)
    o2, S2 = wkv7_chunk(*(x[:, cut:] for x in (r, lw, k, v, a, b)), S1, chunk_size=16)
    assert_close("o", o_all, torch.cat([o1, o2], 1), 1e-12)
    assert_close("state", S_all, S2, 1e-12)


def test_strong_decays_stay_exact():
    """Decays far below RWKV-7's range (log_w down to -30) make the chunk shrink, never overflow."""
    r, lw, k, v, a, b, S0 = make_inputs(1, 40, 2, 16, 16, torch.float32, "full")
    lw = -30 * torch.rand_like(lw)
    o_ref, S_ref = wkv7_naive(r, lw, k, v, a, b, S0)
    o, S = wkv7_chunk(r, lw, k, v, a, b, S0, chunk_size=32)
    assert_close("o", o_ref, o, 1e-5)
    assert_close("state", S_ref, S, 1e-5)


def test_bf16_inputs_accumulate_in_fp32():
    xs = make_inputs(1, 40, 2, 32, 32, torch.float32, "full")
    xs_bf16 = [x.bfloat16() for x in xs[:6]] + [xs[6]]
    o_ref, S_ref = wkv7_naive(*[x.float() for x in xs_bf16])
    o, S = wkv7_chunk(*xs_bf16)
    assert o.dtype == torch.bfloat16 and S.dtype == torch.float32
    assert_close("state", S_ref, S, 1e-5)  # fp32 accumulation of the same bf16 inputs
    assert_close("o", o_ref, o.float(), 5e-3)  # bf16 rounding of the output only


def test_dispatch():
    xs = make_inputs(1, 1, 2, 16, 16, torch.float64, "full")
    o_ref, S_ref = wkv7_naive(*xs)
    for impl in ("auto", "naive", "chunk", "step"):
        o, S = wkv7(*xs, impl=impl)
        assert_close(f"o[{impl}]", o_ref, o, 1e-12)
        assert_close(f"state[{impl}]", S_ref, S, 1e-12)
    xs = make_inputs(1, 5, 2, 16, 16, torch.float64, "full")
    with pytest.raises(ValueError, match="T == 1"):
        wkv7(*xs, impl="step")
    with pytest.raises(ValueError, match="unknown impl"):
        wkv7(*xs, impl="cuda-magic")


def test_bad_shapes_raise_clear_errors():
    r, lw, k, v, a, b, S0 = make_inputs(1, 5, 2, 16, 16, torch.float32, "full")
    with pytest.raises(ValueError, match="`k` has shape"):
        wkv7_chunk(r, lw, k[..., :8], v, a, b)
    with pytest.raises(ValueError, match="`state` has shape"):
        wkv7_chunk(r, lw, k, v, a, b, S0[:, :1])
    with pytest.raises(ValueError, match="must have 4 dims"):
        wkv7_naive(r[0], lw, k, v, a, b)
