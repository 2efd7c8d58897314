"""What the Triton tiers (:mod:`rwkvkit.ops.rwkv7.triton_tier`, :mod:`rwkvkit.ops.rwkv6.triton_tier`)
share: whether Triton is there, whether its interpreter is on, block-size arithmetic, and the device
check. Imports neither Triton nor anything of rwkvkit (the kernels' modules are imported by each tier
on first use: Triton decides interpreter-or-GPU when a kernel is decorated)."""

from __future__ import annotations

import functools
import importlib.util
import math
import os

import torch


@functools.cache
def triton_available() -> bool:
    """Whether the ``triton`` package can be imported (without importing it)."""
    return importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    """Whether Triton's interpreter is on (``TRITON_INTERPRET=1``): kernels then run on CPU tensors."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def pow2(n: int) -> int:
    """The smallest power of two ``>= n`` (1 for ``n <= 1``): Triton's block sizes."""
    return 1 << max(0, math.ceil(math.log2(max(n, 1))))


def cdiv(n: int, d: int) -> int:
    return -(-n // d)


# A forward's programs run side by side, each a sequential loop over T; fewer than about two per
# streaming multiprocessor (an H100/H200 has 132) leave the GPU idle. Narrower column blocks give
# more programs, each with a shorter step: the prefill of one sequence (B1 H12) gets 96, not 24.
MIN_PROGRAMS = 256
MIN_BV = 8


def column_block(B: int, H: int, V: int, widest: int) -> int:
    """Value columns per program of a forward: ``widest`` (a power of two), halved down to
    :data:`MIN_BV` while the grid ``cdiv(V, BV) * B * H`` has fewer than :data:`MIN_PROGRAMS`."""
    bv = min(pow2(V), widest)
    while bv > MIN_BV and cdiv(V, bv) * B * H < MIN_PROGRAMS:
        bv //= 2
    return bv


def needs_grad(*tensors: torch.Tensor | None) -> bool:
    """Whether autograd will want gradients of any of ``tensors`` (None skipped): the tiers then
    store what their backward needs; otherwise they run the forward alone."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def empty_sequence(r: torch.Tensor, v: torch.Tensor, state: torch.Tensor | None):
    """The result for ``T == 0``: no output, the state as it was (fp32; zeros when None)."""
    B, _, H, K = r.shape
    V = v.shape[-1]
    S = torch.zeros(B, H, K, V, dtype=torch.float32, device=r.device) if state is None else state.float()
    return r.new_zeros(B, 0, H, V), S


def check_device(op: str, tensors: tuple[torch.Tensor | None, ...]) -> None:
    """ValueError unless the tensors (None skipped) share one device the tier can run on (CUDA, or any
    with the interpreter on) and Triton is installed."""
    devices = {x.device for x in tensors if x is not None}
    if len(devices) > 1:
        raise ValueError(f"{op}: all inputs must be on one device, got {sorted(map(str, devices))}")
    (device,) = devices
    if device.type != "cuda" and not interpreting():
        raise ValueError(
            f"{op}: impl='triton' runs on CUDA tensors (got {device.type}); on a CPU use impl='chunk' "
            "or 'kernel' (or set TRITON_INTERPRET=1 before the first call to run Triton's interpreter)"
        )
    if not triton_available():
        raise ValueError(f"{op}: impl='triton' needs the triton package: pip install triton")
