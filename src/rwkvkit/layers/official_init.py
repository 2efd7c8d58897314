"""Building blocks of the official training initialisation, shared by the RWKV mixes.

Each time mix and channel mix has an ``official_init(name, shape, ctx)`` method next to its
parameters: it returns the initial value of one of its own parameters (``name`` relative to the
mix, e.g. ``"time_decay"``), or None for the matrices and norms, which follow per-version rules
that :func:`rwkvkit.models.rwkv.init.official_init_` applies. The formulas and their sources are in
``docs/init.md``.

Numerics: the formulas are evaluated in fp64 and rounded once to the parameter's dtype; random
values are drawn on the CPU in fp32 from one seeded ``torch.Generator`` in parameter order, so a
seed gives the same weights on every device and for every dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

F64 = torch.float64


def layer_ratios(layer_id: int, n_layer: int) -> tuple[float, float]:
    """``(r01, r1a0)``: ``l / (L - 1)`` (0 to 1; 0 when L == 1) and ``1 - l / L`` (1 to ~0)."""
    r01 = layer_id / (n_layer - 1) if n_layer > 1 else 0.0
    return r01, 1.0 - layer_id / n_layer


def frac(num: torch.Tensor | float, den: float) -> torch.Tensor | float:
    """``num / den``, or 0 where the official code would divide by zero."""
    return num / den if den != 0 else num * 0.0


def orthogonal(rows: int, cols: int, gain: float, generator: torch.Generator) -> torch.Tensor:
    """A ``[rows, cols]`` fp32 matrix with orthonormal rows (wide) or columns (tall), times ``gain``.

    The construction of ``torch.nn.init.orthogonal_`` (QR of a Gaussian matrix, signs fixed by the
    diagonal of R so that the result is uniformly distributed), with an explicit generator.
    """
    if gain == 0:
        return torch.zeros(rows, cols)
    a = torch.randn(rows, cols, generator=generator, dtype=torch.float32)
    if rows < cols:
        a = a.T  # QR needs a tall matrix; transpose back below
    q, r = torch.linalg.qr(a)
    q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)
    if rows < cols:
        q = q.T
    return (gain * q).contiguous()


def symmetric_uniform(shape: tuple[int, ...], half_width: float, generator: torch.Generator) -> torch.Tensor:
    """``U(-half_width, half_width)`` drawn in fp32 from ``generator``."""
    return (torch.rand(shape, generator=generator) * 2 - 1) * half_width


@dataclass
class InitContext:
    """What a mix needs to compute its initial values: the model's sizes, the layer and the draws."""

    config: object  # an RWKVConfig (duck-typed: n_embd, dim_att, n_layer, n_head, head_size)
    layer: int
    generator: torch.Generator
    r01: float = field(init=False)
    r1a0: float = field(init=False)

    def __post_init__(self) -> None:
        self.r01, self.r1a0 = layer_ratios(self.layer, self.config.n_layer)

    @property
    def ddd(self) -> torch.Tensor:
        """``i / C`` over the C channels (fp64)."""
        return torch.arange(self.config.n_embd, dtype=F64) / self.config.n_embd

    def per_channel_decay(self) -> torch.Tensor:
        """v5.2 / v6 ``time_decay_n = -6 + 5 (n / (A - 1)) ** (0.7 + 1.3 r01)`` over the A channels."""
        A = self.config.dim_att
        return -6 + 5 * frac(torch.arange(A, dtype=F64), A - 1) ** (0.7 + 1.3 * self.r01)

    def per_channel_bonus(self) -> torch.Tensor:
        """v5.2 / v6 bonus ``u_n = r01 (1 - n / (A - 1)) + 0.1 ((n + 1) % 3 - 1)``."""
        A = self.config.dim_att
        n = torch.arange(A, dtype=F64)
        return self.r01 * (1 - frac(n, A - 1)) + 0.1 * (((n + 1) % 3) - 1)

    def lerp_current(self) -> dict[str, torch.Tensor]:
        """v4 / v5 ``time_mix_*`` coefficients (they weight the current token)."""
        ddd, r01, r1a0 = self.ddd, self.r01, self.r1a0
        return {
            "time_mix_k": ddd**r1a0,
            "time_mix_v": ddd**r1a0 + 0.3 * r01,
            "time_mix_r": ddd ** (0.5 * r1a0),
            "time_mix_g": ddd ** (0.5 * r1a0),
        }


def matrix_gain_v4(key: str, out_f: int, in_f: int) -> float:
    """RWKV-4 (v4neo): r, k, output and the ffn value / receptance zero; the rest ``sqrt(out/in)``."""
    if key in ("att.key", "att.receptance", "att.output", "ffn.value", "ffn.receptance"):
        return 0.0
    return math.sqrt(out_f / in_f) if out_f > in_f else 1.0


def matrix_gain_v5(key: str, out_f: int, in_f: int) -> float:
    """RWKV-5.x to 7: gain 1, 0.1 for ``att.key`` / ``att.gate``, 0 for the output projections."""
    if key in ("att.output", "ffn.value", "ffn.receptance"):
        return 0.0
    return 0.1 if key in ("att.key", "att.gate") else 1.0
