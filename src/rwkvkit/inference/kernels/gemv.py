"""Matrix-vector products for CPU decoding: ``y = (x @ W^T) * scale`` at memory bandwidth.

Decoding one token reads every weight once, so a small-``M`` product is bound by how fast ``W``
streams from memory. PyTorch's CPU kernels reach 7-20 GB/s there; the C++ kernel in ``gemv.cpp``
(AVX-512 or AVX2, both cores through torch's OpenMP pool, software prefetch) reads fp32, bf16 and
int8 weights close to the machine's read bandwidth. It accumulates in fp32 after widening the
weights exactly, so it differs from :func:`gemv_reference` only by the order of the additions
(~1e-6 relative to ``|x| @ |W|^T``).

Quantized weights have kernels with int8 activations (``qgemv.cpp``): :func:`gemv_q4` for 4-bit
weights (:class:`~rwkvkit.inference.quant.Q4Linear`'s packed GGUF Q4_0 values) and :func:`gemv_int8`
for int8 ones. Both quantize ``x`` per block of 32 values (:func:`quantize_activations`) and sum
integer products (AVX-512 VNNI, AVX-512BW, AVX2 or plain C++), which is what keeps them at memory
speed; they differ from the exact product by the rounding of ``x`` (bounds in their docstrings).
:class:`DecodeLinear` sends decoding products of every weight format to the right kernel.

The extension is compiled on first use with :func:`torch.utils.cpp_extension.load` (``-O3
-fopenmp``; the SIMD paths are picked at run time, so the cached build also suits another CPU),
into torch's per-user extension cache (``~/.cache/torch_extensions``, or ``$TORCH_EXTENSIONS_DIR``).
It needs a C++ compiler and ``ninja``. When the build fails, or ``RWKVKIT_NO_KERNELS=1`` is set,
:func:`gemv` computes :func:`gemv_reference` instead (one logged warning for a failed build).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from rwkvkit.inference.quant import Q4_BLOCK, Int8Linear, Q4Linear, _q4_dequant
from rwkvkit.ops.cpu.build import ENV_DISABLE, compile_extension, warn_build_failed
from rwkvkit.ops.cpu.build import disabled as _disabled
from rwkvkit.ops.cpu.build import ninja_on_path as _ninja_on_path  # noqa: F401  (tests use it)

__all__ = [
    "ENV_DISABLE", "WEIGHT_DTYPES", "MAX_GEMV_ROWS", "available", "gemv", "gemv_reference", "kernel_isa",
    "gemv_q4", "gemv_q4_reference", "gemv_int8", "quantize_activations", "q4_dequant", "DecodeLinear",
]  # fmt: skip

log = logging.getLogger(__name__)

WEIGHT_DTYPES = (torch.float32, torch.bfloat16, torch.int8)
MAX_GEMV_ROWS = 16  # up to this many rows (tokens x batch) a DecodeLinear product is a gemv call
ISAS = {"auto": 0, "c++": 1, "avx2": 2, "avx512": 3}  # the kernel's ``isa`` argument
# the ``isa`` of the kernels with int8 activations (gemv_q4, gemv_int8): also AVX-512 with VNNI
# (``"avx512"`` forces VNNI off, for tests)
QISAS = {**ISAS, "avx512vnni": 4}

_SOURCE = Path(__file__).with_name("gemv.cpp")
# Every source of the extension: gemv.cpp plus the RWKV-7 decoding operators (rwkv7_decode.cpp, which
# uses gemv's panel kernels through gemv.h). One library, torch.ops.rwkvkit_kernels.*.
_SOURCES = [_SOURCE, Path(__file__).with_name("qgemv.cpp"), Path(__file__).with_name("rwkv7_decode.cpp")]
# not compiled on their own; part of the rebuild key (extra_cflags)
_HEADERS = [Path(__file__).with_name("gemv.h"), Path(__file__).with_name("qgemv_avx512.inc")]
_EXT_NAME = "rwkvkit_gemv"  # torch rebuilds when the source or the flags change, whatever the name

_lock = threading.Lock()
_op: Callable[..., torch.Tensor] | None = None  # torch.ops.rwkvkit_kernels.gemv once loaded
_failed = False  # a build failed: never retried in this process (one warning, not one per call)
build_seconds: float | None = None  # how long loading (building, on a cold cache) took


def gemv_reference(x: torch.Tensor, W: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
    """The specification: ``F.linear(x, W.float()) * scale`` (``scale`` optional), in fp32.

    Widening bf16/int8 weights to fp32 is exact, so this is the exact product up to PyTorch's own
    summation order. It materialises an fp32 copy of ``W`` (for bf16/int8 weights) on every call.
    """
    y = F.linear(x, W.float())
    return y * scale if scale is not None else y


def _build() -> Callable[..., torch.Tensor]:
    """Compile (or load from the cache) the extension and return its operator."""
    global build_seconds
    build_seconds = compile_extension(_EXT_NAME, _SOURCES, _HEADERS)
    log.debug("rwkvkit gemv kernel loaded in %.1f s", build_seconds)
    return torch.ops.rwkvkit_kernels.gemv


def _load() -> Callable[..., torch.Tensor] | None:
    """The kernel operator, built on the first call (once per process, thread-safe); None if it failed."""
    global _op, _failed
    if _op is not None or _failed:
        return _op
    with _lock:  # one thread builds; the others wait here, then see the result
        if _op is None and not _failed:
            try:
                _op = _build()
            except Exception as e:  # no compiler, no ninja, other CPU/OS: fall back, say why once
                _failed = True
                warn_build_failed(
                    log, "gemv C++ kernel", "the PyTorch reference (same results, slower decoding)", e
                )
    return _op


def available() -> bool:
    """Whether :func:`gemv` runs the C++ kernel (builds it on the first call; False if disabled)."""
    return not _disabled() and _load() is not None


def kernel_isa() -> str | None:
    """The instruction set the kernel uses on this CPU (``"avx512"``, ``"avx2"``, ``"c++"``), or None."""
    if not available():
        return None
    code = torch.ops.rwkvkit_kernels.selected_isa()
    return {v: k for k, v in ISAS.items()}[code]


def _check(x: torch.Tensor, W: torch.Tensor, scale: torch.Tensor | None) -> None:
    """Raise ValueError unless the arguments are what the kernel (and the reference) accept."""
    if not isinstance(x, torch.Tensor) or not isinstance(W, torch.Tensor):
        raise ValueError("gemv: x and W must be tensors")
    if x.dim() != 2 or W.dim() != 2:
        raise ValueError(f"gemv: x must be [M, K] and W [N, K], got {tuple(x.shape)} and {tuple(W.shape)}")
    if x.shape[1] != W.shape[1]:
        raise ValueError(f"gemv: K differs: x is {tuple(x.shape)}, W is {tuple(W.shape)}")
    if x.dtype != torch.float32:
        raise ValueError(f"gemv: x must be float32, got {x.dtype} (convert the activations with .float())")
    if W.dtype not in WEIGHT_DTYPES:
        raise ValueError(f"gemv: W must be float32, bfloat16 or int8, got {W.dtype}")
    if not W.is_contiguous():
        # copying W on every call would cost more than the product: the caller should store it so
        raise ValueError("gemv: W must be contiguous ([N, K] row-major); store W.contiguous() once")
    if W.dtype == torch.int8 and scale is None:
        raise ValueError("gemv: int8 weights need their per-row float32 scale [N]")
    if scale is not None:
        if not isinstance(scale, torch.Tensor) or scale.dtype != torch.float32 or scale.dim() != 1:
            raise ValueError("gemv: scale must be a 1-D float32 tensor [N]")
        if scale.shape[0] != W.shape[0]:
            raise ValueError(f"gemv: scale has {scale.shape[0]} entries, W has {W.shape[0]} rows")
    devices = {t.device.type for t in (x, W, scale) if t is not None}
    if devices != {"cpu"}:
        raise ValueError(f"gemv: CPU tensors only, got devices {sorted(devices)}")


def gemv(x: torch.Tensor, W: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
    """``y [M, N] = (x [M, K] @ W [N, K]^T) * scale [N]`` in float32, for small ``M`` (decoding).

    Args:
        x: float32 activations ``[M, K]``; any ``M`` works, the kernel is made for ``M <= 16`` (each
            weight is read from memory once for all ``M`` rows).
        W: contiguous weights ``[N, K]``: float32, bfloat16 or int8.
        scale: per-row float32 factors ``[N]``; required for int8 weights, optional otherwise.

    Runs the C++ kernel when it is available (:func:`available`), else :func:`gemv_reference`; also
    the reference when autograd must see the product (the kernel has no backward). The kernel uses
    ``torch.get_num_threads()`` threads. Raises ValueError on bad shapes, dtypes or devices.
    """
    _check(x, W, scale)
    if _disabled() or (torch.is_grad_enabled() and (x.requires_grad or W.requires_grad)):
        return gemv_reference(x, W, scale)
    op = _load()
    if op is None:
        return gemv_reference(x, W, scale)
    return op(x.contiguous(), W, None if scale is None else scale.contiguous(), 0)


def _gemv_isa(x: torch.Tensor, W: torch.Tensor, scale: torch.Tensor | None, isa: str) -> torch.Tensor:
    """The kernel with a forced instruction set (tests); RuntimeError if this CPU lacks it."""
    _check(x, W, scale)
    op = _load()
    if op is None:
        raise RuntimeError("gemv: the kernel is not available")
    return op(x.contiguous(), W, None if scale is None else scale.contiguous(), ISAS[isa])


# ---- 4-bit weights ------------------------------------------------------------------------------


def q4_dequant_reference(qweight: torch.Tensor, scales: torch.Tensor, row0: int, row1: int, in_features: int,
                         dtype: torch.dtype = torch.float32) -> torch.Tensor:  # fmt: skip
    """Rows ``[row0, row1)`` of a :class:`Q4Linear` weight, ``d * (code - 8)`` in fp32, then ``dtype``."""
    return _q4_dequant(qweight, scales, slice(row0, row1), in_features, dtype)


def gemv_q4_reference(
    x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, out_features: int
) -> torch.Tensor:
    """The specification of :func:`gemv_q4`: ``F.linear(x, W)`` with the fp32 dequantized weight."""
    return F.linear(x, q4_dequant_reference(qweight, scales, 0, out_features, x.shape[-1]))


def quantize_activations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What :func:`gemv_q4` multiplies instead of ``x [M, K]``: ``(xq [M, KB*32] int8, xd [M, KB])``.

    Per row and block of 32 inputs (the last one zero-padded): ``d = max|x| / 127``,
    ``xq = round_half_even(x * (1 / d))`` (0 where ``d == 0``), all in fp32, so ``x ~= xq * d``
    with an error of at most ``d / 2``. The kernel's rounding is this one bit for bit.
    """
    M, K = x.shape
    KB = -(-K // Q4_BLOCK)
    xb = F.pad(x.float(), (0, KB * Q4_BLOCK - K)).reshape(M, KB, Q4_BLOCK)
    d = xb.abs().amax(dim=-1) / 127.0
    inv = torch.where(d == 0, torch.zeros_like(d), 1.0 / d)
    xq = torch.round(xb * inv[..., None]).to(torch.int8)  # torch.round: half to even, as the CPU's
    return xq.reshape(M, KB * Q4_BLOCK), d


def _check_q4(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, out_features: int) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.dtype != torch.float32:
        raise ValueError(f"gemv_q4: x must be a float32 [M, K] tensor, got {getattr(x, 'shape', type(x))}")
    P, KB = -(-out_features // 16), -(-x.shape[1] // Q4_BLOCK)
    if qweight.dtype != torch.uint8 or tuple(qweight.shape) != (P, KB, 256) or not qweight.is_contiguous():
        raise ValueError(f"gemv_q4: qweight must be a contiguous uint8 [{P}, {KB}, 256] tensor (Q4Linear's), "
                         f"got {qweight.dtype} {tuple(qweight.shape)}")  # fmt: skip
    if scales.dtype != torch.int16 or tuple(scales.shape) != (P, KB, 16) or not scales.is_contiguous():
        raise ValueError(f"gemv_q4: scales must be a contiguous int16 [{P}, {KB}, 16] tensor, "
                         f"got {scales.dtype} {tuple(scales.shape)}")  # fmt: skip
    devices = {t.device.type for t in (x, qweight, scales)}
    if devices != {"cpu"}:
        raise ValueError(f"gemv_q4: CPU tensors only, got devices {sorted(devices)}")


def gemv_q4(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, out_features: int) -> torch.Tensor:
    """``y [M, N] = x [M, K] @ W^T`` in float32 for a :class:`Q4Linear` weight (``qweight``, ``scales``).

    The kernel multiplies :func:`quantize_activations` of ``x`` (int8 per block of 32) by the 4-bit
    codes in integer arithmetic (VNNI ``vpdpbusd`` where the CPU has it, ``vpmaddubsw`` otherwise),
    then scales and sums the blocks in fp32: against :func:`gemv_q4_reference` (the exact product)
    it differs by the rounding of ``x``, at most ``sum_k |w[n, k]| * d_x[block of k] / 2``. Without
    the kernel (not built, ``RWKVKIT_NO_KERNELS=1``, autograd) the reference itself runs.
    """
    _check_q4(x, qweight, scales, out_features)
    if _disabled() or (torch.is_grad_enabled() and x.requires_grad):
        return gemv_q4_reference(x, qweight, scales, out_features)
    if _load() is None:
        return gemv_q4_reference(x, qweight, scales, out_features)
    return torch.ops.rwkvkit_kernels.gemv_q4(x.contiguous(), qweight, scales, out_features, 0)


def gemv_int8(x: torch.Tensor, W: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``y [M, N] = (x [M, K] @ W^T) * scale`` for int8 ``W [N, K]``, with ``x`` quantized to int8.

    Like :func:`gemv_q4`: the kernel multiplies :func:`quantize_activations` of ``x`` by the int8
    weights in integer arithmetic (VNNI where the CPU has it), so it differs from the exact product
    (:func:`gemv_reference`, which runs where the kernel cannot) by the rounding of ``x``, at most
    ``sum_k |W[n, k]| * scale[n] * d_x[block of k] / 2``. 2-4x less arithmetic per weight than the
    exact :func:`gemv` (which widens every weight to fp32), which on AVX-512 CPUs is what bounds it.
    """
    _check(x, W, scale)
    if W.dtype != torch.int8 or scale is None:
        raise ValueError("gemv_int8: W must be int8 with its float32 scale")
    if _disabled() or (torch.is_grad_enabled() and x.requires_grad) or _load() is None:
        return gemv_reference(x, W, scale)
    return torch.ops.rwkvkit_kernels.gemv_int8(x.contiguous(), W, scale.contiguous(), 0)


def _gemv_q4_isa(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, out_features: int,
                 isa: str) -> torch.Tensor:  # fmt: skip
    """The q4 kernel with a forced instruction set (tests); RuntimeError if this CPU lacks it."""
    _check_q4(x, qweight, scales, out_features)
    if _load() is None:
        raise RuntimeError("gemv_q4: the kernel is not available")
    return torch.ops.rwkvkit_kernels.gemv_q4(x.contiguous(), qweight, scales, out_features, QISAS[isa])


def q4_dequant(
    qweight: torch.Tensor, scales: torch.Tensor, row0: int, row1: int, in_features: int
) -> torch.Tensor:
    """Rows ``[row0, row1)`` of a :class:`Q4Linear` weight as bfloat16 ``[row1 - row0, in]`` (prefill).

    The kernel (parallel, ~20x faster than the PyTorch unpacking) where available, else
    :func:`q4_dequant_reference`; the same bits either way (fp32 value rounded to nearest even).
    """
    if _disabled() or qweight.device.type != "cpu" or _load() is None:
        return q4_dequant_reference(qweight, scales, row0, row1, in_features, torch.bfloat16)
    return torch.ops.rwkvkit_kernels.q4_dequant(qweight, scales, row0, row1, in_features)


class DecodeLinear(nn.Module):
    """A linear layer whose small-batch products go to the matrix-vector kernels.

    Wraps an ``nn.Linear`` (fp32/bf16 weight: :func:`gemv`, exact), an ``Int8Linear``
    (:func:`gemv_int8`) or a ``Q4Linear`` (:func:`gemv_q4`), the last two with int8 activations;
    above ``MAX_GEMV_ROWS`` rows (prefill) it calls the wrapped module unchanged.
    """

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.q4 = isinstance(inner, Q4Linear)
        if self.q4:  # the packed codes; gemv_q4 takes the scales from the module each call
            self.weight_for_gemv, self.scale = inner.qweight, None
            self.in_features = inner.in_features
            return
        if isinstance(inner, Int8Linear):
            self.weight_for_gemv, self.scale = inner.weight_int8, inner.scale.float()
        else:
            self.weight_for_gemv, self.scale = inner.weight, None
        self.in_features = self.weight_for_gemv.shape[1]
        self.int8 = self.weight_for_gemv.dtype == torch.int8  # int8 activations: gemv_int8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // self.in_features
        if rows > MAX_GEMV_ROWS or x.requires_grad:
            return self.inner(x)
        if self.q4:
            if self.inner.bias is not None:
                return self.inner(x)
            y = gemv_q4(x.reshape(rows, self.in_features).float(), self.inner.qweight, self.inner.scales,
                        self.inner.out_features)  # fmt: skip
            return y.to(x.dtype).view(*x.shape[:-1], -1)
        product = gemv_int8 if self.int8 else gemv
        y = product(x.reshape(rows, self.in_features).float(), self.weight_for_gemv, self.scale)
        return y.to(x.dtype).view(*x.shape[:-1], -1)
