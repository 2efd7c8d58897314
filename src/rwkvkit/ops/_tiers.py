"""The tiers of a sequence operator and the one rule that picks one (the ``impl=`` argument).

Every WKV operator (:func:`rwkvkit.ops.wkv4`, ``wkv5``, ``wkv6``, ``wkv7``) has the same tiers, each a
function with the dispatcher's positional arguments (sequence layout in and out):

* ``naive``: the spec's recurrence, the reference;
* ``chunk``: the parallel form (training, prefill); the only tier that takes the dispatcher's
  keyword options (``chunk_size``, ...);
* ``step``: one token (decoding); given ``T != 1`` it raises (see :func:`require_one_token`);
* ``kernel``: the sequential C++ recurrence of :mod:`rwkvkit.ops.cpu` (CPU, forward only), which falls
  back to ``step`` / ``chunk`` by itself where it cannot run.

``impl="auto"`` is ``step`` for one token (no chunk set-up to pay) and ``chunk`` otherwise; it never
picks ``kernel``. This module imports nothing of rwkvkit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

IMPLS = ("auto", "naive", "chunk", "step", "kernel")


def resolve_impl(op: str, impl: str, T: int) -> str:
    """The tier ``impl`` names for a sequence of ``T`` tokens (``"auto"`` resolved); ValueError for
    a name that is not in :data:`IMPLS`."""
    if impl not in IMPLS:
        raise ValueError(f"{op}: unknown impl {impl!r}; choose one of {IMPLS}")
    if impl == "auto":
        return "step" if T == 1 else "chunk"
    return impl


def require_one_token(op: str, T: int, what: str) -> None:
    """The ``step`` tier's check: ``what`` (e.g. ``"input of shape (2, 5, 4, 64)"``) must hold one token."""
    if T != 1:
        raise ValueError(f"{op}: impl='step' takes one token (T == 1), got {what}")


@dataclass(frozen=True)
class Tiers:
    """One operator's tier table: ``tiers(impl, T, *args, **chunk_options)`` runs the chosen tier."""

    op: str
    naive: Callable[..., Any]
    chunk: Callable[..., Any]
    step: Callable[..., Any]
    kernel: Callable[..., Any]

    def __call__(self, impl: str, T: int, *args: Any, **chunk_options: Any) -> Any:
        tier = resolve_impl(self.op, impl, T)
        if tier == "chunk":
            return self.chunk(*args, **chunk_options)
        return getattr(self, tier)(*args)
