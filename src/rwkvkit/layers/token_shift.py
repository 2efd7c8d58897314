"""Token shift: each position sees the previous position's input (the state carries it across calls)."""

from __future__ import annotations

import torch


def token_shift(x: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
    """``[B, T, C]`` -> the sequence shifted right by one, ``prev [B, C]`` in front.

    Equals the training code's ``ZeroPad2d((0, 0, 1, -1))`` when ``prev`` is zero.
    """
    if x.shape[1] == 1:
        return prev.to(x.dtype).unsqueeze(1)
    return torch.cat([prev.to(x.dtype).unsqueeze(1), x[:, :-1]], dim=1)


def acc_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype recurrences accumulate in: fp32, or fp64 when the model runs in fp64."""
    return torch.promote_types(x.dtype, torch.float32)
