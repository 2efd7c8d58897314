"""Sequential WKV recurrences in C++ for CPU prefill (forward only): RWKV-7, RWKV-5/6, RWKV-4.

This module builds and loads the extension; the operators that call it are each version's
``kernel`` tier (:mod:`rwkvkit.ops.rwkv7.kernel`, :mod:`rwkvkit.ops.rwkv6.kernel`,
:mod:`rwkvkit.ops.rwkv4.kernel`).

The chunked PyTorch operators (:mod:`rwkvkit.ops`) spend most of their CPU time in many small tensor
ops. Run as a plain loop over time, one head's ``K x V`` fp32 state stays in L1 and a token costs a
few ``K x V`` multiply-adds; ``wkv_seq.cpp`` does that, vectorised over the value dimension (AVX-512,
AVX2 or plain C++, picked at run time) and parallel over (batch, head, value block) with torch's
thread pool. The ``kernel`` operators have the contracts of the ``naive`` references (same arguments,
same checks and errors, output in the input's dtype, state in fp32) and agree with them to fp32
rounding (different summation order: ~1e-6 relative).

The extension (``rwkvkit_wkv``, operators ``torch.ops.rwkvkit_wkv.*``) is compiled on first use by
:mod:`rwkvkit.ops.cpu.build`, like :mod:`rwkvkit.inference.kernels.gemv`. The PyTorch operators are
used instead (``step`` for one token, ``chunk`` otherwise: the same choice as ``impl="auto"``) when
the build fails (one logged warning), when ``RWKVKIT_NO_KERNELS=1`` is set, when autograd needs
gradients (the kernels have no backward), for non-CPU tensors, and for fp64 inputs (kept on the
PyTorch path, which computes in fp64).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import torch

from rwkvkit.ops.cpu.build import ENV_DISABLE, compile_extension, warn_build_failed
from rwkvkit.ops.cpu.build import disabled as _disabled

log = logging.getLogger(__name__)

ISAS = {"auto": 0, "c++": 1, "avx2": 2, "avx512": 3}  # the operators' ``isa`` argument

_SOURCE = Path(__file__).with_name("wkv_seq.cpp")
_EXT_NAME = "rwkvkit_wkv"

_lock = threading.Lock()
_ops: Any = None  # torch.ops.rwkvkit_wkv once loaded
_failed = False  # a build failed: not retried in this process (one warning)
build_seconds: float | None = None


def _build() -> Any:
    global build_seconds
    build_seconds = compile_extension(_EXT_NAME, [_SOURCE])
    log.debug("rwkvkit wkv kernels loaded in %.1f s", build_seconds)
    return torch.ops.rwkvkit_wkv


def _load() -> Any:
    """``torch.ops.rwkvkit_wkv``, built on the first call (once per process); None if the build failed."""
    global _ops, _failed
    if _ops is not None or _failed:
        return _ops
    with _lock:
        if _ops is None and not _failed:
            try:
                _ops = _build()
            except Exception as e:  # no compiler / ninja, other platform: fall back, say why once
                _failed = True
                warn_build_failed(
                    log, "WKV C++ kernels", "the PyTorch operators (same results, slower prefill)", e
                )
    return _ops


def available() -> bool:
    """Whether the kernels run (builds them on the first call; False if disabled or the build failed)."""
    return not _disabled() and _load() is not None


def kernel_isa() -> str | None:
    """The instruction set the kernels use on this CPU (``"avx512"``, ``"avx2"``, ``"c++"``), or None."""
    if not available():
        return None
    code = torch.ops.rwkvkit_wkv.selected_isa()
    return {v: k for k, v in ISAS.items()}[code]


def ops_for(*tensors: torch.Tensor | None) -> Any:
    """The loaded operators if these inputs can go to the kernel, else None (take the PyTorch path)."""
    ts = [t for t in tensors if t is not None]
    if _disabled() or any(t.device.type != "cpu" or t.dtype == torch.float64 for t in ts):
        return None
    if torch.is_grad_enabled() and any(t.requires_grad for t in ts):
        return None
    return _load()


def f32(x: torch.Tensor) -> torch.Tensor:
    """What the operators take: fp32, contiguous."""
    return x.to(torch.float32).contiguous()


def isa_code(isa: str) -> int:
    """The operators' ``isa`` argument for a name of :data:`ISAS` (ValueError for another name)."""
    if isa not in ISAS:
        raise ValueError(f"unknown isa {isa!r}; choose one of {tuple(ISAS)}")
    return ISAS[isa]


__all__ = ["available", "kernel_isa", "ops_for", "f32", "isa_code", "ENV_DISABLE", "ISAS"]
