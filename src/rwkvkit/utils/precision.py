"""Mixed precision for every trainer: one definition of what ``precision = "bf16"`` means."""

from __future__ import annotations

import torch

from rwkvkit.errors import ConfigError

PRECISIONS = ("bf16", "fp32")


def autocast(precision: str, device: torch.device | str) -> torch.autocast:
    """The autocast context of a training or evaluation forward: bf16 matrix products with fp32
    master weights for ``"bf16"``, plain fp32 (autocast off) for ``"fp32"``."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be bf16 or fp32, got {precision!r}")
    dev = torch.device(device).type
    return torch.autocast(dev, dtype=torch.bfloat16, enabled=precision == "bf16")
