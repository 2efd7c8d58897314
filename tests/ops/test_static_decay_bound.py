"""WKV-7's chunk size from a stated decay bound (``max_decay``): same results as the measured path,
no read of ``log_w`` on the host, so ``torch.compile(fullgraph=True)`` traces it without a break."""

from __future__ import annotations

import math

import pytest
import torch

from rwkvkit.layers.rwkv7 import MAX_LOG_DECAY
from rwkvkit.ops import wkv7, wkv7_chunk
from rwkvkit.ops.rwkv7.chunk import _safe_chunk_size

RWKV7_BOUND = math.exp(-0.5)  # |log_w| <= exp(-0.5): log_w = -exp(-0.5) * sigmoid(.)


def make_inputs(B, T, H, K, lo, hi, dtype=torch.float32, seed=0):
    """WKV-7 inputs with ``log_w`` uniform in ``[lo, hi]`` and a random initial state."""
    g = torch.Generator().manual_seed(seed)
    r, k, v = (torch.randn(B, T, H, K, generator=g, dtype=dtype) for _ in range(3))
    kk = torch.nn.functional.normalize(torch.randn(B, T, H, K, generator=g, dtype=dtype), dim=-1)
    a_icl = torch.rand(B, T, H, K, generator=g, dtype=dtype)
    log_w = lo + (hi - lo) * torch.rand(B, T, H, K, generator=g, dtype=dtype)
    state = torch.randn(B, H, K, K, generator=g, dtype=dtype)
    return [r, log_w, k, v, -kk, kk * a_icl, state]


def test_the_layer_states_the_rwkv7_bound():
    assert MAX_LOG_DECAY == RWKV7_BOUND


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("T", [1, 31, 128, 257])
def test_stated_bound_is_bitwise_the_measured_path(T, dtype):
    """RWKV-7's range: the bound and the measurement pick the same chunk size, so results are equal."""
    xs = make_inputs(2, T, 2, 16, -RWKV7_BOUND, 0.0, dtype)
    o_m, S_m = wkv7_chunk(*xs)  # measured: reads log_w.min()
    o_b, S_b = wkv7_chunk(*xs, max_decay=RWKV7_BOUND)
    assert torch.equal(o_b, o_m) and torch.equal(S_b, S_m)
    o_d, S_d = wkv7(*xs, max_decay=RWKV7_BOUND)  # through the dispatcher ("auto": chunk for T > 1)
    if T > 1:
        assert torch.equal(o_d, o_m) and torch.equal(S_d, S_m)


def test_the_chunk_size_rule():
    """Python floats only with a bound; the same power-of-two halving as the measured path."""
    lw = torch.full((1, 64, 1, 4), -1.0)
    assert _safe_chunk_size(lw, 32, torch.float32, RWKV7_BOUND) == 32  # 0.61 * 32 = 19 <= 60
    assert _safe_chunk_size(lw, 64, torch.float32, None) == 32  # measured |log_w| = 1: 64 > 60
    assert _safe_chunk_size(lw, 64, torch.float32, 1.0) == 32
    assert _safe_chunk_size(lw, 64, torch.float64, 1.0) == 64  # fp64 allows e^600
    assert _safe_chunk_size(lw, 32, torch.float32, 30.0) == 2
    assert _safe_chunk_size(lw, 32, torch.float32, 1e9) == 1  # the recurrence itself


def test_strong_stated_bound_matches_measured():
    """Decays beyond RWKV-7's range: a tight bound gives the measured chunk size (bitwise), a looser one
    a smaller chunk and the same values up to fp32 rounding (rtol 1e-5 of the largest entry)."""
    xs = make_inputs(1, 96, 2, 16, -8.0, 0.0)
    worst = float(-xs[1].min())  # ~8: C = 64 -> 4 (8 * 8 > 60)
    o_m, S_m = wkv7_chunk(*xs, chunk_size=64)
    o_b, S_b = wkv7_chunk(*xs, chunk_size=64, max_decay=worst)
    assert torch.equal(o_b, o_m) and torch.equal(S_b, S_m)
    o_l, S_l = wkv7_chunk(*xs, chunk_size=64, max_decay=40.0)  # C = 1
    assert (o_l - o_m).abs().max() <= 1e-5 * o_m.abs().max()
    assert (S_l - S_m).abs().max() <= 1e-5 * S_m.abs().max()


@pytest.mark.parametrize("bad", [-0.1, math.inf, math.nan, "0.6", True])
def test_bad_bound_is_refused(bad):
    xs = make_inputs(1, 8, 1, 16, -RWKV7_BOUND, 0.0)
    with pytest.raises(ValueError, match="wkv7_chunk: max_decay must be a finite number >= 0"):
        wkv7_chunk(*xs, max_decay=bad)


def test_fullgraph_compile_with_bound_matches_eager(monkeypatch):
    """torch.compile(fullgraph=True) raises at any graph break, e.g. the measured path's float(tensor);
    with the bound it compiles and agrees with eager mode (fp32, rtol 1e-5 of the largest entry:
    the compiled kernels may fuse and reorder the sums)."""
    monkeypatch.undo()  # the real torch.empty: inductor fills its own buffers in place (see conftest)
    xs = make_inputs(1, 128, 2, 16, -RWKV7_BOUND, 0.0)
    compiled = torch.compile(lambda *a: wkv7_chunk(*a, max_decay=RWKV7_BOUND), fullgraph=True)
    o_c, S_c = compiled(*xs)
    o_e, S_e = wkv7_chunk(*xs)
    assert (o_c - o_e).abs().max() <= 1e-5 * o_e.abs().max()
    assert (S_c - S_e).abs().max() <= 1e-5 * S_e.abs().max()
    # the check can fail: the measured path reads log_w on the host, a graph break
    with pytest.raises(Exception, match="(?i)graph break|data-dependent|item|Unsupported"):
        torch.compile(wkv7_chunk, fullgraph=True)(*xs)
