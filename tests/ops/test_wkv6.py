"""WKV-6 / WKV-5: chunk and step against the naive reference (outputs, final state, every gradient)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from rwkvkit.ops.rwkv6 import IMPLS, wkv5, wkv6, wkv6_chunk, wkv6_naive, wkv6_step
from rwkvkit.utils.testing import assert_close

# Tolerances (relative RMS error against the naive loop, same dtype), from the acceptance.
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}

NAMES = ["r", "log_w", "k", "v", "u", "state"]

# Decay regimes, as log_w = log of the decay. RWKV-5/6 decays are exp(-exp(x)): anything in (0, 1),
# so log_w anywhere in (-inf, 0), and the chunked form must not care.
DECAYS = ["near_1", "moderate", "strong", "spikes", "mixed"]


def make_log_w(shape: tuple[int, ...], decay: str, g: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    x = torch.rand(shape, generator=g, dtype=dtype)
    if decay == "near_1":  # log_w ~ -1e-4: the state barely fades
        return -1e-4 * x
    if decay == "moderate":  # -exp(-5 .. 1): the bulk of trained RWKV-6 decays
        return -torch.exp(-5 + 6 * x)
    if decay == "strong":  # down to -30 per step: ~e^-500 over a 32-token chunk
        return -30 * x
    if decay == "spikes":
        # slow decays with a 10% sprinkle of -1e4 steps: after a spike the cumulative log-decay is
        # ~-1e4, so decays formed as differences of cumulative sums would lose ~1e-3 (fp32)
        hit = torch.rand(shape, generator=g, dtype=dtype) < 0.1
        return torch.where(hit, torch.full_like(x, -1e4), -0.05 * x)
    if decay == "mixed":  # per channel: near 1, moderate, strong, extreme side by side
        scale = torch.tensor([1e-4, 1.0, 30.0, 1e4], dtype=dtype).repeat(shape[-1] // 4 + 1)[: shape[-1]]
        return -scale * x
    raise ValueError(decay)


def make_inputs(B, T, H, K, V, dtype, decay, requires_grad=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = torch.randn(B, T, H, K, generator=g, dtype=dtype)
    k = torch.randn(B, T, H, K, generator=g, dtype=dtype)
    v = torch.randn(B, T, H, V, generator=g, dtype=dtype)
    log_w = make_log_w((B, T, H, K), decay, g, dtype)
    u = torch.randn(H, K, generator=g, dtype=dtype)
    state = torch.randn(B, H, K, V, generator=g, dtype=dtype)  # random non-zero initial state
    xs = [r, log_w, k, v, u, state]
    if requires_grad:
        xs = [x.detach().requires_grad_() for x in xs]
    return xs


def run_with_grads(fn, xs, seed=1):
    """``fn(*xs) -> (y, S)``; returns ``(y, S, grads of a random linear loss w.r.t. every input)``."""
    y, S = fn(*xs)
    g = torch.Generator().manual_seed(seed)
    dy = torch.randn(y.shape, generator=g, dtype=y.dtype)
    dS = torch.randn(S.shape, generator=g, dtype=S.dtype)
    grads = torch.autograd.grad((y * dy).sum() + (S * dS).sum(), xs)
    return y.detach(), S.detach(), grads


def assert_all_close(ref, out, tol):
    (y_ref, S_ref, g_ref), (y, S, grads) = ref, out
    assert_close("y", y_ref, y, tol)
    assert_close("final state", S_ref, S, tol)
    for name, gr, gc in zip(NAMES, g_ref, grads):
        assert_close(f"d{name}", gr, gc, tol)


CASES = [
    # (B, T, H, K, V, chunk_size, sub_chunk_size, decay)
    (1, 1, 1, 16, 16, 32, 8, "moderate"),
    (2, 15, 2, 16, 16, 8, 8, "near_1"),  # one sub-chunk per chunk
    (2, 15, 3, 32, 32, 16, 4, "strong"),
    (1, 64, 4, 64, 64, 32, 8, "mixed"),  # the default sizes
    (2, 64, 2, 32, 32, 64, 16, "spikes"),
    (1, 257, 1, 64, 64, 32, 8, "near_1"),
    (2, 257, 3, 16, 16, 64, 8, "strong"),
    (1, 257, 2, 32, 32, 24, 16, "spikes"),  # sub-chunk gcd(24, 16) = 8
    (2, 100, 2, 32, 48, 32, 8, "moderate"),  # V != K
    (1, 257, 4, 64, 64, 32, 8, "mixed"),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("B,T,H,K,V,C,c,decay", CASES)
def test_chunk_matches_naive_forward_and_grads(B, T, H, K, V, C, c, decay, dtype):
    xs = make_inputs(B, T, H, K, V, dtype, decay, requires_grad=True)
    ref = run_with_grads(wkv6_naive, xs)
    out = run_with_grads(lambda *a: wkv6_chunk(*a, chunk_size=C, sub_chunk_size=c), xs)
    assert out[0].dtype == dtype and out[1].dtype == dtype
    assert_all_close(ref, out, TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("decay", ["moderate", "spikes"])
def test_step_matches_naive_forward_and_grads(decay, dtype):
    B, T, H, K, V = 2, 20, 2, 32, 16
    xs = make_inputs(B, T, H, K, V, dtype, decay, requires_grad=True)

    def stepped(r, lw, k, v, u, S):
        ys = []
        for t in range(T):
            y, S = wkv6_step(r[:, t], lw[:, t], k[:, t], v[:, t], u, S)
            ys.append(y)
        return torch.stack(ys, 1), S

    assert_all_close(run_with_grads(wkv6_naive, xs), run_with_grads(stepped, xs), TOL[dtype])


@settings(max_examples=40, deadline=None)
@given(
    T=st.integers(0, 40),
    chunk_size=st.integers(1, 40),
    sub_chunk_size=st.integers(1, 16),
    K=st.sampled_from([4, 8, 12]),
    V=st.sampled_from([4, 8]),
    decay=st.sampled_from(DECAYS),
)
@example(T=0, chunk_size=32, sub_chunk_size=8, K=4, V=4, decay="moderate")
@example(T=9, chunk_size=1, sub_chunk_size=8, K=4, V=4, decay="spikes")  # c = C = 1: the recurrence
@example(T=33, chunk_size=33, sub_chunk_size=11, K=8, V=4, decay="mixed")  # 3 sub-chunks of 11
def test_chunk_any_sizes(T, chunk_size, sub_chunk_size, K, V, decay):
    """Any T (0 included), chunk and sub-chunk size (coprime ones too) gives the recurrence."""
    xs = make_inputs(2, T, 2, K, V, torch.float64, decay)
    y_ref, S_ref = wkv6_naive(*xs)
    y, S = wkv6_chunk(*xs, chunk_size=chunk_size, sub_chunk_size=sub_chunk_size)
    assert y.shape == (2, T, 2, V) and S.shape == (2, 2, K, V)
    assert_close("y", y_ref, y, 1e-10)
    assert_close("state", S_ref, S, 1e-10)


def test_infinite_decay():
    """``log_w = -inf`` (decay exactly 0) resets the state: exact and NaN-free, gradients included."""
    xs = make_inputs(1, 40, 2, 16, 16, torch.float64, "moderate")
    xs[1][:, 5] = -torch.inf
    xs[1][:, 17, :, ::2] = -torch.inf
    xs = [x.requires_grad_() for x in xs]
    assert_all_close(run_with_grads(wkv6_naive, xs), run_with_grads(wkv6_chunk, xs), 1e-10)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("per", ["head", "channel"])
def test_wkv5_matches_naive(per, dtype):
    """WKV-5 through :func:`wkv5`: a constant decay and bonus, [H, 1] (5.0/5.1) or [H, K] (5.2)."""
    B, T, H, K = 2, 45, 3, 32
    r, _, k, v, _, S0 = make_inputs(B, T, H, K, K, dtype, "moderate")
    g = torch.Generator().manual_seed(2)
    width = 1 if per == "head" else K
    log_w = -torch.exp(-4 + 4 * torch.rand(H, width, generator=g, dtype=dtype))
    u = torch.randn(H, width, generator=g, dtype=dtype)
    xs = [x.requires_grad_() for x in (r, log_w, k, v, u, S0)]
    ref = run_with_grads(lambda *a: wkv5(*a, impl="naive"), xs)
    out = run_with_grads(lambda *a: wkv5(*a, impl="chunk", chunk_size=16), xs)
    assert out[2][1].shape == (H, width)  # gradients reach the compact decay and bonus
    assert_all_close(ref, out, TOL[dtype])


def test_wkv5_per_head_matches_the_spec_matrix_form():
    """The v5.0 chunk form of docs/rwkv5.md#the-50-chunk-form, an independent oracle for a per-head decay:
    ``Y = ((R K^T) * W) V + (R S0) * wb`` with ``W[t, s] = w^(t-1-s)`` (s < t), ``u`` (s = t)."""
    B, T, H, K = 2, 40, 3, 16
    r, _, k, v, _, S0 = make_inputs(B, T, H, K, K, torch.float64, "moderate")
    g = torch.Generator().manual_seed(3)
    log_w = -torch.exp(-3 + 3 * torch.rand(H, 1, generator=g, dtype=torch.float64))
    u = torch.randn(H, 1, generator=g, dtype=torch.float64)
    w = log_w.exp()[:, 0]  # [H]
    t = torch.arange(T, dtype=torch.float64)
    expo = t[:, None] - 1 - t[None, :]  # t - 1 - s
    W = torch.where(expo >= 0, w[:, None, None] ** expo.clamp(min=0), torch.zeros(()))  # [H, T, T]
    W = W + torch.diag_embed(u[:, :1].expand(H, T))
    y_ref = torch.einsum("bthk,bshk,hts,bshv->bthv", r, k, W, v)
    y_ref = y_ref + torch.einsum("bthk,bhkv->bthv", r, S0) * (w[None, :] ** t[:, None])[None, :, :, None]
    S_ref = w[:, None, None] ** T * S0 + torch.einsum("hs,bshk,bshv->bhkv", w[:, None] ** (T - 1 - t), k, v)
    y, S = wkv5(r, log_w, k, v, u, S0, impl="chunk")
    assert_close("y", y_ref, y, 1e-10)
    assert_close("state", S_ref, S, 1e-10)


def test_splitting_a_sequence_carries_the_state():
    """[0, T) at once equals [0, t) then [t, T) with the state handed over, and a chunked prefill
    followed by one-token steps equals one pass."""
    r, lw, k, v, u, S0 = make_inputs(2, 70, 2, 16, 16, torch.float64, "mixed")
    y_all, S_all = wkv6_chunk(r, lw, k, v, u, S0)
    cut = 37
    y1, S1 = wkv6_chunk(r[:, :cut], lw[:, :cut], k[:, :cut], v[:, :cut], u, S0)
    y2, S2 = wkv6_chunk(r[:, cut:], lw[:, cut:], k[:, cut:], v[:, cut:], u, S1)
    assert_close("y", y_all, torch.cat([y1, y2], 1), 1e-12)
    assert_close("state", S_all, S2, 1e-12)

    S = S1
    ys = [y1]
    for t in range(cut, 70):  # decode the rest token by token
        y, S = wkv6(r[:, t : t + 1], lw[:, t : t + 1], k[:, t : t + 1], v[:, t : t + 1], u, S)
        ys.append(y)
    assert_close("y (prefill + decode)", y_all, torch.cat(ys, 1), 1e-12)
    assert_close("state (prefill + decode)", S_all, S, 1e-12)


def test_bf16_inputs_accumulate_in_fp32():
    xs = make_inputs(1, 40, 2, 32, 32, torch.float32, "moderate")
    xs_bf16 = [x.bfloat16() for x in xs[:5]] + [xs[5]]
    y_ref, S_ref = wkv6_naive(*[x.float() for x in xs_bf16])
    y, S = wkv6_chunk(*xs_bf16)
    assert y.dtype == torch.bfloat16 and S.dtype == torch.float32
    assert_close("state", S_ref, S, 1e-5)  # fp32 accumulation of the same bf16 inputs
    assert_close("y", y_ref, y.float(), 5e-3)  # bf16 rounding of the output only
    r, lw, k, v, u, S0 = xs_bf16
    y, S = wkv6_step(r[:, 0], lw[:, 0], k[:, 0], v[:, 0], u, S0)
    assert y.dtype == torch.bfloat16 and S.dtype == torch.float32
    assert_close("step y", y_ref[:, 0], y.float(), 5e-3)


def test_dispatch():
    assert IMPLS == ("auto", "naive", "chunk", "step", "kernel", "triton")
    xs = make_inputs(1, 1, 2, 16, 16, torch.float64, "moderate")
    y_ref, S_ref = wkv6_naive(*xs)
    for impl in IMPLS[:-1]:  # the CPU tiers (triton: tests/ops/test_wkv6_triton.py)
        y, S = wkv6(*xs, impl=impl)
        assert_close(f"y[{impl}]", y_ref, y, 1e-12)
        assert_close(f"state[{impl}]", S_ref, S, 1e-12)
    for T in (1, 9):  # wkv5: step (T == 1) and chunk (auto), per-head decay
        r, _, k, v, _, S0 = make_inputs(1, T, 2, 16, 16, torch.float64, "moderate")
        lw5, u5 = -torch.rand(2, 1, dtype=torch.float64), torch.randn(2, 1, dtype=torch.float64)
        y_ref, S_ref = wkv5(r, lw5, k, v, u5, S0, impl="naive")
        y, S = wkv5(r, lw5, k, v, u5, S0)
        assert_close("wkv5 y", y_ref, y, 1e-12)
        assert_close("wkv5 state", S_ref, S, 1e-12)
    xs = make_inputs(1, 5, 2, 16, 16, torch.float64, "moderate")
    with pytest.raises(ValueError, match="T == 1"):
        wkv6(*xs, impl="step")
    with pytest.raises(ValueError, match="unknown impl"):
        wkv6(*xs, impl="cuda-magic")


def test_bad_shapes_raise_clear_errors():
    r, lw, k, v, u, S0 = make_inputs(1, 5, 2, 16, 16, torch.float32, "moderate")
    with pytest.raises(ValueError, match="`k` has shape"):
        wkv6_chunk(r, lw, k[..., :8], v, u)
    with pytest.raises(ValueError, match="`u` must be"):
        wkv6_chunk(r, lw, k, v, u[:1])
    with pytest.raises(ValueError, match="`state` has shape"):
        wkv6_chunk(r, lw, k, v, u, S0[:, :1])
    with pytest.raises(ValueError, match=r"`v` has shape \(1, 4, 2, 16\)"):
        wkv6_chunk(r, lw, k, v[:, :4], u)
    with pytest.raises(ValueError, match="must have 4 dims"):
        wkv6_chunk(r[0], lw, k, v, u)
    with pytest.raises(ValueError, match="chunk_size"):
        wkv6_chunk(r, lw, k, v, u, chunk_size=0)
    with pytest.raises(ValueError, match=r"`r` must have 3 dims \[B, H, K\]"):
        wkv6_step(r, lw[:, 0], k[:, 0], v[:, 0], u)
    with pytest.raises(ValueError, match="`state` has shape"):
        wkv6_step(r[:, 0], lw[:, 0], k[:, 0], v[:, 0], u, S0[..., :4])
    with pytest.raises(ValueError, match="`v` has shape"):
        wkv6_step(r[:, 0], lw[:, 0], k[:, 0], v[:, 0, :1], u)
    with pytest.raises(ValueError, match="must have 4 dims"):
        wkv6(r[:, 0], lw[:, 0], k[:, 0], v[:, 0], u, impl="step")
    with pytest.raises(ValueError, match=r"`log_w` must be \[H, K\]"):
        wkv5(r, lw[0, 0, :, :3], k, v, u)
    with pytest.raises(ValueError, match=r"`u` must be \[H, K\]"):
        wkv5(r, lw[0, 0], k, v, u[:, None])


def test_triton_tier_is_registered(monkeypatch):
    """impl="triton" reaches the Triton tier (tested in test_wkv6_triton.py): on a CPU without Triton's
    interpreter it says what to use instead."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="runs on CUDA tensors.*impl='chunk'"):
        wkv6(*make_inputs(1, 3, 2, 4, 4, torch.float32, "moderate"), impl="triton")
