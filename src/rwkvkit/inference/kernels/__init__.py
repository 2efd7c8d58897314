"""CPU kernels for decoding, compiled on first use (with a PyTorch fallback): see :mod:`.gemv`."""

from __future__ import annotations

from rwkvkit.inference.kernels.gemv import (
    ENV_DISABLE,
    WEIGHT_DTYPES,
    available,
    gemv,
    gemv_reference,
    kernel_isa,
)

__all__ = ["gemv", "gemv_reference", "available", "kernel_isa", "ENV_DISABLE", "WEIGHT_DTYPES"]
