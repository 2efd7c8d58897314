"""Sequential WKV recurrences in C++ for CPU prefill (forward only): RWKV-7, RWKV-5/6, RWKV-4.

The chunked PyTorch operators (:mod:`rwkvkit.ops`) spend most of their CPU time in many small tensor
ops. Run as a plain loop over time, one head's ``K x V`` fp32 state stays in L1 and a token costs a
few ``K x V`` multiply-adds; ``wkv_seq.cpp`` does that, vectorised over the value dimension (AVX-512,
AVX2 or plain C++, picked at run time) and parallel over (batch, head, value block) with torch's
thread pool. The functions here have the contracts of the ``naive`` references (same arguments,
same checks and errors, output in the input's dtype, state in fp32) and agree with them to fp32
rounding (different summation order: ~1e-6 relative).

The extension (``rwkvkit_wkv``, operators ``torch.ops.rwkvkit_wkv.*``) is compiled on first use like
:mod:`rwkvkit.inference.kernels.gemv`. The PyTorch operators are used instead (``step`` for one
token, ``chunk`` otherwise: the same choice as ``impl="auto"``) when the build fails (one logged
warning), when ``RWKVKIT_NO_KERNELS=1`` is set, when autograd needs gradients (the kernels have no
backward), for non-CPU tensors, and for fp64 inputs (kept on the PyTorch path, which computes in fp64).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import torch

from rwkvkit.inference.kernels._build import ENV_DISABLE, compile_extension, warn_build_failed
from rwkvkit.inference.kernels._build import disabled as _disabled
from rwkvkit.ops._layout import check_bthk, check_same_shape, check_state, no_autocast
from rwkvkit.ops.rwkv4 import wkv4_chunk, wkv4_step
from rwkvkit.ops.rwkv4.naive import check_wkv4
from rwkvkit.ops.rwkv6 import wkv6_chunk, wkv6_step
from rwkvkit.ops.rwkv6.naive import check_wkv6
from rwkvkit.ops.rwkv7 import wkv7_chunk, wkv7_step

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


def _use_kernel(*tensors: torch.Tensor | None) -> Any:
    """The loaded ops if these inputs can go to the kernel, else None (the PyTorch path)."""
    ts = [t for t in tensors if t is not None]
    if _disabled() or any(t.device.type != "cpu" or t.dtype == torch.float64 for t in ts):
        return None
    if torch.is_grad_enabled() and any(t.requires_grad for t in ts):
        return None
    return _load()


def _f32(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float32).contiguous()


def _check_v(op: str, r: torch.Tensor, v: torch.Tensor) -> None:
    if v.shape[:3] != r.shape[:3]:
        raise ValueError(
            f"{op}: `v` has shape {tuple(v.shape)}, expected [B, T, H, V] with B, T, H = {tuple(r.shape[:3])}"
        )


def _isa(isa: str) -> int:
    if isa not in ISAS:
        raise ValueError(f"unknown isa {isa!r}; choose one of {tuple(ISAS)}")
    return ISAS[isa]


@no_autocast
def wkv7_kernel(
    r: torch.Tensor,
    log_w: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    state: torch.Tensor | None = None,
    *,
    isa: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequential WKV-7 in C++; the contract of :func:`rwkvkit.ops.wkv7_naive`.

    ``(o [B, T, H, V] in r.dtype, state [B, H, K, V] fp32)``. ``isa`` forces an instruction set
    (tests; RuntimeError if the CPU lacks it). Falls back to ``wkv7_step`` / ``wkv7_chunk`` (see
    the module docstring).
    """
    op = "wkv7_kernel"
    for name, x in zip("r log_w k v a b".split(), (r, log_w, k, v, a, b)):
        check_bthk(op, name, x)
    check_same_shape(op, ("r", "log_w", "k", "a", "b"), (r, log_w, k, a, b))
    B, T, H, K = r.shape
    V = v.shape[-1]
    _check_v(op, r, v)
    check_state(op, state, B, H, K, V)
    code = _isa(isa)
    ops = _use_kernel(r, log_w, k, v, a, b, state)
    if ops is None:
        if T == 1:
            o, S = wkv7_step(*(x[:, 0] for x in (r, log_w, k, v, a, b)), state)
            return o.unsqueeze(1), S
        return wkv7_chunk(r, log_w, k, v, a, b, state)
    o, S = ops.wkv7(*(_f32(x) for x in (r, log_w, k, v, a, b)), None if state is None else _f32(state), code)
    return o.to(r.dtype), S


@no_autocast
def wkv6_kernel(
    r: torch.Tensor,
    log_w: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    u: torch.Tensor,
    state: torch.Tensor | None = None,
    *,
    isa: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequential WKV-6 (and WKV-5, with a broadcast decay) in C++; the contract of
    :func:`rwkvkit.ops.wkv6_naive`: ``(y [B, T, H, V] in r.dtype, state [B, H, K, V] fp32)``."""
    op = "wkv6_kernel"
    check_wkv6(op, r, log_w, k, v, u, state)
    B, T, H, K = r.shape
    _check_v(op, r, v)
    code = _isa(isa)
    ops = _use_kernel(r, log_w, k, v, u, state)
    if ops is None:
        if T == 1:
            y, S = wkv6_step(*(x[:, 0] for x in (r, log_w, k, v)), u, state)
            return y.unsqueeze(1), S
        return wkv6_chunk(r, log_w, k, v, u, state)
    y, S = ops.wkv6(*(_f32(x) for x in (r, log_w, k, v, u)), None if state is None else _f32(state), code)
    return y.to(r.dtype), S


def wkv5_kernel(
    r: torch.Tensor,
    log_w: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    u: torch.Tensor,
    state: torch.Tensor | None = None,
    *,
    isa: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """WKV-5 in C++: ``log_w`` and ``u`` are ``[H, K]`` or ``[H, 1]``, broadcast as in
    :func:`rwkvkit.ops.wkv5`, then :func:`wkv6_kernel`."""
    check_bthk("wkv5_kernel", "r", r)
    B, T, H, K = r.shape
    for name, x in (("log_w", log_w), ("u", u)):
        if x.dim() != 2 or x.shape[0] != H or x.shape[1] not in (1, K):
            msg = f"`{name}` must be [H, K] = {(H, K)} or [H, 1], got {tuple(x.shape)}"
            raise ValueError(f"wkv5_kernel: {msg}")
    log_w = log_w.expand(H, K).expand(B, T, H, K)
    return wkv6_kernel(r, log_w, k, v, u.expand(H, K), state, isa=isa)


@no_autocast
def wkv4_kernel(
    w: torch.Tensor,
    u: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    state: torch.Tensor | None = None,
    *,
    isa: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequential WKV-4 (max-tracking form) in C++; the contract of :func:`rwkvkit.ops.wkv4_naive`:
    ``w, u`` with ``C`` elements, ``k, v [B, T, C]``, state ``[B, 3, C]`` = ``(aa, bb, pp)``;
    returns ``(wkv [B, T, C] in v.dtype, state [B, 3, C] fp32)``."""
    op = "wkv4_kernel"
    check_wkv4(op, w, u, k, v, state)
    B, T, C = k.shape
    code = _isa(isa)
    ops = _use_kernel(w, u, k, v, state)
    if ops is None:
        if T == 1:
            y, S = wkv4_step(w, u, k[:, 0], v[:, 0], state)
            return y.unsqueeze(1), S
        return wkv4_chunk(w, u, k, v, state)
    y, S = ops.wkv4(
        _f32(w.reshape(C)), _f32(u.reshape(C)), _f32(k), _f32(v), None if state is None else _f32(state), code
    )
    return y.to(v.dtype), S


__all__ = [
    "wkv7_kernel", "wkv6_kernel", "wkv5_kernel", "wkv4_kernel",
    "available", "kernel_isa", "ENV_DISABLE", "ISAS",
]  # fmt: skip
