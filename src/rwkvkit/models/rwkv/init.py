"""Random weights for tests, demos and benchmarks.

``random_init_`` fills every parameter with values in the ranges trained models have (decays
spread over their whole range, lerp coefficients in (0, 1), LayerNorm gains near 1), so that a
random checkpoint exercises every term of the math: parity tests on it are meaningful, unlike
tests on the official *training* initialisation, which zeroes several matrices. (The official
training initialisation arrives with the trainer.)
"""

from __future__ import annotations

from pathlib import Path

import torch

from rwkvkit.models.rwkv.config import RWKVConfig
from rwkvkit.models.rwkv.model import RWKV


@torch.no_grad()
def random_init_(model: RWKV, seed: int = 0) -> RWKV:
    """Fill ``model``'s parameters in place with seeded random values; returns the model."""
    g = torch.Generator().manual_seed(seed)

    def normal(t: torch.Tensor, std: float, mean: float = 0.0) -> None:
        t.copy_(torch.randn(t.shape, generator=g) * std + mean)

    def uniform(t: torch.Tensor, lo: float, hi: float) -> None:
        t.copy_(torch.rand(t.shape, generator=g) * (hi - lo) + lo)

    for name, p in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        parent = name.rsplit(".", 2)[-2] if name.count(".") >= 1 else ""
        if name == "emb.weight":
            normal(p, 1.0)
        elif parent.startswith("ln") or parent == "ln_x":
            normal(p, 0.1, 1.0 if leaf == "weight" else 0.0)
        elif leaf in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g"):
            uniform(p, 0.0, 1.0)
        elif leaf == "w0":
            uniform(p, -4.0, 4.0)  # decay exp(-e^-0.5 sigmoid(w0 + ...)) spans ~(0.55, 0.99)
        elif leaf in ("a0", "v0"):
            normal(p, 1.0)
        elif leaf in ("w1", "a1", "v1", "g1"):
            normal(p, p.shape[0] ** -0.5)
        elif leaf in ("w2", "a2", "v2", "g2"):
            normal(p, 0.5 * p.shape[0] ** -0.5)
        elif leaf == "k_k":
            uniform(p, 0.5, 1.0)
        elif leaf == "k_a":
            uniform(p, 0.8, 1.2)
        elif leaf == "r_k":
            normal(p, 0.1)
        elif leaf.startswith(("time_mix_", "time_maa_")) and p.dim() == 3 and p.shape[:2] == (1, 1):
            uniform(p, 0.0, 1.0)  # v4/v5 mix coefficients, v6 ddlerp biases
        elif leaf == "time_decay":
            if model.config.version == "4":
                uniform(p, -5.0, 3.0)  # w = -exp(.) from -0.007 (slow) to -20 (fast) per step
            else:
                uniform(p, -6.0, 1.0)  # decay exp(-exp(.)) from 0.9975 down to 0.066
        elif leaf == "time_first":
            if model.config.version == "4":
                uniform(p, -1.0, 1.0)  # added in the exponent
            else:
                normal(p, 0.5)  # v5 files that store log u
        elif leaf == "time_faaaa":
            normal(p, 0.5)
        elif leaf in ("time_maa_w1", "time_decay_w1"):
            normal(p, p.shape[0] ** -0.5)
        elif leaf == "time_maa_w2":
            normal(p, 0.5 * p.shape[1] ** -0.5)
        elif leaf == "time_decay_w2":
            normal(p, 0.5 * p.shape[0] ** -0.5)
        elif leaf == "weight" and p.dim() == 2:  # Linear (out, in)
            normal(p, p.shape[1] ** -0.5)
        else:
            raise AssertionError(f"random_init_: no rule for parameter {name}")
    return model


def random_model(config: RWKVConfig, seed: int = 0, dtype: torch.dtype = torch.float32) -> RWKV:
    """A randomly initialised model (see :func:`random_init_`)."""
    model = RWKV(config, dtype=torch.float32)
    random_init_(model, seed)
    return model.to(dtype).eval()


def random_checkpoint(
    config: RWKVConfig, path: str | Path, seed: int = 0, dtype: torch.dtype = torch.float32
) -> Path:
    """Write a random checkpoint in the official (BlinkDL) ``.pth`` format; returns the path."""
    from rwkvkit.formats.blinkdl import save_pth

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_pth(random_model(config, seed, dtype).state_dict(), path)
    return path
