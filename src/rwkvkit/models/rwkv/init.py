"""Initial weights of an RWKV model: the official training initialisation, and random weights for tests.

:func:`official_init_` gives every parameter the value the official trainer (BlinkDL/RWKV-LM) gives it
when training from scratch (the formulas and their sources: ``docs/init.md``). The per-parameter
formulas of the time and channel mixes live beside their parameters (``official_init`` of each mix in
:mod:`rwkvkit.layers`); this module walks a model in parameter order and adds the rules that are the
same for every mix: embeddings, the head, LayerNorms, ``ln_x`` and the orthogonal matrices, whose
gains the version spec gives (:attr:`rwkvkit.models.rwkv.versions.VersionSpec.matrix_gain`).

``random_init_`` fills every parameter with values in the ranges trained models have (decays
spread over their whole range, lerp coefficients in (0, 1), LayerNorm gains near 1), so that a
random checkpoint exercises every term of the math: parity tests on it are meaningful, unlike
tests on the official *training* initialisation, which zeroes several matrices.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn as nn

from rwkvkit.layers.official_init import F64, InitContext, layer_ratios, orthogonal, symmetric_uniform
from rwkvkit.layers.rwkv4 import RWKV4TimeMix
from rwkvkit.models.rwkv.config import RWKVConfig
from rwkvkit.models.rwkv.model import RWKV

__all__ = [
    "EMB_RANGE", "official_init_", "official_init_blocks_", "official_init_time_mixes_",
    "layer_ratios", "orthogonal", "random_init_", "random_model", "random_checkpoint",
]  # fmt: skip

# The official emb init half-width of v5-v7 (v4neo used its lr_init instead: see ``emb_range``).
EMB_RANGE = 1e-4


def _generator(seed: int | None) -> torch.Generator:
    """A CPU generator seeded with ``seed``, or with a seed drawn from torch's global generator."""
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,)).item())
    return torch.Generator().manual_seed(seed)


def _initial_value(
    name: str, shape: tuple[int, ...], root: nn.Module, config, g: torch.Generator, emb_range: float
) -> torch.Tensor:
    """The official initial value of parameter ``name`` of ``root`` (a model or a ModuleList named
    ``blocks``): fp32 or fp64 on the CPU."""
    module, _, leaf = name.rpartition(".")
    if name == "emb.weight":
        return symmetric_uniform(shape, emb_range, g)
    if name == "head.weight":
        V, C = shape
        # v5+: 0.5 sqrt(V/C) if V > C else 0.5; v4neo: scale 0.5 times its sqrt(out/in) gain: the same
        return orthogonal(V, C, 0.5 * math.sqrt(V / C) if V > C else 0.5, g)
    if isinstance(root.get_submodule(module), nn.LayerNorm):  # ln0, ln1, ln2, ln_out: PyTorch's 1, 0
        return torch.ones(shape) if leaf == "weight" else torch.zeros(shape)
    parts = name.split(".")
    if parts[0] != "blocks" or len(parts) < 4:
        raise NotImplementedError(f"official_init_: no rule for parameter {name}")
    layer, sub, rest = int(parts[1]), parts[2], ".".join(parts[3:])  # sub: "att" or "ffn"
    out = _mix_value(root.get_submodule(f"blocks.{layer}.{sub}"), sub, rest, shape, config, layer, g)
    if out is None:
        raise NotImplementedError(f"official_init_: no rule for parameter {name} (RWKV-{config.version})")
    return out


def _mix_value(mix, sub: str, rest: str, shape, config, layer: int, g) -> torch.Tensor | None:
    """The initial value of parameter ``rest`` of a time mix (``sub == "att"``) or channel mix."""
    if rest == "ln_x.weight":
        return torch.full(shape, ((1 + layer) / config.n_layer) ** 0.7, dtype=F64)
    if rest == "ln_x.bias":
        return torch.zeros(shape)
    if rest.endswith(".weight") and len(shape) == 2:  # the linears: (out, in)
        out_f, in_f = shape
        return orthogonal(
            out_f, in_f, config.spec.matrix_gain(f"{sub}.{rest[: -len('.weight')]}", out_f, in_f), g
        )
    out = mix.official_init(rest, shape, InitContext(config, layer, g))
    return None if out is None else out.reshape(shape)


@torch.no_grad()
def official_init_(model: RWKV, seed: int | None = None, *, emb_range: float | None = None) -> RWKV:
    """Give every parameter of ``model`` its official training initialisation, in place.

    Args:
        model: an :class:`rwkvkit.models.rwkv.model.RWKV` of any version, dtype and device.
        seed: seeds the random draws (emb, orthogonal matrices, the v6 LoRA up-projections);
            None draws a seed from torch's global generator (reproducible under ``torch.manual_seed``).
        emb_range: half-width of the uniform init of ``emb.weight``; None means 1e-4, the v5-v7
            constant. The RWKV-4 trainer (v4neo) used its learning rate ``lr_init`` here.

    Returns:
        ``model`` (for chaining).

    Call it on the plain model, before wrapping it for parallel training (FSDP shards the tensors).
    Random values are drawn on the CPU in fp32 from one generator in parameter order, so a seed gives
    the same weights on every device and for every dtype (up to the final rounding).
    """
    if not isinstance(model, RWKV):
        raise TypeError(f"official_init_ needs an rwkvkit RWKV model, got {type(model).__name__}")
    g = _generator(seed)
    emb_range = EMB_RANGE if emb_range is None else float(emb_range)
    for name, p in model.named_parameters():
        value = _initial_value(name, tuple(p.shape), model, model.config, g, emb_range)
        p.copy_(value.to(device=p.device, dtype=p.dtype))
    return model


@torch.no_grad()
def official_init_blocks_(blocks: nn.ModuleList, config, seed: int | None = None) -> nn.ModuleList:
    """The official initialisation of a stack of RWKV blocks used outside a language model.

    ``blocks`` is an ``nn.ModuleList`` of :class:`rwkvkit.models.rwkv.model.Block` built from
    ``config`` (an :class:`~rwkvkit.models.rwkv.config.RWKVConfig`); every parameter gets the value
    :func:`official_init_` gives ``blocks.N...`` of a language model with that config (the
    embedding and head, which such stacks do not have, are skipped). Used by the time-series
    forecaster :class:`rwkvkit.timeseries.Rimer`.
    """
    g = _generator(seed)
    root = nn.Module()
    root.blocks = blocks  # names "blocks.N...", as in a language model
    for name, p in blocks.named_parameters(prefix="blocks"):
        p.copy_(
            _initial_value(name, tuple(p.shape), root, config, g, EMB_RANGE).to(
                device=p.device, dtype=p.dtype
            )
        )
    return blocks


@torch.no_grad()
def official_init_time_mixes_(mixes, config, seed: int | None = None) -> None:
    """The official initialisation of time mixes used without their blocks (ARWKV, sequence mixers).

    ``mixes``: time mixes (``att``) of layers ``0, 1, ...`` of a model with ``config``; each gets the
    values :func:`official_init_blocks_` gives ``att`` of a block, its random values drawn from one
    generator in parameter order (the blocks' channel mixes, absent here, draw nothing in between).
    """
    g = _generator(seed)
    for layer, mix in enumerate(mixes):
        for rest, p in mix.named_parameters():
            value = _mix_value(mix, "att", rest, tuple(p.shape), config, layer, g)
            if value is None:
                raise NotImplementedError(f"official_init_: no rule for parameter att.{rest}")
            p.copy_(value.to(device=p.device, dtype=p.dtype))


@torch.no_grad()
def random_init_(model: RWKV, seed: int = 0) -> RWKV:
    """Fill ``model``'s parameters in place with seeded random values; returns the model."""
    g = torch.Generator().manual_seed(seed)

    def normal(t: torch.Tensor, std: float, mean: float = 0.0) -> None:
        t.copy_(torch.randn(t.shape, generator=g) * std + mean)

    def uniform(t: torch.Tensor, lo: float, hi: float) -> None:
        t.copy_(torch.rand(t.shape, generator=g) * (hi - lo) + lo)

    # RWKV-4's decay and bonus act in the exponent of its per-channel WKV; v5+ decays are exp(-exp(.))
    per_channel_exponent = isinstance(model.blocks[0].att, RWKV4TimeMix)

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
            if per_channel_exponent:
                uniform(p, -5.0, 3.0)  # w = -exp(.) from -0.007 (slow) to -20 (fast) per step
            else:
                uniform(p, -6.0, 1.0)  # decay exp(-exp(.)) from 0.9975 down to 0.066
        elif leaf == "time_first":
            if per_channel_exponent:
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
    from rwkvkit.formats.blinkdl import save_pth  # deferred: rwkvkit.formats imports the models

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_pth(random_model(config, seed, dtype).state_dict(), path)
    return path
