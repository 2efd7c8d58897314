"""The ``triton`` tier of WKV-7 against the naive recurrence: outputs, final state and every gradient.

Without a GPU the kernels run in Triton's interpreter (``TRITON_INTERPRET=1``, set by
``tests/ops/triton_testing`` before the kernels are first imported), on small shapes; with CUDA the same
tests run compiled on the GPU. The reference is :func:`wkv7_naive` in fp64 on the same (rounded) inputs,
so each tolerance below bounds the tier's own error. Errors are relative RMS, ``||x - ref|| / ||ref||``.
"""

from __future__ import annotations

import math

import pytest
import torch

from rwkvkit.ops import rwkv7 as rwkv7_ops
from rwkvkit.ops._tiers import resolve_impl
from rwkvkit.ops.rwkv7 import triton_tier, wkv7, wkv7_naive, wkv7_triton
from tests.ops.triton_testing import DEVICE, grads, rel, widest_column_blocks  # noqa: F401 (autouse)

BOUND = math.exp(-0.5)  # RWKV-7's decay bound: |log_w| < exp(-0.5)


def inputs(B, T, H, K, V, dtype=torch.float32, decay=BOUND, seed=0, state=True):
    """RWKV-7-like inputs: ``a = -kk``, ``b = kk * a_icl`` with unit-norm ``kk``; ``|log_w| < decay``."""
    g = torch.Generator().manual_seed(seed)
    r, k = torch.randn(B, T, H, K, generator=g), 0.5 * torch.randn(B, T, H, K, generator=g)
    v = torch.randn(B, T, H, V, generator=g)
    kk = torch.nn.functional.normalize(torch.randn(B, T, H, K, generator=g), dim=-1)
    log_w = -decay * torch.rand(B, T, H, K, generator=g)
    a, b = -kk, kk * torch.rand(B, T, H, K, generator=g)
    xs = [x.to(dtype).to(DEVICE) for x in (r, log_w, k, v, a, b)]
    S0 = (0.3 * torch.randn(B, H, K, V, generator=g)).to(DEVICE) if state else None
    return xs, S0


def reference(xs, S0):
    """The naive recurrence in fp64 on the same inputs (bf16 inputs: their exact values)."""
    return grads(wkv7_naive, [x.double() for x in xs], None if S0 is None else S0.double())


NAMES = ("r", "log_w", "k", "v", "a", "b", "state")


@pytest.mark.parametrize(
    "B,T,H,K,V,state",
    [
        (1, 37, 2, 16, 16, True),  # T not a multiple of the checkpoint interval (16)
        (1, 16, 1, 8, 24, False),  # T == one interval; V != K and not a power of two
        (1, 1, 2, 16, 16, True),  # one token (decoding)
        (1, 5, 1, 12, 8, True),  # K not a power of two
    ],
)
def test_fp32_matches_naive(B, T, H, K, V, state):
    xs, S0 = inputs(B, T, H, K, V, state=state)
    o, S, g = grads(wkv7_triton, xs, S0)
    o_ref, S_ref, g_ref = reference(xs, S0)
    assert o.dtype == torch.float32 and S.dtype == torch.float32
    # fp32 outputs: measured <= 4e-7 relative RMS (the naive fp32 loop is at the same level)
    assert rel(o, o_ref) < 2e-6 and rel(S, S_ref) < 2e-6
    for name, x, ref in zip(NAMES, g, g_ref):
        # fp32 gradients: measured <= 6e-6 (dr, dlog_w, da read states rebuilt by undoing steps)
        assert rel(x, ref) < 5e-5, name


def test_bf16_inputs():
    xs, S0 = inputs(1, 29, 2, 16, 16, dtype=torch.bfloat16)
    o, S, g = grads(wkv7_triton, xs, S0)
    o_ref, S_ref, g_ref = reference(xs, S0)
    assert o.dtype == torch.bfloat16 and S.dtype == torch.float32
    assert rel(o, o_ref) < 8e-3  # bf16 output: one rounding, 2^-9 relative = 2e-3 RMS at most ~4e-3
    assert rel(S, S_ref) < 2e-6  # the state stays fp32, from exactly the same (bf16) inputs
    for name, x, ref in zip(NAMES, g, g_ref):
        assert x.dtype == (torch.float32 if name == "state" else torch.bfloat16), name
        assert rel(x, ref) < 8e-3, name  # bf16 gradients: one rounding each


def test_fp16_inputs():
    xs, S0 = inputs(1, 17, 2, 16, 16, dtype=torch.float16)
    o, S, g = grads(wkv7_triton, xs, S0)
    o_ref, S_ref, g_ref = reference(xs, S0)
    assert o.dtype == torch.float16 and S.dtype == torch.float32
    assert rel(o, o_ref) < 1e-3  # fp16 output: one rounding (2^-11 relative at most); measured 2.1e-4
    assert rel(S, S_ref) < 2e-6  # the state stays fp32; measured 7e-8
    for name, x, ref in zip(NAMES, g, g_ref):
        assert x.dtype == (torch.float32 if name == "state" else torch.float16), name
        # fp16 gradients: one rounding each, and the output's gradient was rounded to fp16 (the state's
        # gradient too depends on it); measured <= 3.3e-4
        assert rel(x, ref) < 1e-3, name


def test_decay_at_the_bound_over_long_chunks():
    """Every channel at RWKV-7's strongest decay: undoing 7 steps (a segment) grows rounding the most."""
    xs, S0 = inputs(1, 48, 1, 16, 16)
    xs[1] = torch.full_like(xs[1], -BOUND * 0.999)
    o, S, g = grads(wkv7_triton, xs, S0)
    _, _, g_ref = reference(xs, S0)
    for name, x, ref in zip(NAMES, g, g_ref):
        # worst case: rounding grows by up to e^(0.61 * 7) ~ 70 over a segment's undone steps
        assert rel(x, ref) < 1e-5, name  # measured <= 1.6e-6 (dlog_w, da)


def test_strong_decay_shortens_the_interval():
    """Decays far beyond RWKV-7's: the segments shrink (to one step: nothing undone), the gradients
    stay exact."""
    span = triton_tier.undo_span
    assert span(torch.zeros(1), 0.0) == 16 and span(torch.zeros(1), BOUND) == 8
    assert span(torch.zeros(1), 3.0) == 2 and span(torch.zeros(1), 6.0) == 1
    assert span(torch.full((3,), -3.0), None) == 2  # measured from the tensor
    for decay in (3.0, 6.0):
        check_against_naive(*inputs(1, 21, 1, 8, 8, decay=decay))


def check_against_naive(xs, S0):
    o, S, g = grads(wkv7_triton, xs, S0)
    o_ref, S_ref, g_ref = reference(xs, S0)
    assert rel(o, o_ref) < 2e-6 and rel(S, S_ref) < 2e-6
    for name, x, ref in zip(NAMES, g, g_ref):
        assert rel(x, ref) < 5e-5, name


def test_several_blocks_of_columns(monkeypatch):
    """Forward and backward split V into blocks; the per-key gradients are partial sums added up."""
    monkeypatch.setattr(triton_tier, "_FWD_BV", 8)
    monkeypatch.setattr(triton_tier, "_BWD_BV", 8)
    check_against_naive(*inputs(1, 19, 1, 8, 20))  # 3 blocks of 8 columns, the last one partly masked


def test_gradient_of_the_output_only_and_no_grad_path():
    xs, S0 = inputs(1, 9, 1, 8, 8)
    leaves = [x.clone().requires_grad_() for x in xs]
    o, _ = wkv7_triton(*leaves, S0)  # the final state is not used: its gradient arrives as None
    g = torch.autograd.grad(o.sum(), leaves)
    ref_leaves = [x.double().requires_grad_() for x in xs]
    g_ref = torch.autograd.grad(wkv7_naive(*ref_leaves, S0.double())[0].sum(), ref_leaves)
    for name, x, ref in zip(NAMES, g, g_ref):
        assert rel(x, ref) < 5e-5, name
    with torch.no_grad():  # no checkpoints stored: the forward alone
        o2, S2 = wkv7_triton(*xs, S0)
    o_ref, S_ref = wkv7_naive(*[x.double() for x in xs], S0.double())
    assert rel(o2, o_ref) < 2e-6 and rel(S2, S_ref) < 2e-6


def test_empty_sequence_and_fp64():
    xs, S0 = inputs(1, 0, 1, 8, 8)
    o, S = wkv7_triton(*xs, S0)
    assert o.shape == (1, 0, 1, 8) and torch.equal(S, S0)
    xs, S0 = inputs(1, 6, 1, 8, 8, dtype=torch.float64)
    o, S = wkv7_triton(*xs, S0.double())  # fp64 goes to the chunk tier, computed in fp64
    o_ref, S_ref = wkv7_naive(*xs, S0.double())
    assert o.dtype == torch.float64 and rel(o, o_ref) < 1e-12 and rel(S, S_ref) < 1e-12


def test_dispatch_and_errors():
    xs, S0 = inputs(1, 7, 1, 8, 8)
    o, S = wkv7(*xs, S0, impl="triton", max_decay=BOUND)
    o_ref, S_ref = wkv7_naive(*[x.double() for x in xs], S0.double())
    assert rel(o, o_ref) < 2e-6 and rel(S, S_ref) < 2e-6
    # auto: triton for CUDA tensors (Triton installed), the chunked / one-token forms otherwise
    assert resolve_impl("wkv7", "auto", 7, gpu_tier=True) == "triton"
    assert resolve_impl("wkv7", "auto", 7) == "chunk" and resolve_impl("wkv7", "auto", 1) == "step"
    with pytest.raises(ValueError, match="expected \\[B, H, K, V\\]"):
        wkv7_triton(*xs, S0[..., :4])
    with pytest.raises(ValueError, match="must share the layout"):
        wkv7_triton(xs[0][..., :4], *xs[1:])
    # v's leading dims and a stated bound are checked once, for every tier
    for impl in ("naive", "chunk", "kernel", "triton"):
        with pytest.raises(ValueError, match="`v` has shape"):
            wkv7(*xs[:3], xs[3][:, :3], *xs[4:], S0, impl=impl)
    for impl in ("chunk", "triton"):
        with pytest.raises(ValueError, match="max_decay must be"):
            wkv7(*xs, S0, impl=impl, max_decay=-1.0)


def test_cpu_without_the_interpreter_says_what_to_do(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    xs, _ = inputs(1, 3, 1, 8, 8)
    xs = [x.cpu() for x in xs]
    with pytest.raises(ValueError, match="runs on CUDA tensors.*impl='chunk'"):
        wkv7_triton(*xs)


def test_rwkv7_model_trains_the_same_through_the_triton_tier():
    """A tiny RWKV-7 model: logits, final state and every parameter gradient equal the naive tier's."""
    from rwkvkit.models.rwkv.config import RWKVConfig
    from rwkvkit.models.rwkv.init import random_model

    cfg = RWKVConfig(version="7", n_layer=2, n_embd=32, vocab_size=50, head_size=16, lora_w=8, lora_a=8,
                     lora_v=4, lora_g=8)  # fmt: skip
    model = random_model(cfg).train().to(DEVICE)
    tokens = torch.randint(0, 50, (1, 21), device=DEVICE)
    out = {}
    for impl in ("naive", "triton"):
        model.zero_grad(set_to_none=True)
        logits, state = model(tokens, impl=impl)
        logits.float().square().mean().backward()
        out[impl] = logits, state, [p.grad for p in model.parameters()]  # None: unused (layer 0's v mix)
    (l1, s1, g1), (l2, s2, g2) = out["naive"], out["triton"]
    assert rel(l2, l1) < 1e-5  # fp32 logits through two layers
    assert rel(s2["wkv"][-1], s1["wkv"][-1]) < 1e-5
    assert sum(g is not None for g in g1) > 20
    for (name, _), x, ref in zip(model.named_parameters(), g2, g1):
        assert (x is None) == (ref is None), name
        assert ref is None or rel(x, ref) < 5e-5, name  # fp32 parameter gradients: measured <= 7e-6


def test_ops_module_exports_the_tier():
    assert "triton" in rwkv7_ops.IMPLS and rwkv7_ops.wkv7_triton is wkv7_triton


def test_forward_column_blocks_keep_the_gpu_busy(monkeypatch):
    """Narrower column blocks when few sequences and heads would leave streaming multiprocessors idle."""
    from rwkvkit.ops import _triton
    from rwkvkit.ops._triton import column_block

    monkeypatch.setattr(_triton, "MIN_PROGRAMS", 256)  # the library's value (the fixture zeroes it)

    assert column_block(8, 32, 64, 32) == 32  # training batch: 512 programs already
    assert column_block(1, 12, 64, 32) == 8  # one sequence's prefill (0.1B shape): 96 programs, not 24
    assert column_block(1, 1, 20, 32) == 8  # never narrower than 8 columns
    assert column_block(64, 12, 64, 32) == 32
