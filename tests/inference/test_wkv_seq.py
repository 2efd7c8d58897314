"""The sequential C++ WKV kernels (``rwkvkit.ops.cpu.wkv_seq``, the ``kernel`` tier) against the naive
references.

Error measures (fp32 kernel vs fp32 naive loop, same inputs):

* ``rel_rms = ||x - ref|| / ||ref||`` over the whole tensor; bound ``REL_RMS = 1e-5``. The kernels
  only reorder the sums (and use FMA), so they differ from the loop by fp32 rounding: we observe
  <= 3e-7 (7e-7 for the large case against the chunked form). A wrong term (a missed decay, the
  bonus on the wrong token) gives >= 1e-3.
* ``max_rel = max |x - ref| / max |ref|`` (normwise, so entries near 0 do not blow it up); bound
  ``MAX_REL = 1e-5``; observed <= 7e-7 (<= 1.5e-6 for the large case against the chunked form).
"""

from __future__ import annotations

import logging
import platform
import shutil
import sys

import pytest
import torch

from rwkvkit import ops
from rwkvkit.ops import wkv4_naive, wkv6_naive, wkv7_chunk, wkv7_naive
from rwkvkit.ops.cpu import wkv_seq as ks
from rwkvkit.ops.cpu.build import ninja_on_path
from rwkvkit.ops.rwkv4 import wkv4_kernel
from rwkvkit.ops.rwkv6 import wkv6_kernel
from rwkvkit.ops.rwkv7 import wkv7_kernel

REL_RMS = 1e-5  # ||x - ref|| / ||ref|| (fp32 vs fp32 naive; observed <= 3e-7)
MAX_REL = 1e-5  # max |x - ref| / max |ref| (observed <= 7e-7; large case vs chunk 1.5e-6)


@pytest.fixture(autouse=True)
def _kernels_enabled(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests choose the fallback explicitly; an RWKVKIT_NO_KERNELS in the caller's shell must not."""
    monkeypatch.delenv(ks.ENV_DISABLE, raising=False)


def _why_no_build() -> str | None:
    if not (sys.platform.startswith("linux") and platform.machine().lower() in ("x86_64", "amd64")):
        return f"the kernels target x86-64 Linux, this is {sys.platform}/{platform.machine()}"
    if shutil.which("c++") is None:
        return "no C++ compiler (c++) on PATH"
    with ninja_on_path():
        if shutil.which("ninja") is None:
            return "no ninja (pip install ninja)"
    return None


@pytest.fixture(scope="module")
def kernel() -> None:
    """Skip when the build is impossible here; fail when it should have worked."""
    if ks._load() is None:
        reason = _why_no_build()
        if reason is not None:
            pytest.skip(f"wkv kernels not buildable: {reason}")
        pytest.fail("the wkv kernels failed to build although a compiler and ninja exist (see the log)")


def _isas() -> list[str]:
    """The instruction sets this CPU can run (the forced-ISA tests use each)."""
    out = ["c++"]
    if torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"):
        out.append("avx2")
    if torch.backends.cpu.get_cpu_capability() == "AVX512":
        out.append("avx512")
    return out


def assert_close(name: str, x: torch.Tensor, ref: torch.Tensor) -> None:
    assert x.shape == ref.shape, f"{name}: shape {tuple(x.shape)} != {tuple(ref.shape)}"
    assert torch.isfinite(x).all(), f"{name}: non-finite values"
    d = (x.double() - ref.double()).abs()
    scale = ref.double().abs().max().clamp_min(1e-30)
    rel_rms = (d.norm() / ref.double().norm().clamp_min(1e-30)).item()
    max_rel = (d.max() / scale).item() if d.numel() else 0.0
    assert rel_rms <= REL_RMS, f"{name}: rel RMS {rel_rms:.2e} > {REL_RMS}"  # observed <= 3e-7 (large: 7e-7)
    assert max_rel <= MAX_REL, f"{name}: max rel {max_rel:.2e} > {MAX_REL}"  # observed <= 7e-7 (large 1.5e-6)


def make7(B: int, T: int, H: int, K: int, V: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """RWKV-7-like inputs: log_w in [-exp(-0.5), 0] with entries near both ends; a = -kk, b = kk * iclr."""
    g = torch.Generator().manual_seed(seed)
    r, k = (torch.randn(B, T, H, K, generator=g) for _ in range(2))
    v = torch.randn(B, T, H, V, generator=g)
    log_w = -torch.rand(B, T, H, K, generator=g) * torch.exp(torch.tensor(-0.5))
    log_w[..., 0] = -1e-5  # decay ~1
    log_w[..., -1] = -torch.exp(torch.tensor(-0.5))  # strongest decay RWKV-7 allows
    kk = torch.nn.functional.normalize(torch.randn(B, T, H, K, generator=g), dim=-1)
    iclr = torch.rand(B, T, H, K, generator=g)
    state = torch.randn(B, H, K, V, generator=g)
    return r, log_w, k, v, -kk, kk * iclr, state


def make6(B: int, T: int, H: int, K: int, V: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """RWKV-6-like inputs: log_w = -exp(x) spanning decays ~1 (-1e-4) to ~0 (-1e4)."""
    g = torch.Generator().manual_seed(seed)
    r, k = (torch.randn(B, T, H, K, generator=g) for _ in range(2))
    v = torch.randn(B, T, H, V, generator=g)
    log_w = -torch.exp(torch.randn(B, T, H, K, generator=g) * 2)
    log_w[..., 0] = -1e-4
    log_w[..., -1] = -1e4
    u = torch.randn(H, K, generator=g)
    state = torch.randn(B, H, K, V, generator=g)
    return r, log_w, k, v, u, state


def make4(B: int, T: int, C: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """RWKV-4 inputs with large keys (|k| up to 60) so the max tracking matters."""
    g = torch.Generator().manual_seed(seed)
    w = -torch.exp(torch.randn(C, generator=g))
    w[0] = -1e-4
    w[-1] = -50.0
    u = torch.randn(C, generator=g)
    k = (torch.rand(B, T, C, generator=g) * 2 - 1) * 60
    v = torch.randn(B, T, C, generator=g)
    return w, u, k, v


SHAPES7 = [  # (B, T, H, K, V)
    (1, 1, 1, 16, 16),
    (3, 7, 3, 24, 24),
    (1, 65, 3, 32, 32),
    (3, 300, 1, 64, 64),
    (1, 7, 3, 64, 64),
    (3, 7, 1, 32, 80),  # V != K, V not a multiple of 16
    (1, 7, 1, 17, 5),
]


@pytest.mark.parametrize("shape", SHAPES7)
def test_wkv7_vs_naive(kernel, shape):
    B, T, H, K, V = shape
    *xs, state = make7(B, T, H, K, V)
    o_ref, S_ref = wkv7_naive(*xs, state)
    o, S = wkv7_kernel(*xs, state)
    assert o.dtype == torch.float32 and S.dtype == torch.float32
    assert_close("o", o, o_ref)
    assert_close("state", S, S_ref)
    o0, S0 = wkv7_kernel(*xs)  # zero initial state
    o0_ref, S0_ref = wkv7_naive(*xs)
    assert_close("o (zero state)", o0, o0_ref)
    assert_close("state (zero state)", S0, S0_ref)


@pytest.mark.parametrize("isa", ["c++", "avx2", "avx512"])
def test_isas(kernel, isa):
    if isa not in _isas():
        pytest.skip(f"this CPU lacks {isa}")
    for B, T, H, K, V in [(3, 65, 3, 24, 24), (1, 7, 1, 64, 80)]:
        *xs, state = make7(B, T, H, K, V, seed=1)
        o_ref, S_ref = wkv7_naive(*xs, state)
        o, S = wkv7_kernel(*xs, state, isa=isa)
        assert_close(f"wkv7 o [{isa}]", o, o_ref)
        assert_close(f"wkv7 state [{isa}]", S, S_ref)
        *xs, state = make6(B, T, H, K, V, seed=1)
        y_ref, S_ref = wkv6_naive(*xs, state)
        y, S = wkv6_kernel(*xs, state, isa=isa)
        assert_close(f"wkv6 y [{isa}]", y, y_ref)
        assert_close(f"wkv6 state [{isa}]", S, S_ref)
        w, u, k, v = make4(B, T, H * K, seed=1)
        y_ref, S_ref = wkv4_naive(w, u, k, v)
        y, S = wkv4_kernel(w, u, k, v, isa=isa)
        assert_close(f"wkv4 y [{isa}]", y, y_ref)
        assert_close(f"wkv4 state [{isa}]", S, S_ref)


SHAPES6 = [(1, 1, 1, 16, 16), (3, 7, 3, 24, 24), (1, 65, 3, 32, 32), (3, 300, 1, 64, 64), (3, 7, 1, 32, 80)]
SHAPES4 = [(1, 1, 16), (3, 7, 24), (1, 65, 768), (3, 300, 48), (2, 7, 5)]  # (B, T, C)


@pytest.mark.parametrize("shape", SHAPES6)
def test_wkv6_vs_naive(kernel, shape):
    B, T, H, K, V = shape
    *xs, state = make6(B, T, H, K, V)
    y_ref, S_ref = wkv6_naive(*xs, state)
    y, S = wkv6_kernel(*xs, state)
    assert_close("y", y, y_ref)
    assert_close("state", S, S_ref)
    y0, S0 = wkv6_kernel(*xs)
    y0_ref, S0_ref = wkv6_naive(*xs)
    assert_close("y (zero state)", y0, y0_ref)
    assert_close("state (zero state)", S0, S0_ref)


@pytest.mark.parametrize("per_head", [True, False])
def test_wkv5_dispatch(kernel, per_head):
    B, T, H, K = 3, 33, 3, 32
    r, _, k, v, _, state = make6(B, T, H, K, K, seed=2)
    log_w = -torch.exp(torch.randn(H, 1 if per_head else K))
    u = torch.randn(H, 1 if per_head else K)
    y_ref, S_ref = ops.wkv5(r, log_w, k, v, u, state, impl="naive")
    y, S = ops.wkv5(r, log_w, k, v, u, state, impl="kernel")
    assert_close("y", y, y_ref)
    assert_close("state", S, S_ref)


@pytest.mark.parametrize("shape", SHAPES4)
def test_wkv4_vs_naive(kernel, shape):
    B, T, C = shape
    w, u, k, v = make4(B, T, C)
    y_ref, S_ref = wkv4_naive(w, u, k, v)
    y, S = wkv4_kernel(w, u, k, v)
    assert_close("y", y, y_ref)
    assert_close("state", S, S_ref)
    # continue from that (non-trivial) state: the pp normalisation must match the reference's
    w2, u2, k2, v2 = make4(B, T, C, seed=3)
    y_ref, S2_ref = wkv4_naive(w, u, k2, v2, S_ref)
    y, S2 = wkv4_kernel(w, u, k2, v2, S)
    assert_close("y (continued)", y, y_ref)
    assert_close("state (continued)", S2, S2_ref)


def test_split_sequence_matches_whole(kernel):
    """Two kernel calls chained through the state equal one call (what prefill in pieces relies on)."""
    *xs, state = make7(2, 40, 3, 32, 32, seed=4)
    o, S = wkv7_kernel(*xs, state)
    o1, S1 = wkv7_kernel(*(x[:, :17] for x in xs), state)
    o2, S2 = wkv7_kernel(*(x[:, 17:] for x in xs), S1)
    assert torch.equal(torch.cat([o1, o2], 1), o) and torch.equal(S2, S)


def test_large_wkv7_vs_chunk(kernel):
    """The prefill shape (B=1, T=1024, H=12, N=64) against the chunked form (the naive loop takes ~30 s
    here; the chunked form is tested against it in tests/ops). Chunk vs naive is itself ~1e-6."""
    *xs, state = make7(1, 1024, 12, 64, 64, seed=5)
    o_ref, S_ref = wkv7_chunk(*xs, state)
    o, S = wkv7_kernel(*xs, state)
    assert_close("o", o, o_ref)
    assert_close("state", S, S_ref)


def test_dtypes_and_empty(kernel):
    *xs, state = make7(2, 9, 2, 16, 16, seed=6)
    o, S = wkv7_kernel(*(x.bfloat16() for x in xs), state)
    assert o.dtype == torch.bfloat16 and S.dtype == torch.float32
    o_ref, S_ref = wkv7_naive(*(x.bfloat16() for x in xs), state)
    assert_close("state (bf16 inputs)", S, S_ref)
    # T = 0: no output, the state passes through unchanged
    o, S = wkv7_kernel(*(x[:, :0] for x in xs), state)
    assert o.shape == (2, 0, 2, 16) and torch.equal(S, state)
    w, u, k, v = make4(2, 0, 8)
    y, S4 = wkv4_kernel(w, u, k, v)
    assert y.shape == (2, 0, 8) and torch.equal(S4, ops.wkv4_initial_state(2, 8))
    # the caller's state is never written
    before = state.clone()
    wkv7_kernel(*xs, state)
    assert torch.equal(state, before)


def test_dispatch_kernel_impl(kernel):
    assert "kernel" in ops.IMPLS
    *xs, state = make7(2, 9, 2, 16, 16, seed=7)
    o_k, S_k = ops.wkv7(*xs, state, impl="kernel")
    o, S = wkv7_kernel(*xs, state)
    assert torch.equal(o_k, o) and torch.equal(S_k, S)
    o_a, S_a = ops.wkv7(*xs, state, impl="auto")  # "auto" is unchanged: the chunked form
    o_c, S_c = ops.wkv7(*xs, state, impl="chunk")
    assert torch.equal(o_a, o_c) and torch.equal(S_a, S_c)
    *xs, state = make6(2, 9, 2, 16, 16, seed=7)
    y_k, S_k = ops.wkv6(*xs, state, impl="kernel")
    y, S = wkv6_kernel(*xs, state)
    assert torch.equal(y_k, y) and torch.equal(S_k, S)
    w, u, k, v = make4(2, 9, 16, seed=7)
    y_k, S_k = ops.wkv4(w, u, k, v, impl="kernel")
    y, S = wkv4_kernel(w, u, k, v)
    assert torch.equal(y_k, y) and torch.equal(S_k, S)
    y_ref, _ = ops.wkv4(w, u, k, v, impl="naive")
    assert_close("wkv4 via dispatcher", y_k, y_ref)


def _forbid_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*a, **k):
        raise AssertionError("the kernel must not be used here")

    monkeypatch.setattr(ks, "_load", boom)


def test_fallback_env(monkeypatch):
    monkeypatch.setenv(ks.ENV_DISABLE, "1")
    _forbid_kernel(monkeypatch)
    assert not ks.available()
    *xs, state = make7(2, 9, 2, 16, 16, seed=8)
    o, S = ops.wkv7(*xs, state, impl="kernel")
    o_ref, S_ref = wkv7_naive(*xs, state)
    assert_close("o (fallback)", o, o_ref)
    o1, _ = wkv7_kernel(*(x[:, :1] for x in xs), state)  # T = 1: the step form
    assert_close("o (fallback, T=1)", o1, o_ref[:, :1])
    *xs, state = make6(2, 9, 2, 16, 16, seed=8)
    y, _ = ops.wkv6(*xs, state, impl="kernel")
    assert_close("y (fallback)", y, wkv6_naive(*xs, state)[0])
    w, u, k, v = make4(2, 9, 16, seed=8)
    y, _ = ops.wkv4(w, u, k, v, impl="kernel")
    assert_close("wkv4 y (fallback)", y, wkv4_naive(w, u, k, v)[0])


def test_fallback_grad_and_fp64(monkeypatch):
    _forbid_kernel(monkeypatch)
    *xs, state = make7(1, 5, 1, 16, 16, seed=9)
    xs = [x.clone().requires_grad_(True) for x in xs]
    o, S = wkv7_kernel(*xs, state)
    o.sum().backward()
    assert xs[0].grad is not None
    x64 = [x.detach().double() for x in xs]
    o, S = wkv7_kernel(*x64, state.double())
    assert o.dtype == torch.float64 and S.dtype == torch.float64
    o_ref, _ = wkv7_naive(*x64, state.double())
    assert (o - o_ref).abs().max() < 1e-10


def test_fallback_build_failure(monkeypatch, caplog):
    monkeypatch.setattr(ks, "_ops", None)
    monkeypatch.setattr(ks, "_failed", False)

    def fail():
        raise RuntimeError("no compiler in this test")

    monkeypatch.setattr(ks, "_build", fail)
    *xs, state = make7(1, 5, 1, 16, 16, seed=10)
    with caplog.at_level(logging.WARNING, logger=ks.__name__):
        o, _ = wkv7_kernel(*xs, state)
        wkv7_kernel(*xs, state)
    assert_close("o (build failed)", o, wkv7_naive(*xs, state)[0])
    warnings = [r for r in caplog.records if "could not be built" in r.getMessage()]
    assert len(warnings) == 1


def test_bad_input():
    *xs, state = make7(2, 5, 2, 16, 16)
    with pytest.raises(ValueError, match="state"):
        wkv7_kernel(*xs, state[:, :, :8])
    with pytest.raises(ValueError, match="log_w"):
        wkv7_kernel(xs[0], xs[1][..., :8], *xs[2:], state)
    with pytest.raises(ValueError, match="4 dims"):
        wkv7_kernel(xs[0][:, 0], *xs[1:])
    with pytest.raises(ValueError, match="`v`"):
        wkv7_kernel(*xs[:3], xs[3][:, :4], *xs[4:])
    with pytest.raises(ValueError, match="isa"):
        wkv7_kernel(*xs, isa="avx9000")
    *xs, state = make6(2, 5, 2, 16, 16)
    with pytest.raises(ValueError, match="`u`"):
        wkv6_kernel(*xs[:4], xs[4][:, :8], state)
    with pytest.raises(ValueError, match="`u`"):
        ops.wkv5(xs[0], xs[1][0, 0], xs[2], xs[3], xs[4][:1], impl="kernel")
    w, u, k, v = make4(2, 5, 8)
    with pytest.raises(ValueError, match="C = 8"):
        wkv4_kernel(w[:4], u, k, v)
    with pytest.raises(ValueError, match="state"):
        wkv4_kernel(w, u, k, v, torch.zeros(2, 2, 8))
