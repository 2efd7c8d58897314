"""4-bit weights: the GGUF Q4_0 format of :class:`rwkvkit.inference.quant.Q4Linear`, the kernels with
int8 activations (``gemv_q4``, ``gemv_int8``, ``quantize_activations``), ``q4_dequant``, and a q4 model
(the fused RWKV-7 block with q4 projections is tested with the others in ``test_fused.py``).

Error measures, each next to the tensors it applies to:

* the format is compared with ``gguf.quants`` (llama.cpp's rule) bit for bit;
* ``gemv_q4`` multiplies int8 activations (``quantize_activations``, bit-identical in C++ and
  PyTorch) by the 4-bit codes. Against the exact product of those same quantized operands (float64),
  its error is fp32 rounding only: ``|y - exact| <= 1e-5 * sum |d_w d_x code_s xq|`` (observed
  <= 5e-8). Against the product with the unquantized ``x`` (``gemv_q4_reference``) it may differ by
  the rounding of ``x``: ``|y - ref| <= sum_k |w[n, k]| * d_x(k) / 2`` (+ the fp32 term);
* ``q4_dequant`` (bf16) equals the PyTorch dequantization rounded to bf16 bit for bit.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rwkvkit.inference import optimize
from rwkvkit.inference.quant import Q4Linear, _q4_unpack, quantize_, quantize_q4_0
from rwkvkit.models.rwkv.config import RWKVConfig
from rwkvkit.models.rwkv.init import random_model

gguf = pytest.importorskip("gguf")
kmod = importlib.import_module("rwkvkit.inference.kernels.gemv")
Q4_0 = gguf.GGMLQuantizationType.Q4_0


@pytest.fixture(autouse=True)
def _kernels_enabled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(kmod.ENV_DISABLE, raising=False)


@pytest.fixture(scope="module")
def kernel() -> None:
    if kmod._load() is None:
        pytest.skip("the C++ kernel extension is not available here")


def linear(w: torch.Tensor) -> torch.nn.Linear:
    lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
    lin.weight.data = w
    return lin


def awkward_weight(N: int, K: int, seed: int = 0) -> torch.Tensor:
    """Magnitudes over 10 decades, an all-zero block, ties of +-max, a block of equal values."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(N, K, generator=g) * torch.logspace(-5, 5, K)[torch.randperm(K, generator=g)]
    w[0, :32] = 0
    if N > 2:
        w[1, 3], w[1, 9] = 7.0, -7.0  # +max first: d = 7 / -8, so -7 gets code 16 -> clipped to 15
        w[1, :32].clamp_(-7, 7)
        w[2, :32] = 0.25
    return w


# ---- the format ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("N", "K"), [(1, 32), (3, 64), (37, 96), (256, 768)])
def test_quantization_is_gguf_q4_0_bit_for_bit(N: int, K: int) -> None:
    w = awkward_weight(N, K, seed=N)
    m = Q4Linear.from_linear(linear(w))
    ref = gguf.quants.quantize(w.numpy(), Q4_0)  # llama.cpp's quantize_row_q4_0_ref, in numpy
    got = m.to_q4_0()
    assert got.dtype == torch.uint8 and tuple(got.shape) == ref.shape
    assert np.array_equal(got.numpy(), ref)
    # the weight the layer multiplies by is GGUF's dequantization, exactly
    assert np.array_equal(m.dequantize().numpy(), gguf.quants.dequantize(ref, Q4_0))
    codes, d = quantize_q4_0(w)
    assert codes.max() <= 15 and d.dtype == torch.float16


def test_from_q4_0_keeps_the_bytes() -> None:
    w = awkward_weight(40, 128, seed=1)
    raw = gguf.quants.quantize(w.numpy(), Q4_0)
    for data in (raw, torch.from_numpy(raw), raw.reshape(-1)):  # numpy, torch, flat
        m = Q4Linear.from_q4_0(data, 40, 128)
        assert np.array_equal(m.to_q4_0().numpy(), raw)
    m1 = Q4Linear.from_linear(linear(w))
    assert torch.equal(m.qweight, m1.qweight) and torch.equal(m.scales, m1.scales)
    with pytest.raises(ValueError, match="needs 2880 bytes"):
        Q4Linear.from_q4_0(raw[:-1], 40, 128)
    with pytest.raises(ValueError, match="divisible by 32"):
        Q4Linear.from_q4_0(raw, 40, 100)
    with pytest.raises(ValueError, match="raw uint8 bytes"):
        Q4Linear.from_q4_0(torch.zeros(2880, dtype=torch.float32), 40, 128)


def test_in_features_not_a_multiple_of_32_is_zero_padded() -> None:
    w = awkward_weight(5, 70, seed=2)
    m = Q4Linear.from_linear(linear(w))
    padded = Q4Linear.from_linear(linear(F.pad(w, (0, 26))))
    assert torch.equal(m.dequantize(), padded.dequantize()[:, :70])
    with pytest.raises(ValueError, match="divisible by 32"):
        m.to_q4_0()


def test_dequantize_rows_and_dtype() -> None:
    m = Q4Linear.from_linear(linear(torch.randn(50, 64)))
    full = m.dequantize()
    assert torch.equal(m.dequantize(slice(17, 41)), full[17:41])
    assert torch.equal(m.dequantize(dtype=torch.bfloat16), full.bfloat16())


def test_state_dict_round_trip_and_dtype_casts() -> None:
    m = Q4Linear.from_linear(linear(torch.randn(20, 64)))
    m2 = Q4Linear(64, 20)
    m2.load_state_dict(m.state_dict())
    assert torch.equal(m2.dequantize(), m.dequantize())
    m2.to(torch.bfloat16)  # the fp16 scales are stored as int16 bits: a float cast leaves them alone
    assert torch.equal(m2.dequantize(), m.dequantize())


# ---- forward paths ------------------------------------------------------------------------------------


def test_forward_fallback_is_the_dequantized_linear() -> None:
    m = Q4Linear.from_linear(linear(torch.randn(24, 64)))
    x = torch.randn(3, 64, requires_grad=True)
    y = m(x)  # autograd: the PyTorch reference
    assert torch.equal(y, F.linear(x, m.dequantize()))
    y.sum().backward()
    assert torch.allclose(x.grad, m.dequantize().sum(0).expand(3, 64))
    m.use_kernels = False
    with torch.no_grad():
        assert torch.equal(m(x), F.linear(x, m.dequantize()))


def test_forward_kernel_paths(kernel) -> None:
    w = torch.randn(300, 96)
    m = Q4Linear.from_linear(linear(w))
    W = m.dequantize()
    with torch.no_grad():
        x = torch.randn(2, 5, 96)
        y = m(x)  # 10 rows: the matrix-vector kernel
        assert y.shape == (2, 5, 300)
        assert torch.equal(y.reshape(10, 300), kmod.gemv_q4(x.reshape(10, 96), m.qweight, m.scales, 300))
        x = torch.randn(40, 96)
        y = m(x)  # prefill: bf16 dequantization + oneDNN: weights, x and the output rounded to bf16
        xb, Wb = x.bfloat16().float(), W.bfloat16().float()
        ref, mag = F.linear(xb, Wb), F.linear(xb.abs(), Wb.abs())
        assert ((y - ref).abs() <= 2**-8 * ref.abs() + 1e-5 * mag).all()  # the output's bf16 rounding
        assert ((y - F.linear(x, W)).norm() / F.linear(x, W).norm()).item() <= 1e-2  # bf16 roundings only


# ---- kernels ------------------------------------------------------------------------------------------


def _q4_isas() -> list[str]:
    """The q4 kernel's instruction sets this CPU runs (the kernel is loaded)."""
    out = []
    for isa, code in kmod.QISAS.items():
        try:
            if isa != "auto":
                torch.ops.rwkvkit_kernels.quantize_activations(torch.ones(1, 4), code)
                out.append(isa)
        except RuntimeError:  # this CPU lacks it
            pass
    return out


def exact_quantized(x: torch.Tensor, m: Q4Linear) -> tuple[torch.Tensor, torch.Tensor]:
    """The product of the quantized operands in float64, and sum |terms| (the error scale)."""
    xq, xd = kmod.quantize_activations(x)
    N = m.out_features
    codes, d = _q4_unpack(m.qweight, m.scales, slice(0, N))
    KB = xd.shape[1]
    ws = (codes.double() - 8).reshape(N, KB, 32)
    xs = xq.double().reshape(-1, KB, 32)
    scale = d.double()[None] * xd.double()[:, None]  # [M, N, KB]
    exact = (torch.einsum("nbk,mbk->mnb", ws, xs) * scale).sum(-1)
    mag = (torch.einsum("nbk,mbk->mnb", ws.abs(), xs.abs()) * scale.abs()).sum(-1)
    return exact, mag


@pytest.mark.parametrize(
    ("M", "N", "K"), [(1, 768, 768), (3, 33, 96), (5, 17, 70), (16, 300, 256), (2, 1, 1)]
)
def test_gemv_q4_every_isa(kernel, M: int, N: int, K: int) -> None:
    w = awkward_weight(N, K, seed=K) if N >= 3 and K >= 32 else torch.randn(N, K)
    m = Q4Linear.from_linear(linear(w))
    x = torch.randn(M, K) * torch.logspace(-2, 2, K)
    xq, xd = kmod.quantize_activations(x)
    exact, mag = exact_quantized(x, m)
    ref = kmod.gemv_q4_reference(x, m.qweight, m.scales, N)
    # |y - ref| <= sum_k |w| * d_x / 2: x rounded to the nearest multiple of d_x
    W = m.dequantize().double()
    dx = xd.double().repeat_interleave(32, dim=1)[:, :K]
    rounding = (W.abs() @ dx.T).T / 2
    isas = _q4_isas()
    assert "c++" in isas
    for isa in isas:
        xq2, xd2 = torch.ops.rwkvkit_kernels.quantize_activations(x, kmod.QISAS[isa])
        assert torch.equal(xq2, xq) and torch.equal(xd2, xd), isa  # the same rounding bit for bit
        y = kmod._gemv_q4_isa(x, m.qweight, m.scales, N, isa)
        assert y.shape == (M, N) and y.dtype == torch.float32
        assert ((y.double() - exact).abs() / mag.clamp_min(1e-30)).max() <= 1e-5, isa  # fp32 sums only
        assert ((y.double() - ref.double()).abs() <= rounding * (1 + 1e-5) + 1e-5 * mag).all(), isa


I8_SHAPES = [(1, 768, 768), (3, 33, 96), (5, 17, 70), (16, 30, 256), (2, 1, 1), (7, 25, 33), (1, 13, 3072)]


@pytest.mark.parametrize(("M", "N", "K"), I8_SHAPES)
def test_gemv_int8_every_isa(kernel, M: int, N: int, K: int) -> None:
    """int8 weights (the full range -128..127) with int8 activations: the same two bounds as q4."""
    g = torch.Generator().manual_seed(M * N + K)
    W = torch.randint(-128, 128, (N, K), dtype=torch.int8, generator=g)
    scale = torch.rand(N, generator=g) + 0.5
    x = torch.randn(M, K, generator=g) * torch.logspace(-2, 2, K)
    xq, xd = kmod.quantize_activations(x)
    KB = xd.shape[1]
    Wp = F.pad(W.double(), (0, KB * 32 - K)).reshape(N, KB, 32)
    xs = xq.double().reshape(M, KB, 32)
    s = scale.double()
    exact = (torch.einsum("nbk,mbk->mnb", Wp, xs) * xd.double()[:, None]).sum(-1) * s
    mag = (torch.einsum("nbk,mbk->mnb", Wp.abs(), xs.abs()) * xd.double()[:, None]).sum(-1) * s
    ref = kmod.gemv_reference(x, W, scale).double()
    dx = xd.double().repeat_interleave(32, dim=1)[:, :K]
    rounding = (W.double().abs() * s[:, None] @ dx.T).T / 2  # |x - xq * d_x| <= d_x / 2
    for isa in _q4_isas():
        y = torch.ops.rwkvkit_kernels.gemv_int8(x, W, scale, kmod.QISAS[isa])
        assert y.shape == (M, N) and y.dtype == torch.float32
        assert ((y.double() - exact).abs() / mag.clamp_min(1e-30)).max() <= 1e-5, isa  # fp32 sums only
        assert ((y.double() - ref).abs() <= rounding * (1 + 1e-5) + 1e-5 * mag).all(), isa
    assert torch.equal(kmod.gemv_int8(x, W, scale), torch.ops.rwkvkit_kernels.gemv_int8(x, W, scale, 0))


def test_gemv_int8_fallback_and_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    W, scale, x = torch.randint(-127, 128, (20, 64), dtype=torch.int8), torch.rand(20), torch.randn(3, 64)
    with pytest.raises(ValueError, match="int8 with its float32 scale"):
        kmod.gemv_int8(x, W.float(), scale)
    monkeypatch.setenv(kmod.ENV_DISABLE, "1")
    assert torch.equal(kmod.gemv_int8(x, W, scale), kmod.gemv_reference(x, W, scale))


def test_gemv_q4_same_bits_for_any_thread_count(kernel) -> None:
    m = Q4Linear.from_linear(linear(torch.randn(2000, 256)))
    x = torch.randn(3, 256)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        y1 = kmod.gemv_q4(x, m.qweight, m.scales, 2000)
        torch.set_num_threads(max(2, before))
        y2 = kmod.gemv_q4(x, m.qweight, m.scales, 2000)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(y1, y2)


def test_q4_dequant_kernel_is_the_reference(kernel) -> None:
    m = Q4Linear.from_linear(linear(awkward_weight(70, 100, seed=3)))
    for r0, r1 in ((0, 70), (5, 37), (16, 32), (69, 70), (3, 3)):
        got = kmod.q4_dequant(m.qweight, m.scales, r0, r1, 100)
        assert got.dtype == torch.bfloat16 and got.shape == (r1 - r0, 100)
        assert torch.equal(got, m.dequantize(slice(r0, r1), dtype=torch.bfloat16))


def test_gemv_q4_fallback_and_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    m = Q4Linear.from_linear(linear(torch.randn(20, 64)))
    x = torch.randn(2, 64)
    monkeypatch.setenv(kmod.ENV_DISABLE, "1")
    assert torch.equal(kmod.gemv_q4(x, m.qweight, m.scales, 20), F.linear(x, m.dequantize()))
    assert torch.equal(kmod.q4_dequant(m.qweight, m.scales, 0, 20, 64), m.dequantize(dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="qweight must be"):
        kmod.gemv_q4(x, m.qweight[:1], m.scales, 20)
    with pytest.raises(ValueError, match="scales must be"):
        kmod.gemv_q4(x, m.qweight, m.scales.float(), 20)
    with pytest.raises(ValueError, match="float32"):
        kmod.gemv_q4(x.double(), m.qweight, m.scales, 20)


def test_gemv_q4_operator_checks(kernel) -> None:
    m = Q4Linear.from_linear(linear(torch.randn(20, 64)))
    with pytest.raises(RuntimeError, match="qweight must be"):  # an error, not a crash
        torch.ops.rwkvkit_kernels.gemv_q4(torch.randn(2, 64), m.qweight, m.scales, 40, 0)
    with pytest.raises(RuntimeError, match="out of range"):
        torch.ops.rwkvkit_kernels.q4_dequant(m.qweight, m.scales, 0, 33, 64)


# ---- models -------------------------------------------------------------------------------------------

CFG = RWKVConfig(version="7", n_layer=2, n_embd=96, vocab_size=64, head_size=32,
                 lora_w=17, lora_a=9, lora_v=5, lora_g=23, dim_ffn=200)  # fmt: skip


@pytest.fixture(scope="module")
def q4_model():
    return optimize(random_model(CFG, seed=1), "q4")


def test_optimize_q4_stores_every_projection_in_4_bits(q4_model) -> None:
    q4 = [n for n, m in q4_model.named_modules() if isinstance(m, Q4Linear)]
    assert len(q4) == CFG.n_layer * 6  # r, k, v, o, ffn key, value; the head: int8 (quant.DEFAULT_HEAD)
    head = optimize(random_model(CFG, seed=1), "q4", head="q4").head
    assert isinstance(getattr(head, "inner", head), Q4Linear)
    with pytest.raises(Exception, match="already q4"):
        quantize_(q4_model, "int8")


def test_q4_model_decodes_like_its_prefill(kernel, q4_model) -> None:
    """Token-by-token decoding (fused blocks, gemv_q4) against one prefill call (bf16 products of the
    dequantized weights) of the same model: the two differ by the bf16 rounding of weights, activations
    and outputs in prefill and the int8 activations in decoding (observed 1.1e-2 relative RMS on this
    random model, whose logits are sums of many equal random terms)."""
    tokens = torch.randint(0, CFG.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        prefill, _ = q4_model(tokens)
        state, steps = None, []
        for t in range(tokens.shape[1]):
            out, state = q4_model(tokens[:, t : t + 1], state)
            steps.append(out)
    steps = torch.cat(steps, dim=1)
    assert ((steps - prefill).norm() / prefill.norm()).item() <= 3e-2


def test_weights_in_huge_pages_change_nothing_but_addresses() -> None:
    """place_weights_ (called by optimize for models >= 64 MB) on a small model: same outputs, every
    tensor but the embedding in one mapping, parameters still the same objects."""
    from rwkvkit.inference.pages import place_weights_

    model = optimize(random_model(CFG, seed=1), "q4", kernels=False)
    tokens = torch.randint(0, CFG.vocab_size, (2, 5), generator=torch.Generator().manual_seed(0))
    params = dict(model.named_parameters())
    with torch.inference_mode():
        before, _ = model(tokens)
    if not place_weights_(model, min_bytes=0):
        pytest.skip("no anonymous mappings with MADV_HUGEPAGE here")
    with torch.inference_mode():
        after, _ = model(tokens)
    assert torch.equal(before, after)
    assert all(p is params[n] for n, p in model.named_parameters())
    named = [*model.named_parameters(), *model.named_buffers()]
    ptrs = [t.data_ptr() for n, t in named if not n.startswith("emb")]
    assert max(ptrs) - min(ptrs) < 64 * 2**20 and model.emb.weight.data_ptr() not in ptrs
