"""The CPU matrix-vector kernel (``rwkvkit.inference.kernels.gemv``) against its PyTorch reference.

Error measure everywhere: ``|y - exact| / (|x| @ |W|^T * |scale|)``, elementwise, where ``exact`` is
the product in float64 of the same (exactly widened) inputs. A float32 dot product of length K in
any summation order is within ``K * 2^-24`` of that in the worst case and ~``sqrt(K) * 2^-24``
(< 4e-6 for K = 3072) for random data; we observe <= 4e-7. The bound used, 1e-5, is loose for
rounding and tight for bugs: a wrong element or a weight rounded to bf16 on the way gives >= 1e-3.
"""

from __future__ import annotations

import functools
import importlib
import logging
import platform
import shutil
import sys
import threading

import pytest
import torch

from rwkvkit.inference import kernels

# the module (`kernels.gemv` is the function)
kmod = importlib.import_module("rwkvkit.inference.kernels.gemv")

REL_BOUND = 1e-5  # kernel (or reference) vs exact, relative to |x| @ |W|^T (see the module docstring)
DTYPES = (torch.float32, torch.bfloat16, torch.int8)
MS = (1, 2, 5, 16)
KS = (1, 7, 64, 768, 3072, 1000)
NS = (1, 3, 768, 4097)


@pytest.fixture(autouse=True)
def _kernels_enabled(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests choose the fallback explicitly; an RWKVKIT_NO_KERNELS in the caller's shell must not."""
    monkeypatch.delenv(kmod.ENV_DISABLE, raising=False)


def _why_no_build() -> str | None:
    """Why the kernel cannot be built on this machine, or None if it should build."""
    if not (sys.platform.startswith("linux") and platform.machine().lower() in ("x86_64", "amd64")):
        return f"the kernel targets x86-64 Linux, this is {sys.platform}/{platform.machine()}"
    if shutil.which("c++") is None:
        return "no C++ compiler (c++) on PATH"
    with kmod._ninja_on_path():
        if shutil.which("ninja") is None:
            return "no ninja (pip install ninja)"
    return None


@pytest.fixture(scope="module")
def kernel() -> None:
    """Skip when the build is impossible here; fail when it should have worked."""
    if kmod._load() is None:
        reason = _why_no_build()
        if reason is not None:
            pytest.skip(f"gemv kernel not buildable: {reason}")
        pytest.fail("the gemv kernel failed to build although a compiler and ninja exist (see the log)")


@functools.lru_cache(maxsize=64)
def _weights(dtype: torch.dtype, N: int, K: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Deterministic weights (and int8 scales) for a shape; cached, the big ones are reused."""
    g = torch.Generator().manual_seed(N * 10007 + K)
    if dtype == torch.int8:
        W = torch.randint(-128, 128, (N, K), dtype=torch.int8, generator=g)
        return W, torch.rand(N, generator=g) * 0.02 + 1e-3
    return torch.randn(N, K, generator=g).to(dtype), None


def _rel_err(y: torch.Tensor, x: torch.Tensor, W: torch.Tensor, scale: torch.Tensor | None) -> float:
    """max |y - exact| / (|x| @ |W|^T * |scale|), all in float64."""
    xd, Wd = x.double(), W.double()
    exact, mag = xd @ Wd.T, xd.abs() @ Wd.abs().T
    if scale is not None:
        exact, mag = exact * scale.double(), mag * scale.double().abs()
    return ((y.double() - exact).abs() / mag.clamp_min(1e-30)).max().item() if y.numel() else 0.0


def _available_isas() -> list[str]:
    if kmod._load() is None:
        return ["c++"]
    x, (W, _) = torch.ones(1, 4), _weights(torch.float32, 2, 4)
    isas = []
    for isa in ("c++", "avx2", "avx512"):
        try:
            kmod._gemv_isa(x, W, None, isa)
            isas.append(isa)
        except RuntimeError:  # this CPU lacks it
            pass
    return isas


# ----------------------------------------------------------------------------------------------
# kernel == reference
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("N", NS)
@pytest.mark.parametrize("K", KS)
@pytest.mark.parametrize("M", MS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_kernel_matches_reference(kernel: None, dtype: torch.dtype, M: int, K: int, N: int) -> None:
    W, scale = _weights(dtype, N, K)
    x = torch.randn(M, K)
    y = kmod._gemv_isa(x, W, scale, "auto")  # the kernel itself, whatever the environment says
    assert y.shape == (M, N) and y.dtype == torch.float32
    assert _rel_err(y, x, W, scale) <= REL_BOUND  # kernel vs exact: <= 1e-5 relative to |x|@|W|^T
    ref = kmod.gemv_reference(x, W, scale)
    assert _rel_err(ref, x, W, scale) <= REL_BOUND  # the reference is as close (sanity of the measure)
    assert torch.equal(kernels.gemv(x, W, scale), y)  # the public entry runs the same kernel


@pytest.mark.parametrize("isa", ["c++", "avx2", "avx512"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_every_isa_path(kernel: None, isa: str, dtype: torch.dtype) -> None:
    """The plain C++ and AVX2 paths (the fallbacks for older CPUs) on odd shapes and every M chunking."""
    if isa not in _available_isas():
        pytest.skip(f"this CPU lacks {isa}")
    for M in (1, 3, 4, 5, 9, 16, 17):  # 9 and 17: uneven chunks of x rows
        for N, K in ((1, 1), (13, 7), (25, 33), (4097, 1000), (768, 768)):
            W, scale = _weights(dtype, N, K)
            x = torch.randn(M, K)
            y = kmod._gemv_isa(x, W, scale, isa)
            assert _rel_err(y, x, W, scale) <= REL_BOUND, (M, N, K)  # <= 1e-5 relative to |x|@|W|^T


@pytest.mark.parametrize("isa", ["c++", "avx2", "avx512"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_weight_widening_is_exact(kernel: None, isa: str, dtype: torch.dtype) -> None:
    """x = rows of the identity picks single weights: y must equal W^T * scale bit for bit.

    Checks the bf16 shift and the int8 sign extension (the full range -128..127) with no rounding
    at all: every sum has one non-zero term, so the result is exact in any order.
    """
    if isa not in _available_isas():
        pytest.skip(f"this CPU lacks {isa}")
    K, N = 37, 300
    if dtype == torch.int8:
        W = torch.arange(N * K).remainder(256).sub(128).to(torch.int8).reshape(N, K)
        scale = torch.rand(N) + 0.5
    else:  # wide exponent range, both signs
        W = (torch.randn(N, K) * torch.logspace(-30, 30, K)).to(dtype)
        scale = None
    x = torch.eye(K)[:16]
    y = kmod._gemv_isa(x, W, scale, isa)
    expect = W[:, :16].float().T
    if scale is not None:
        expect = expect * scale
    assert torch.equal(y, expect)


def test_scale_on_float_weights(kernel: None) -> None:
    for dtype in (torch.float32, torch.bfloat16):
        W, _ = _weights(dtype, 768, 768)
        scale = torch.rand(768) + 0.5
        x = torch.randn(4, 768)
        assert _rel_err(kernels.gemv(x, W, scale), x, W, scale) <= REL_BOUND  # <= 1e-5 rel. |x|@|W|^T


def test_edge_shapes(kernel: None) -> None:
    W, _ = _weights(torch.float32, 5, 3)
    assert kernels.gemv(torch.randn(0, 3), W).shape == (0, 5)
    assert kernels.gemv(torch.randn(2, 3), W[:0]).shape == (2, 0)
    assert torch.equal(kernels.gemv(torch.randn(2, 0), torch.randn(5, 0)), torch.zeros(2, 5))
    big = torch.randn(3, 6)
    x = big[:, ::2]  # not contiguous: the wrapper copies x (small), never W
    assert torch.equal(kernels.gemv(x, W), kernels.gemv(x.contiguous(), W))


def test_same_bits_for_any_thread_count(kernel: None) -> None:
    """Each output is one thread's dot product in a fixed order: the split over threads cannot matter."""
    W, scale = _weights(torch.int8, 4097, 768)
    x = torch.randn(5, 768)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        y1 = kernels.gemv(x, W, scale)
        torch.set_num_threads(max(2, before))
        y2 = kernels.gemv(x, W, scale)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(y1, y2)


def test_concurrent_calls(kernel: None) -> None:
    W, _ = _weights(torch.bfloat16, 4097, 768)
    xs = [torch.randn(2, 768) for _ in range(4)]
    expect = [kernels.gemv(x, W) for x in xs]
    got: list[torch.Tensor | None] = [None] * 4

    def work(i: int) -> None:
        for _ in range(20):
            got[i] = kernels.gemv(xs[i], W)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(torch.equal(g, e) for g, e in zip(got, expect))


def test_kernel_isa(kernel: None) -> None:
    assert kernels.available()
    assert kernels.kernel_isa() in ("avx512", "avx2", "c++")


# ----------------------------------------------------------------------------------------------
# fallback
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_env_var_gives_the_reference(monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype) -> None:
    monkeypatch.setenv(kmod.ENV_DISABLE, "1")
    assert not kernels.available() and kernels.kernel_isa() is None
    W, scale = _weights(dtype, 768, 1000)
    x = torch.randn(3, 1000)
    assert torch.equal(kernels.gemv(x, W, scale), kernels.gemv_reference(x, W, scale))  # bit for bit


def test_failed_build_warns_once_and_falls_back(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A build failure (no compiler, ...) gives one warning, then the reference on every call."""
    calls = []

    def broken_build() -> None:
        calls.append(1)
        raise RuntimeError("Ninja is required to load C++ extensions (simulated)")

    monkeypatch.setattr(kmod, "_op", None)  # as in a fresh process (restored after the test)
    monkeypatch.setattr(kmod, "_failed", False)
    monkeypatch.setattr(kmod, "_build", broken_build)
    W, scale = _weights(torch.int8, 768, 768)
    x = torch.randn(2, 768)
    with caplog.at_level(logging.WARNING, logger=kmod.log.name):
        for _ in range(3):
            assert torch.equal(kernels.gemv(x, W, scale), kernels.gemv_reference(x, W, scale))
        assert not kernels.available()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(calls) == 1 and len(warnings) == 1
    assert "could not be built" in warnings[0].getMessage() and "simulated" in warnings[0].getMessage()


def test_build_happens_once_across_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Threads racing into the first call wait for one build instead of starting their own."""
    calls = []
    gate = threading.Event()

    def slow_build() -> object:
        calls.append(1)
        gate.wait(5)
        return kmod.gemv_reference

    monkeypatch.setattr(kmod, "_op", None)
    monkeypatch.setattr(kmod, "_failed", False)
    monkeypatch.setattr(kmod, "_build", slow_build)
    results: list[object] = []
    threads = [threading.Thread(target=lambda: results.append(kmod._load())) for _ in range(6)]
    for t in threads:
        t.start()
    gate.set()
    for t in threads:
        t.join()
    assert len(calls) == 1 and results == [kmod.gemv_reference] * 6


def test_autograd_uses_the_reference() -> None:
    W = torch.randn(5, 8, requires_grad=True)
    x = torch.randn(2, 8, requires_grad=True)
    y = kernels.gemv(x, W)
    y.sum().backward()  # the kernel has no backward; the differentiable reference ran
    assert torch.allclose(W.grad, x.sum(0).expand(5, 8)) and x.grad is not None


# ----------------------------------------------------------------------------------------------
# errors
# ----------------------------------------------------------------------------------------------

_X, _W = torch.randn(2, 8), torch.randn(5, 8)


@pytest.mark.parametrize(
    ("x", "W", "scale", "match"),
    [
        (torch.randn(8), _W, None, r"x must be \[M, K\]"),
        (_X, torch.randn(5, 8, 1), None, r"W \[N, K\]"),
        (_X, torch.randn(5, 9), None, "K differs"),
        (_X.bfloat16(), _W, None, "x must be float32"),
        (_X, _W.half(), None, "W must be float32, bfloat16 or int8"),
        (_X, torch.randn(8, 5).T, None, "W must be contiguous"),
        (_X, _W.to(torch.int8), None, "int8 weights need"),
        (_X, _W, torch.ones(4), "scale has 4 entries"),
        (_X, _W, torch.ones(5, dtype=torch.float64), "scale must be a 1-D float32"),
        (_X, _W, torch.ones(5, 1), "scale must be a 1-D float32"),
        ([[1.0] * 8], _W, None, "must be tensors"),
    ],
)
def test_bad_arguments(x: object, W: torch.Tensor, scale: torch.Tensor | None, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        kernels.gemv(x, W, scale)  # type: ignore[arg-type]


def test_non_cpu_tensors_are_refused() -> None:
    with pytest.raises(ValueError, match="CPU tensors only"):
        kernels.gemv(_X.to("meta"), _W.to("meta"))
