"""WKV-4: chunk and step against the naive reference (outputs, final state, every gradient).

References. In float64 every tier is compared with the naive loop in float64. In float32 the chunk
tier is compared with the naive loop run in float64 *on the same float32 inputs*: the fp32 naive loop
is itself the larger error source (its ``pp + w`` drops most of ``w`` when ``|w| << ulp(pp)``; at
T = 257 with near-zero decays it is ~1e-5 off in the gradients, more with large keys, while the chunk
tier is ~1e-6 off), so an fp32-vs-fp32 comparison would measure the reference, not the tier under
test. The step tier does the loop's exact arithmetic, so it is compared with the fp32 loop directly.

States. The chunk tier returns its state in the naive loop's normalisation (``pp`` = the largest
exponent of the summed terms, which is what the loop's running ``max(pp + w, k)`` computes), so states
are compared component by component (aa, bb and pp each) and the gradient check weights all three.
Only where the two may drift apart by rounding (fp32 over T = 8192) are states compared through the
quantities they represent, ``a = aa e^pp`` and ``b = bb e^pp`` (see :func:`represented`).
"""

from __future__ import annotations

import pytest
import torch

from rwkvkit.ops.rwkv4 import (
    DEFAULT_CHUNK_SIZE,
    IMPLS,
    wkv4,
    wkv4_chunk,
    wkv4_initial_state,
    wkv4_naive,
    wkv4_step,
)
from rwkvkit.utils.testing import assert_close

# Decay regimes, as ranges of time_decay (w = -exp(time_decay)): a spread like trained RWKV-4 layers,
# near-zero decays (w in (-9e-4, -8e-7): the state barely fades, pp + w rounds in fp32), and strong
# ones (w in (-22026, -7.4): only the bonus token and the last one or two count; e^{(t-1-i) w} underflows).
DECAYS = {"full": (-6.0, 3.0), "near_0": (-14.0, -7.0), "strong": (2.0, 10.0)}

# Key regimes: "normal" N(0, 1); "large" N(0, 20) clipped to +-50 (e^50 ~ 5e21: exponent spread far
# beyond what a shared shift could hold in fp32).
KEYS = {"normal": (1.0, 50.0), "large": (20.0, 50.0)}

# Tolerances (relative RMS error), from the issue: 1e-10 in fp64, 1e-5 in fp32.
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}
# Gradients in fp32 with keys in [80, 100] (test_huge_positive_keys...): ulp(100) = 7.6e-6, so every
# exponent k_i + (t-1-i) w already carries that absolute rounding (that relative error on its weight),
# and dw sums such weights times the lag, with cancellation. Measured 7e-6; stated 2e-5.
TOL_HUGE_K32 = 2e-5

NAMES = ["w", "u", "k", "v", "state"]


def make_inputs(B, T, C, dtype, decay="full", keys="normal", init="random", seed=0):
    """``[w, u, k, v, state]``; a random initial state comes from the naive loop on a random prefix
    (so that aa, bb, pp are consistent: pp the largest exponent, bb >= 1), or None for ``"fresh"``."""
    g = torch.Generator().manual_seed(seed)
    lo, hi = DECAYS[decay]
    scale, clip = KEYS[keys]
    w = -torch.exp(lo + (hi - lo) * torch.rand(C, generator=g, dtype=torch.float64)).to(dtype)
    u = torch.randn(C, generator=g, dtype=dtype)

    def kv(n):
        k = (scale * torch.randn(B, n, C, generator=g, dtype=dtype)).clamp(-clip, clip)
        return k, torch.randn(B, n, C, generator=g, dtype=dtype)

    k, v = kv(T)
    state = None
    if init == "random":
        state = wkv4_naive(w, u, *kv(11))[1]
    return [w, u, k, v, state]


def run(fn, xs, dy, dS, **kw):
    """Outputs, final state and the gradients of ``(y * dy).sum() + (state * dS).sum()`` w.r.t. every
    input that is given (``state`` only when not None)."""
    xs = [None if x is None else x.detach().requires_grad_() for x in xs]
    y, S = fn(*xs, **kw)
    leaves = [x for x in xs if x is not None]
    grads = torch.autograd.grad((y * dy).sum() + (S * dS).sum(), leaves)
    return y.detach(), S.detach(), grads


def fp64(xs):
    return [None if x is None else x.double() for x in xs]


def assert_states_close(name, ref, out, tol):
    for i, part in enumerate(("aa", "bb", "pp")):
        assert_close(f"{name}.{part}", ref[:, i], out[:, i], tol)


def represented(state, pp_ref):
    """``(aa, bb)`` rescaled to the exponent ``pp_ref``: ``a e^{-pp_ref}``, ``b e^{-pp_ref}`` in fp64, so
    states with different (equivalent) pp normalisations can be compared without forming ``e^pp``."""
    s = state.double()
    scale = torch.exp(s[:, 2] - pp_ref.double())
    return s[:, 0] * scale, s[:, 1] * scale


CASES = [
    # (B, T, C, chunk_size, decay, keys, init)
    (1, 1, 5, 8, "full", "normal", "random"),
    (2, 15, 24, 8, "near_0", "normal", "fresh"),
    (2, 15, 37, 4, "strong", "normal", "random"),
    (1, 64, 24, 16, "full", "normal", "random"),
    (1, 64, 5, 1, "near_0", "normal", "random"),  # chunk 1: the recurrence itself
    (2, 64, 37, 8, "full", "large", "random"),
    (1, 257, 37, 8, "near_0", "normal", "random"),
    (2, 257, 24, 64, "strong", "normal", "fresh"),
    (1, 257, 37, 32, "full", "normal", "random"),
    (2, 257, 13, 100, "full", "large", "fresh"),  # chunk not a power of two: 100 + 100 + 57
    (1, 257, 13, 300, "near_0", "large", "random"),  # chunk longer than T: one chunk
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("B,T,C,L,decay,keys,init", CASES)
def test_chunk_matches_naive_forward_and_grads(B, T, C, L, decay, keys, init, dtype):
    xs = make_inputs(B, T, C, dtype, decay, keys, init)
    g = torch.Generator().manual_seed(1)
    dy = torch.randn(B, T, C, generator=g, dtype=dtype)
    dS = torch.randn(B, 3, C, generator=g, dtype=dtype)

    y_ref, S_ref, g_ref = run(wkv4_naive, fp64(xs), dy.double(), dS.double())
    y, S, grads = run(wkv4_chunk, xs, dy, dS, chunk_size=L)
    assert y.dtype == dtype and S.dtype == dtype
    tol = TOL[dtype]
    assert_close("y", y_ref, y, tol)
    assert_states_close("final state", S_ref, S, tol)
    names = [n for n, x in zip(NAMES, xs) if x is not None]
    for name, gr, gc in zip(names, g_ref, grads):
        assert_close(f"d{name}", gr, gc, tol)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("decay", ["full", "near_0", "strong"])
def test_step_matches_naive_forward_and_grads(decay, dtype):
    """T steps of wkv4_step == the naive loop over T tokens (same arithmetic: same-dtype reference)."""
    B, T, C = 2, 20, 37
    xs = make_inputs(B, T, C, dtype, decay, "large" if decay == "full" else "normal")
    g = torch.Generator().manual_seed(1)
    dy = torch.randn(B, T, C, generator=g, dtype=dtype)
    dS = torch.randn(B, 3, C, generator=g, dtype=dtype)

    def stepped(w, u, k, v, state):
        ys = []
        for t in range(k.shape[1]):
            yt, state = wkv4_step(w, u, k[:, t], v[:, t], state)
            ys.append(yt)
        return torch.stack(ys, dim=1), state

    y_ref, S_ref, g_ref = run(wkv4_naive, xs, dy, dS)
    y, S, grads = run(stepped, xs, dy, dS)
    tol = TOL[dtype]
    assert_close("y", y_ref, y, tol)
    assert_states_close("state", S_ref, S, tol)
    for name, gr, gc in zip(NAMES, g_ref, grads):
        assert_close(f"d{name}", gr, gc, tol)


def test_step_from_fresh_state_and_shapes():
    w, u, k, v, _ = make_inputs(3, 1, 7, torch.float32, init="fresh")
    y, S = wkv4_step(w, u, k[:, 0], v[:, 0])
    y_ref, S_ref = wkv4_naive(w, u, k, v)
    assert y.shape == (3, 7) and S.shape == (3, 3, 7) and S.dtype == torch.float32
    assert_close("y", y_ref[:, 0], y, 1e-6)
    assert_states_close("state", S_ref, S, 1e-6)
    assert_close("y = v for the first token", v[:, 0], y, 1e-6)  # only the current token counts


def test_tiers_can_be_mixed_along_a_sequence():
    """naive on a prefix, chunk on the middle, one step, chunk on the rest == one naive pass."""
    w, u, k, v, S0 = make_inputs(2, 60, 24, torch.float64, "full", "large")
    y_ref, S_ref = wkv4_naive(w, u, k, v, S0)
    y1, S = wkv4_naive(w, u, k[:, :17], v[:, :17], S0)
    y2, S = wkv4_chunk(w, u, k[:, 17:40], v[:, 17:40], S, chunk_size=8)
    y3, S = wkv4_step(w, u, k[:, 40], v[:, 40], S)
    y4, S = wkv4_chunk(w, u, k[:, 41:], v[:, 41:], S, chunk_size=5)
    assert_close("y", y_ref, torch.cat([y1, y2, y3.unsqueeze(1), y4], 1), 1e-12)
    assert_states_close("state", S_ref, S, 1e-12)


@pytest.mark.parametrize("L", [1, 8, 16])
def test_splitting_a_sequence_carries_the_state(L):
    """Running [0, T) at once equals [0, t) then [t, T) with the state handed over (chunk boundaries
    then fall elsewhere, so this is equality up to rounding, not bit for bit)."""
    w, u, k, v, S0 = make_inputs(2, 50, 24, torch.float64, "full")
    y_all, S_all = wkv4_chunk(w, u, k, v, S0, chunk_size=L)
    cut = 23
    y1, S1 = wkv4_chunk(w, u, k[:, :cut], v[:, :cut], S0, chunk_size=L)
    y2, S2 = wkv4_chunk(w, u, k[:, cut:], v[:, cut:], S1, chunk_size=L)
    assert_close("y", y_all, torch.cat([y1, y2], 1), 1e-12)
    assert_states_close("state", S_all, S2, 1e-12)


def test_huge_positive_keys_stay_finite_and_exact():
    """k in [80, 100]: e^k overflows fp32 (e^88.7), and |k| mixed up to 50 around it. The chunk tier
    never forms e^k, so outputs, state and gradients stay finite and match the fp64 loop."""
    B, T, C = 2, 40, 16
    w, u, _, v, _ = make_inputs(B, T, C, torch.float32, "full", init="fresh")
    g = torch.Generator().manual_seed(3)
    k = 80 + 20 * torch.rand(B, T, C, generator=g)
    k[:, ::3] = (50 * torch.randn(B, len(range(0, T, 3)), C, generator=g)).clamp(-50, 50)
    xs = [w, u, k, v, None]
    dy = torch.randn(B, T, C, generator=g)
    dS = torch.randn(B, 3, C, generator=g)
    y_ref, S_ref, g_ref = run(wkv4_naive, fp64(xs), dy.double(), dS.double())
    y, S, grads = run(wkv4_chunk, xs, dy, dS, chunk_size=8)
    assert (S[:, 2] > 80).any()  # the state really lives at exponents beyond fp32's e^88
    assert_close("y", y_ref, y, TOL[torch.float32])
    assert_states_close("state", S_ref, S, TOL[torch.float32])
    for name, gr, gc in zip(NAMES, g_ref, grads):
        assert_close(f"d{name}", gr, gc, TOL_HUGE_K32)


def test_extreme_decays():
    """w = -1e-9 (no visible decay: in fp32 pp + w == pp) and w = -2e4 (e^{w} = 0 after one step)."""
    B, T, C = 1, 70, 8
    _, u, k, v, S0 = make_inputs(B, T, C, torch.float64, keys="large")
    w = torch.tensor([-1e-9, -1e-9, -2e4, -2e4, -1e-3, -1.0, -30.0, -1e-9], dtype=torch.float64)
    y_ref, S_ref = wkv4_naive(w, u, k, v, S0)
    for dtype, tol in TOL.items():
        y, S = wkv4_chunk(*(x.to(dtype) for x in (w, u, k, v, S0)), chunk_size=16)
        assert_close(f"y[{dtype}]", y_ref, y, tol)
        assert_states_close(f"state[{dtype}]", S_ref, S, tol)


def test_long_sequence_fp32_stays_finite_and_accurate():
    """T = 8192 in fp32 with keys up to |50| and decays down to ~5e-5, against the fp64 loop on the same
    inputs. Stated tolerance 2e-6 (measured ~2e-7 on outputs, ~5e-7 on the state, for any chunk size):
    the carry between chunks is kept in fp64, so no rounding accumulates along the sequence. The fp32
    naive loop, by contrast, drifts (~1e-4 here) because pp + w rounds away most of a weak decay."""
    B, T, C = 1, 8192, 16
    g = torch.Generator().manual_seed(5)
    w = -torch.exp(torch.empty(C, dtype=torch.float64).uniform_(-10, 2, generator=g)).float()
    u = torch.randn(C, generator=g)
    k = (8 * torch.randn(B, T, C, generator=g)).clamp(-50, 50)
    v = torch.randn(B, T, C, generator=g)
    y_ref, S_ref = wkv4_naive(w.double(), u.double(), k.double(), v.double())

    xs = [x.detach().requires_grad_() for x in (w, u, k, v)]
    y, S = wkv4_chunk(*xs)
    assert torch.isfinite(y).all() and torch.isfinite(S).all()
    assert_close("y", y_ref, y, 2e-6)
    aa, bb = represented(S, S_ref[:, 2])
    assert_close("state a e^-pp_ref", S_ref[:, 0], aa, 2e-6)
    assert_close("state b e^-pp_ref", S_ref[:, 1], bb, 2e-6)
    assert (S[:, 2].double() - S_ref[:, 2]).abs().max() < 1e-4  # pp itself: same normalisation
    (y.sum() + S[:, :2].sum()).backward()
    for name, x in zip("wukv", xs):
        assert torch.isfinite(x.grad).all(), f"d{name} has NaN/inf"


def test_fresh_state_equals_explicit_initial_state():
    w, u, k, v, _ = make_inputs(2, 30, 12, torch.float64, init="fresh")
    y0, S0 = wkv4_chunk(w, u, k, v)
    y1, S1 = wkv4_chunk(w, u, k, v, wkv4_initial_state(2, 12, dtype=torch.float64))
    assert torch.equal(y0, y1) and torch.equal(S0, S1)


def test_empty_sequence_returns_the_state():
    w, u, k, v, S0 = make_inputs(2, 0, 12, torch.float32)
    y, S = wkv4_chunk(w, u, k, v, S0)
    assert y.shape == (2, 0, 12)
    assert torch.equal(S, S0)


def test_bf16_inputs_accumulate_in_fp32():
    w, u, k, v, S0 = make_inputs(1, 40, 32, torch.float32)
    k16, v16 = k.bfloat16(), v.bfloat16()
    y_ref, S_ref = wkv4_naive(w.double(), u.double(), k16.double(), v16.double(), S0.double())
    y, S = wkv4_chunk(w, u, k16, v16, S0)
    assert y.dtype == torch.bfloat16 and S.dtype == torch.float32
    assert_states_close("state", S_ref, S, 1e-5)  # fp32 arithmetic on the same bf16 inputs
    assert_close("y", y_ref, y.float(), 5e-3)  # bf16 rounding of the output only


def test_w_and_u_may_be_shaped_like_the_checkpoint():
    """time_decay / time_first are stored as [C] or [1, 1, C]; both are accepted."""
    w, u, k, v, S0 = make_inputs(2, 9, 6, torch.float64)
    y_ref, S_ref = wkv4_chunk(w, u, k, v, S0)
    y, S = wkv4_chunk(w.view(1, 1, 6), u.view(1, 1, 6), k, v, S0)
    assert torch.equal(y, y_ref) and torch.equal(S, S_ref)


def test_dispatch():
    assert IMPLS == ("auto", "naive", "chunk", "step", "kernel", "triton")
    xs = make_inputs(2, 1, 12, torch.float64)
    y_ref, S_ref = wkv4_naive(*xs)
    for impl in IMPLS[:-1]:  # the CPU tiers (no triton tier for this op: tested below)
        y, S = wkv4(*xs, impl=impl)
        assert y.shape == (2, 1, 12)
        assert_close(f"y[{impl}]", y_ref, y, 1e-12)
        assert_states_close(f"state[{impl}]", S_ref, S, 1e-12)
    xs = make_inputs(2, 19, 12, torch.float64)
    y_ref, S_ref = wkv4_naive(*xs)
    for impl in ("auto", "chunk"):
        y, S = wkv4(*xs, impl=impl, chunk_size=4)
        assert_close(f"y[{impl}]", y_ref, y, 1e-12)
        assert_states_close(f"state[{impl}]", S_ref, S, 1e-12)
    with pytest.raises(ValueError, match="T == 1"):
        wkv4(*xs, impl="step")
    with pytest.raises(ValueError, match="unknown impl"):
        wkv4(*xs, impl="cuda-magic")
    assert DEFAULT_CHUNK_SIZE >= 1


def test_bad_shapes_raise_clear_errors():
    w, u, k, v, S0 = make_inputs(2, 5, 12, torch.float32)
    with pytest.raises(ValueError, match=r"wkv4_chunk: k and v must both be \[B, T, C\]"):
        wkv4_chunk(w, u, k, v[..., :8])
    with pytest.raises(ValueError, match=r"wkv4_chunk: k and v must both be \[B, T, C\]"):
        wkv4_chunk(w, u, k[0], v[0])
    with pytest.raises(ValueError, match="w and u must have C = 12"):
        wkv4_chunk(w[:8], u, k, v)
    with pytest.raises(ValueError, match=r"`state` has shape \(2, 3, 8\), expected \[B, 3, C\]"):
        wkv4_chunk(w, u, k, v, S0[..., :8])
    with pytest.raises(ValueError, match="chunk_size must be an int >= 1"):
        wkv4_chunk(w, u, k, v, chunk_size=0)
    with pytest.raises(ValueError, match=r"wkv4_step: k and v must both be \[B, C\]"):
        wkv4_step(w, u, k, v)
    with pytest.raises(ValueError, match="w and u must have C = 12"):
        wkv4_step(w, u[:3], k[:, 0], v[:, 0])
    with pytest.raises(ValueError, match=r"wkv4_step: `state` has shape \(1, 3, 12\)"):
        wkv4_step(w, u, k[:, 0], v[:, 0], S0[:1])
    with pytest.raises(ValueError, match=r"wkv4: k and v must both be \[B, T, C\]"):
        wkv4(w, u, k[:, :1], v[:, :1, :8], impl="step")


def test_no_triton_tier_yet():
    with pytest.raises(ValueError, match="not written for this operator"):
        wkv4(*make_inputs(1, 3, 4, torch.float32), impl="triton")
