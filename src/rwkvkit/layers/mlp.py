"""The gated feed-forward of Llama-family transformers (SwiGLU), shared by BASED and ARWKV.

``down_proj(silu(gate_proj(x)) * up_proj(x))``, no biases; the names are those of transformers'
Qwen2 / Llama MLPs, so a teacher's MLP state dict loads as it is.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class SwiGLU(nn.Module):
    def __init__(self, dim: int, inner: int, device=None, dtype=None) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.gate_proj = nn.Linear(dim, inner, bias=False, **dd)
        self.up_proj = nn.Linear(dim, inner, bias=False, **dd)
        self.down_proj = nn.Linear(inner, dim, bias=False, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
