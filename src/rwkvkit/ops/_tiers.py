"""The tiers of a sequence operator and the one rule that picks one (the ``impl=`` argument).

Every WKV operator (:func:`rwkvkit.ops.wkv4`, ``wkv5``, ``wkv6``, ``wkv7``) has the same tiers, each a
function with the dispatcher's positional arguments (sequence layout in and out):

* ``naive``: the spec's recurrence, the reference;
* ``chunk``: the parallel form (training, prefill); the only tier that takes the dispatcher's
  keyword options (``chunk_size``, ...);
* ``step``: one token (decoding); given ``T != 1`` it raises (see :func:`require_one_token`);
* ``kernel``: the sequential C++ recurrence of :mod:`rwkvkit.ops.cpu` (CPU, forward only), which falls
  back to ``step`` / ``chunk`` by itself where it cannot run;
* ``triton``: Triton kernels for CUDA tensors, forward and backward (WKV-5/6 and WKV-7 so far; the
  other operators answer ``impl="triton"`` with a ValueError that says so).

``impl="auto"`` is ``triton`` for CUDA tensors when the operator has that tier and Triton is
installed; otherwise ``step`` for one token (no chunk set-up to pay) and ``chunk`` for more; it never
picks ``kernel``. This module imports nothing of rwkvkit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

IMPLS = ("auto", "naive", "chunk", "step", "kernel", "triton")


def resolve_impl(op: str, impl: str, T: int, gpu_tier: bool = False) -> str:
    """The tier ``impl`` names for a sequence of ``T`` tokens (``"auto"`` resolved); ValueError for
    a name that is not in :data:`IMPLS`. ``gpu_tier``: the inputs are CUDA tensors and the operator's
    ``triton`` tier can run (``"auto"`` then picks it)."""
    if impl not in IMPLS:
        raise ValueError(f"{op}: unknown impl {impl!r}; choose one of {IMPLS}")
    if impl == "auto":
        if gpu_tier:
            return "triton"
        return "step" if T == 1 else "chunk"
    return impl


def require_one_token(op: str, T: int, what: str) -> None:
    """The ``step`` tier's check: ``what`` (e.g. ``"input of shape (2, 5, 4, 64)"``) must hold one token."""
    if T != 1:
        raise ValueError(f"{op}: impl='step' takes one token (T == 1), got {what}")


@dataclass(frozen=True)
class Tiers:
    """One operator's tier table: ``tiers(impl, T, *args, **chunk_options)`` runs the chosen tier.

    ``triton`` (optional): the GPU tier, with ``triton_ready()`` saying whether it can run (Triton
    installed); it takes the chunk options too (each keeps the ones it uses)."""

    op: str
    naive: Callable[..., Any]
    chunk: Callable[..., Any]
    step: Callable[..., Any]
    kernel: Callable[..., Any]
    triton: Callable[..., Any] | None = None
    triton_ready: Callable[[], bool] = lambda: False

    def __call__(self, impl: str, T: int, *args: Any, **chunk_options: Any) -> Any:
        on_gpu = self.triton is not None and getattr(args[0], "is_cuda", False) and self.triton_ready()
        tier = resolve_impl(self.op, impl, T, gpu_tier=on_gpu)
        if tier == "chunk":
            return self.chunk(*args, **chunk_options)
        if tier == "triton":
            if self.triton is None:
                raise ValueError(
                    f"{self.op}: impl='triton' is not written for this operator yet (WKV-5/6 and WKV-7 have "
                    "it); choose 'chunk' (GPU and CPU) or 'auto'"
                )
            return self.triton(*args, **chunk_options)
        return getattr(self, tier)(*args)
