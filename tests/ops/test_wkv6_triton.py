"""The ``triton`` tier of WKV-6 (and WKV-5) against the naive recurrence: outputs, final state and every
gradient (``u`` and the initial state included).

Without a GPU the kernels run in Triton's interpreter (``TRITON_INTERPRET=1``, set by
``tests/ops/triton_testing`` before the kernels are first imported), on small shapes; with CUDA the same
tests run compiled on the GPU. The reference is :func:`wkv6_naive` in fp64 on the same (rounded) inputs
and cotangents, so each tolerance below bounds the tier's own error. Errors are relative RMS, ``||x -
ref|| / ||ref||``.
"""

from __future__ import annotations

import pytest
import torch

from rwkvkit.ops import rwkv6 as rwkv6_ops
from rwkvkit.ops._tiers import resolve_impl
from rwkvkit.ops.rwkv6 import triton_tier, wkv5, wkv6, wkv6_naive, wkv6_triton
from tests.ops.triton_testing import DEVICE, grads, rel, widest_column_blocks  # noqa: F401 (autouse)

NAMES = ("r", "log_w", "k", "v", "u", "state")


def inputs(B, T, H, K, V, dtype=torch.float32, log_w=(-5.0, 0.0), seed=0, state=True):
    """RWKV-6-like inputs; ``log_w`` uniform in the given range (RWKV-6 decays reach ``e^-10`` and less)."""
    g = torch.Generator().manual_seed(seed)
    r, k = torch.randn(B, T, H, K, generator=g), 0.5 * torch.randn(B, T, H, K, generator=g)
    v = torch.randn(B, T, H, V, generator=g)
    lo, hi = log_w
    lw = lo + (hi - lo) * torch.rand(B, T, H, K, generator=g)
    u = torch.randn(H, K, generator=g)
    xs = [x.to(dtype).to(DEVICE) for x in (r, lw, k, v, u)]
    S0 = (0.3 * torch.randn(B, H, K, V, generator=g)).to(DEVICE) if state else None
    return xs, S0


def reference(xs, S0):
    """The naive recurrence in fp64 on the same inputs (bf16 inputs: their exact values)."""
    dbl = [x.double() for x in xs]
    return grads(wkv6_naive, dbl, None if S0 is None else S0.double(), cotangent_dtype=xs[0].dtype)


def check_against_naive(xs, S0, out_tol=2e-6, grad_tol=5e-6):
    y, S, g = grads(wkv6_triton, xs, S0)
    y_ref, S_ref, g_ref = reference(xs, S0)
    assert rel(y, y_ref) < out_tol and rel(S, S_ref) < out_tol
    for name, x, ref in zip(NAMES, g, g_ref):
        assert rel(x, ref) < grad_tol, name
    return g, g_ref


@pytest.mark.parametrize(
    "B,T,H,K,V,state",
    [
        (1, 23, 2, 16, 16, True),  # T not a power of two
        (2, 11, 1, 8, 24, False),  # V != K and not a power of two; no initial state
        (1, 1, 2, 16, 16, True),  # one token (decoding)
        (1, 5, 1, 12, 8, True),  # K not a power of two
    ],
)
def test_fp32_matches_naive(B, T, H, K, V, state):
    xs, S0 = inputs(B, T, H, K, V, state=state)
    y, S, g = grads(wkv6_triton, xs, S0)
    y_ref, S_ref, g_ref = reference(xs, S0)
    assert y.dtype == torch.float32 and S.dtype == torch.float32
    # fp32 outputs: measured <= 8e-8 relative RMS (the naive fp32 loop is at the same level)
    assert rel(y, y_ref) < 2e-6 and rel(S, S_ref) < 2e-6
    for name, x, ref in zip(NAMES, g, g_ref):
        assert x.dtype == torch.float32, name
        # fp32 gradients: measured <= 8e-7 (dlog_w, a cumulative sum; the others <= 1.2e-7)
        assert rel(x, ref) < 5e-6, name


def test_bf16_inputs():
    xs, S0 = inputs(1, 19, 2, 16, 16, dtype=torch.bfloat16)
    y, S, g = grads(wkv6_triton, xs, S0)
    y_ref, S_ref, g_ref = reference(xs, S0)
    assert y.dtype == torch.bfloat16 and S.dtype == torch.float32
    assert rel(y, y_ref) < 8e-3  # bf16 output: one rounding (2^-9 relative at most); measured 3.6e-3
    assert rel(S, S_ref) < 2e-6  # the state stays fp32, from exactly the same (bf16) inputs
    for name, x, ref in zip(NAMES, g, g_ref):
        assert x.dtype == (torch.float32 if name == "state" else torch.bfloat16), name
        # bf16 gradients: one rounding each, measured <= 1.8e-3; the fp32 state's: measured 4e-8
        assert rel(x, ref) < (2e-6 if name == "state" else 8e-3), name


def test_fp16_inputs():
    xs, S0 = inputs(1, 17, 2, 16, 16, dtype=torch.float16)
    y, S, g = grads(wkv6_triton, xs, S0)
    y_ref, S_ref, g_ref = reference(xs, S0)
    assert y.dtype == torch.float16 and S.dtype == torch.float32
    assert rel(y, y_ref) < 1e-3  # fp16 output: one rounding (2^-11 relative at most); measured 2.0e-4
    assert rel(S, S_ref) < 2e-6  # the state stays fp32; measured 2.8e-8
    for name, x, ref in zip(NAMES, g, g_ref):
        assert x.dtype == (torch.float32 if name == "state" else torch.float16), name
        # fp16 gradients: one rounding each, and the output's gradient was rounded to fp16 (the state's
        # gradient too depends on it); measured <= 2.3e-4
        assert rel(x, ref) < 1e-3, name


@pytest.mark.parametrize("log_w", [(-10.0, -8.0), (-10.0, 0.0)])
def test_strong_decays(log_w):
    """Decays down to ``e^-10``: ``d log_w`` is ``w`` times smaller than the products it is made of,
    and a form that lets them cancel lost it (7e-3 relative with every decay in ``[e^-10, e^-8]``)."""
    # measured: dlog_w <= 5.3e-7, the rest <= 1.3e-7 (the naive fp32 loop: dlog_w 6e-8)
    check_against_naive(*inputs(1, 24, 1, 16, 16, log_w=log_w))


def test_decays_that_underflow():
    """``log_w = -1e4`` and ``-inf`` (``w = 0``: the state forgotten at once) stay finite and exact; where
    the true ``d log_w`` is 0 the reverse cumulative sum leaves its rounding (measured 5e-8 absolute)."""
    xs, S0 = inputs(1, 12, 1, 8, 8, log_w=(-3.0, 0.0))
    xs[1][0, 3, 0, :3] = -1e4
    xs[1][0, 7, 0, 2:5] = -float("inf")
    g, g_ref = check_against_naive(xs, S0)  # measured: dlog_w 1.3e-7, the rest <= 1e-7
    assert (g_ref[1][0, 3, 0, :3] == 0).all() and g[1][0, 3, 0, :3].abs().max() < 1e-6


def test_weak_decays_over_a_long_sequence():
    """Decays near 1 (``log_w`` in ``[-0.01, 0]``) over 120 steps: long memory; ``d log_w`` is a reverse
    cumulative sum over the whole sequence."""
    # measured: dlog_w 3.5e-7, the rest <= 4.1e-7 (the naive fp32 loop: 2.1e-7 and 3.3e-7)
    check_against_naive(*inputs(1, 120, 1, 8, 8, log_w=(-0.01, 0.0)), out_tol=5e-6, grad_tol=1e-5)


def test_several_blocks_of_columns(monkeypatch):
    """Forward and backward split V into blocks; the per-key gradients are partial sums added up."""
    monkeypatch.setattr(triton_tier, "_FWD_BV", 8)
    monkeypatch.setattr(triton_tier, "_BWD_BV", 8)
    # 3 blocks of 8 columns, the last one partly masked; measured: dlog_w 3.1e-7, the rest <= 8.4e-8
    check_against_naive(*inputs(1, 9, 2, 8, 20))


def test_gradient_of_the_output_only_and_no_grad_path():
    xs, S0 = inputs(1, 9, 1, 8, 8)
    leaves = [x.clone().requires_grad_() for x in xs]
    y, _ = wkv6_triton(*leaves, S0)  # the final state is not used: its gradient arrives as None
    g = torch.autograd.grad(y.sum(), leaves)
    ref_leaves = [x.double().requires_grad_() for x in xs]
    g_ref = torch.autograd.grad(wkv6_naive(*ref_leaves, S0.double())[0].sum(), ref_leaves)
    for name, x, ref in zip(NAMES, g, g_ref):
        assert rel(x, ref) < 5e-6, name
    # only the final state used (dy arrives as None)
    leaves = [x.clone().requires_grad_() for x in xs]
    g = torch.autograd.grad(wkv6_triton(*leaves, S0)[1].sum(), leaves)
    g_ref = torch.autograd.grad(wkv6_naive(*ref_leaves, S0.double())[1].sum(), ref_leaves, allow_unused=True)
    for name, x, ref in zip(NAMES, g, g_ref):
        # r and u do not reach the state: their gradients are exactly 0 (unused in the reference's graph)
        assert (x == 0).all() if ref is None else rel(x, ref) < 5e-6, name
    with torch.no_grad():
        y2, S2 = wkv6_triton(*xs, S0)
    y_ref, S_ref = wkv6_naive(*[x.double() for x in xs], S0.double())
    assert rel(y2, y_ref) < 2e-6 and rel(S2, S_ref) < 2e-6


def test_empty_sequence_and_fp64():
    xs, S0 = inputs(1, 0, 1, 8, 8)
    y, S = wkv6_triton(*xs, S0)
    assert y.shape == (1, 0, 1, 8) and torch.equal(S, S0)
    xs, S0 = inputs(1, 6, 1, 8, 8, dtype=torch.float64)
    y, S = wkv6_triton(*xs, S0.double())  # fp64 goes to the chunk tier, computed in fp64
    y_ref, S_ref = wkv6_naive(*xs, S0.double())
    assert y.dtype == torch.float64 and rel(y, y_ref) < 1e-12 and rel(S, S_ref) < 1e-12


@pytest.mark.parametrize("per_head", [True, False])
def test_wkv5_through_the_tier(per_head):
    """WKV-5's constant decay and bonus are stride-0 views of ``[H, 1]`` / ``[H, K]``; the gradients flow
    back to those shapes."""
    xs, S0 = inputs(1, 11, 2, 8, 8)
    r, _, k, v, _ = xs
    g = torch.Generator().manual_seed(3)
    width = 1 if per_head else 8
    lw5, u5 = -3 * torch.rand(2, width, generator=g), torch.randn(2, width, generator=g)
    out = {}
    for impl, dt in (("triton", torch.float32), ("naive", torch.float64)):
        leaves = [x.to(dt).to(DEVICE).requires_grad_() for x in (r, lw5, k, v, u5, S0)]
        y, S = wkv5(*leaves, impl=impl)
        gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(4)).to(y)
        out[impl] = y, S, torch.autograd.grad((y * gy).sum() + S.square().sum(), leaves)
    (y, S, gr), (y_ref, S_ref, g_ref) = out["triton"], out["naive"]
    assert rel(y, y_ref) < 2e-6 and rel(S, S_ref) < 2e-6
    for name, x, ref in zip(NAMES, gr, g_ref):
        assert x.shape == ref.shape and rel(x, ref) < 5e-6, name  # measured <= 5.4e-7 (dlog_w)


def test_dispatch_and_errors():
    xs, S0 = inputs(1, 7, 1, 8, 8)
    y, S = wkv6(*xs, S0, impl="triton")
    y_ref, S_ref = wkv6_naive(*[x.double() for x in xs], S0.double())
    assert rel(y, y_ref) < 2e-6 and rel(S, S_ref) < 2e-6
    # auto: triton for CUDA tensors (Triton installed), the chunked / one-token forms otherwise
    assert resolve_impl("wkv6", "auto", 7, gpu_tier=True) == "triton"
    assert resolve_impl("wkv6", "auto", 7) == "chunk" and resolve_impl("wkv6", "auto", 1) == "step"
    with pytest.raises(ValueError, match="expected \\[B, H, K, V\\]"):
        wkv6_triton(*xs, S0[..., :4])
    with pytest.raises(ValueError, match="`u` must be"):
        wkv6_triton(*xs[:4], xs[4][:, :4], S0)
    # v's leading dims are checked once, for every tier (the kernels index v by r's shape)
    for impl in ("naive", "chunk", "kernel", "triton"):
        with pytest.raises(ValueError, match="`v` has shape"):
            wkv6(*xs[:3], xs[3][:, :3], xs[4], S0, impl=impl)


def test_cpu_without_the_interpreter_says_what_to_do(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    xs, _ = inputs(1, 3, 1, 8, 8)
    xs = [x.cpu() for x in xs]
    with pytest.raises(ValueError, match="runs on CUDA tensors.*impl='chunk'"):
        wkv6_triton(*xs)


def test_rwkv6_model_trains_the_same_through_the_triton_tier():
    """A tiny RWKV-6 model: logits, final state and every parameter gradient equal the naive tier's."""
    from rwkvkit.models.rwkv.config import RWKVConfig
    from rwkvkit.models.rwkv.init import random_model

    cfg = RWKVConfig(version="6", n_layer=2, n_embd=32, vocab_size=50, head_size=16, lora_mix=4, lora_decay=8)
    model = random_model(cfg).train().to(DEVICE)
    tokens = torch.randint(0, 50, (2, 13), generator=torch.Generator().manual_seed(0)).to(DEVICE)
    out = {}
    for impl in ("naive", "triton"):
        model.zero_grad(set_to_none=True)
        logits, state = model(tokens, impl=impl)
        logits.float().square().mean().backward()
        out[impl] = logits, state, [p.grad for p in model.parameters()]
    (l1, s1, g1), (l2, s2, g2) = out["naive"], out["triton"]
    assert rel(l2, l1) < 1e-5  # fp32 logits through two layers: measured 2.9e-7
    assert rel(s2["wkv"][-1], s1["wkv"][-1]) < 1e-5
    assert sum(g is not None for g in g1) > 20
    for (name, _), x, ref in zip(model.named_parameters(), g2, g1):
        assert (x is None) == (ref is None), name
        assert ref is None or rel(x, ref) < 5e-5, (
            name
        )  # fp32 parameter gradients: measured <= 1.7e-6 (chunk: 2.2e-6)


def test_ops_module_exports_the_tier():
    assert "triton" in rwkv6_ops.IMPLS and rwkv6_ops.wkv6_triton is wkv6_triton
