"""The official training initialisation of RWKV-4 to RWKV-7 (docs/init.md), applied in place.

Every parameter gets the value the official trainer (BlinkDL/RWKV-LM) gives it when training from
scratch. The trainer does this in two places, and both are reproduced here:

* the module constructors set the "time" parameters with fixed formulas of the layer index ``l``
  and the channel index (below, ``r01 = l / (L - 1)``, ``r1a0 = 1 - l / L``, ``ddd_i = i / C``);
* ``generate_init_weight`` then overwrites every matrix: ``emb`` uniform, ``head`` and most linears
  orthogonal, the output projections zero, ``ln_x`` set to ``((1 + l) / L) ** 0.7``.

Per version (sources; line numbers are those of the pinned commit ``524481d``, docs/README.md#sources):

* v4: ``RWKV-v4neo/src/model.py`` (time parameters :460-510; ``generate_init_weight`` :913-975).
  Orthogonal gains carry an extra ``sqrt(out / in)`` when ``out > in``; ``att.key``,
  ``att.receptance``, ``att.output``, ``ffn.value`` and ``ffn.receptance`` are zero; ``emb`` is
  ``U(-lr_init, lr_init)`` there (pass ``emb_range=lr_init`` to reproduce; the default is 1e-4).
* v5.2 and v6: ``RWKV-v5/src/model.py`` (``RWKV_Tmix_x052``, ``RWKV_Tmix_x060``, the channel mixes,
  ``generate_init_weight``). Gains: 1, with ``att.key`` and ``att.gate`` 0.1 and ``att.output``,
  ``ffn.value``, ``ffn.receptance`` 0; no ``sqrt(out / in)`` factor. The v6 channel-mix exponent is
  ``r1a0 ** 3`` (commit ``524481d``; an older commit used ``r1a0``).
* v5.0 / v5.1 (the "preview" models): only a preview trainer existed (``RWKV_TimeMix_RWKV5_Preview``
  in ``RWKV-v4neo/src/model.py``). Its per-head formulas are used: ``time_decay_h = -6 + 5 (h / (H -
  1)) ** (0.7 + 1.3 r01)``; the bonus ``time_first = -3`` (u = e^-3) in files that store its log,
  ``time_faaaa_h = r01 (1 - h / (H - 1))`` (the preview's linear-bonus variant) otherwise. The
  matrices get the v5.2 rules above (the maintained ``generate_init_weight``); the preview
  trainer itself used the v4neo gains. A v5.2 model that stores a log bonus also gets
  ``time_first = -3``, since the log of the v5.2 bonus formula is undefined where it is <= 0.
* v7: ``RWKV-v7/train_temp/src/model.py`` (``RWKV_Tmix_x070``, ``RWKV_CMix_x070``,
  ``generate_init_weight``). LoRA down-projections ``w1, a1, v1, g1`` are zero, up-projections
  ``w2, a2, v2, g2`` orthogonal with gain ``0.1 * sqrt(rows / cols)`` (``rows > cols``, else 0.1).
  Layer 0's ``v0, v1, v2`` are unused by the model but are initialised like every other layer's,
  as the official trainer does.

Edge cases the official code does not handle (it divides by zero): with ``n_layer == 1``,
``r01`` is taken as 0; a denominator ``A - 1``, ``C - 1``, ``H - 1`` or ``(N - 1) / 2`` of zero gives
a ratio of 0.

Numerics: the formulas are evaluated in fp64 and rounded once to the parameter's dtype; random
matrices are drawn on the CPU in fp32 from one seeded ``torch.Generator`` in parameter order, so a
seed gives the same weights on every device and for every dtype (up to the final rounding).
Orthogonal matrices come from the QR decomposition of a Gaussian matrix, sign-corrected, as
``torch.nn.init.orthogonal_`` does.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from rwkvkit.models.rwkv.model import RWKV

_F64 = torch.float64

# The official emb init half-width of v5-v7 (v4neo used its lr_init instead: see ``emb_range``).
EMB_RANGE = 1e-4


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
    """
    if not isinstance(model, RWKV):
        raise TypeError(f"official_init_ needs an rwkvkit RWKV model, got {type(model).__name__}")
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,)).item())
    g = torch.Generator().manual_seed(seed)
    rules = _Rules(
        model.config, _layer_norm_names(model), g, EMB_RANGE if emb_range is None else float(emb_range)
    )
    for name, p in model.named_parameters():
        value = rules.value(name, tuple(p.shape))
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
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,)).item())
    g = torch.Generator().manual_seed(seed)
    norms = {f"blocks.{n}" for n, m in blocks.named_modules() if isinstance(m, nn.LayerNorm)}
    rules = _Rules(config, norms, g, EMB_RANGE)
    for name, p in blocks.named_parameters(prefix="blocks"):
        p.copy_(rules.value(name, tuple(p.shape)).to(device=p.device, dtype=p.dtype))
    return blocks


def _layer_norm_names(model: nn.Module) -> set[str]:
    return {n for n, m in model.named_modules() if isinstance(m, nn.LayerNorm)}


def layer_ratios(layer_id: int, n_layer: int) -> tuple[float, float]:
    """``(r01, r1a0)``: ``l / (L - 1)`` (0 to 1; 0 when L == 1) and ``1 - l / L`` (1 to ~0)."""
    r01 = layer_id / (n_layer - 1) if n_layer > 1 else 0.0
    return r01, 1.0 - layer_id / n_layer


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


def _frac(num: torch.Tensor | float, den: float) -> torch.Tensor | float:
    """``num / den``, or 0 where the official code would divide by zero."""
    return num / den if den != 0 else num * 0.0


class _Rules:
    """Computes the initial value of one parameter from its name (fp32 or fp64 CPU tensor)."""

    def __init__(self, cfg, layer_norms: set[str], g: torch.Generator, emb_range: float) -> None:
        self.cfg = cfg
        self.version = cfg.version
        self.g = g
        self.emb_range = emb_range
        self.C, self.A, self.L = cfg.n_embd, cfg.dim_att, cfg.n_layer
        self.H, self.N = cfg.n_head, cfg.head_size
        self.ddd = torch.arange(self.C, dtype=_F64) / self.C  # ddd_i = i / C, shape (C,)
        # LayerNorms (ln0, ln1, ln2, ln_out) keep PyTorch's weight 1, bias 0; ln_x is a GroupNorm
        self.layer_norms = layer_norms

    # ---- dispatch -----------------------------------------------------------------------------

    def value(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        module, _, leaf = name.rpartition(".")
        if name == "emb.weight":
            return (torch.rand(shape, generator=self.g) * 2 - 1) * self.emb_range
        if name == "head.weight":
            V, C = shape
            # v5+: 0.5 sqrt(V/C) if V > C else 0.5; v4neo: scale 0.5 times its sqrt(out/in) gain: the same
            return orthogonal(V, C, 0.5 * math.sqrt(V / C) if V > C else 0.5, self.g)
        if module in self.layer_norms:
            return torch.ones(shape) if leaf == "weight" else torch.zeros(shape)
        parts = name.split(".")
        if parts[0] != "blocks" or len(parts) < 4:
            raise NotImplementedError(f"official_init_: no rule for parameter {name}")
        layer, sub = int(parts[1]), parts[2]  # sub: "att" or "ffn"
        rest = ".".join(parts[3:])  # e.g. "time_decay", "key.weight", "ln_x.bias"
        if rest == "ln_x.weight":
            return torch.full(shape, ((1 + layer) / self.L) ** 0.7, dtype=_F64)
        if rest == "ln_x.bias":
            return torch.zeros(shape)
        if rest.endswith(".weight") and len(shape) == 2:  # the linears: (out, in)
            return self.matrix(sub, rest[: -len(".weight")], shape)
        if sub == "att":
            out = self.time_mix(layer, rest, shape)
        elif sub == "ffn":
            out = self.channel_mix(layer, rest, shape)
        else:
            out = None
        if out is None:
            raise NotImplementedError(f"official_init_: no rule for parameter {name} (RWKV-{self.version})")
        return out.reshape(shape)

    # ---- matrices (generate_init_weight) ------------------------------------------------------

    def matrix(self, sub: str, linear: str, shape: tuple[int, ...]) -> torch.Tensor:
        out_f, in_f = shape
        key = f"{sub}.{linear}"
        if self.version == "4":
            # v4neo: zero r, k, output and the ffn value / receptance; the rest orthogonal, sqrt(out/in)
            if key in ("att.key", "att.receptance", "att.output", "ffn.value", "ffn.receptance"):
                return torch.zeros(shape)
            gain = math.sqrt(out_f / in_f) if out_f > in_f else 1.0
            return orthogonal(out_f, in_f, gain, self.g)
        # v5.x, v6, v7: gain 1, 0.1 for att.key / att.gate, 0 for the output projections
        if key in ("att.output", "ffn.value", "ffn.receptance"):
            return torch.zeros(shape)
        gain = 0.1 if key in ("att.key", "att.gate") else 1.0
        return orthogonal(out_f, in_f, gain, self.g)

    # ---- time mix -----------------------------------------------------------------------------

    def time_mix(self, layer: int, leaf: str, shape: tuple[int, ...]) -> torch.Tensor | None:
        r01, r1a0 = layer_ratios(layer, self.L)
        ddd = self.ddd
        v = self.version
        if v == "7":
            return self._time_mix_v7(layer, leaf, shape)
        if v == "6":
            table = {
                "time_maa_x": 1 - ddd**r1a0,
                "time_maa_w": 1 - ddd**r1a0,
                "time_maa_k": 1 - ddd**r1a0,
                "time_maa_v": 1 - (ddd**r1a0 + 0.3 * r01),
                "time_maa_r": 1 - ddd ** (0.5 * r1a0),
                "time_maa_g": 1 - ddd ** (0.5 * r1a0),
            }
            if leaf in table:
                return table[leaf]
            if leaf in ("time_maa_w1", "time_decay_w1"):
                return torch.zeros(shape)
            if leaf in ("time_maa_w2", "time_decay_w2"):
                return (torch.rand(shape, generator=self.g) * 2 - 1) * 0.01  # U(-0.01, 0.01)
            if leaf == "time_decay":
                return self._decay_per_channel(r01)
            if leaf == "time_faaaa":
                return self._faaaa_per_channel(r01)
            return None
        # v4 and v5.x share the lerp coefficients "time_mix" (they weight the current token)
        table = {
            "time_mix_k": ddd**r1a0,
            "time_mix_v": ddd**r1a0 + 0.3 * r01,
            "time_mix_r": ddd ** (0.5 * r1a0),
            "time_mix_g": ddd ** (0.5 * r1a0),
        }
        if leaf in table:
            return table[leaf]
        A = self.A
        if v == "4":
            h = torch.arange(A, dtype=_F64)
            if leaf == "time_decay":  # w = -exp(time_decay): from -e^-5 (slow) to -e^3 (fast) per step
                return -5 + 8 * _frac(h, A - 1) ** (0.7 + 1.3 * r01)
            if leaf == "time_first":
                return math.log(0.3) + 0.5 * (((h + 1) % 3) - 1)
            return None
        if leaf == "time_first":  # any v5 file that stores the bonus as its log
            return torch.full(shape, -3.0, dtype=_F64)
        if v == "5.2":
            if leaf == "time_decay":
                return self._decay_per_channel(r01)
            if leaf == "time_faaaa":
                return self._faaaa_per_channel(r01)
            return None
        # 5.0 / 5.1: one decay and one bonus per head (preview trainer)
        h = torch.arange(self.H, dtype=_F64)
        if leaf == "time_decay":
            return -6 + 5 * _frac(h, self.H - 1) ** (0.7 + 1.3 * r01)
        if leaf == "time_faaaa":
            return r01 * (1 - _frac(h, self.H - 1))
        return None

    def _decay_per_channel(self, r01: float) -> torch.Tensor:
        """v5.2 / v6 ``time_decay_n = -6 + 5 (n / (A - 1)) ** (0.7 + 1.3 r01)`` over the A channels."""
        n = torch.arange(self.A, dtype=_F64)
        return -6 + 5 * _frac(n, self.A - 1) ** (0.7 + 1.3 * r01)

    def _faaaa_per_channel(self, r01: float) -> torch.Tensor:
        """v5.2 / v6 bonus ``u_n = r01 (1 - n / (A - 1)) + 0.1 ((n + 1) % 3 - 1)``."""
        n = torch.arange(self.A, dtype=_F64)
        return r01 * (1 - _frac(n, self.A - 1)) + 0.1 * (((n + 1) % 3) - 1)

    def _time_mix_v7(self, layer: int, leaf: str, shape: tuple[int, ...]) -> torch.Tensor | None:
        r01, r1a0 = layer_ratios(layer, self.L)
        C, N = self.C, self.N
        n = torch.arange(C, dtype=_F64)
        linear = _frac(n, C - 1) - 0.5  # -0.5 .. 0.5 across the channels
        half = (N - 1) / 2
        z = _frac((n % N) - half, half)  # -1 .. 1 within each head
        zigzag = z * z.abs()
        powers = {"x_r": 0.2, "x_w": 0.9, "x_k": 0.7, "x_v": 0.7, "x_a": 0.9, "x_g": 0.2}
        if leaf in powers:
            return 1 - self.ddd ** (powers[leaf] * r1a0)
        if leaf == "w0":
            www = -6 + 6 * _frac(n, C - 1) ** (1 + r01**0.3)
            return www + 0.5 + 2.5 * zigzag
        if leaf == "a0":
            return -0.19 + 0.3 * zigzag + 0.4 * linear
        if leaf == "v0":
            return 0.73 - 0.4 * linear
        if leaf == "k_k":
            return 0.71 - 0.1 * linear
        if leaf == "k_a":
            return torch.full(shape, 1.02, dtype=_F64)
        if leaf == "r_k":
            return torch.full(shape, -0.04, dtype=_F64)
        if leaf in ("w1", "a1", "v1", "g1"):
            return torch.zeros(shape)
        if leaf in ("w2", "a2", "v2", "g2"):
            rows, cols = shape
            return orthogonal(rows, cols, 0.1 * (math.sqrt(rows / cols) if rows > cols else 1.0), self.g)
        return None

    # ---- channel mix --------------------------------------------------------------------------

    def channel_mix(self, layer: int, leaf: str, shape: tuple[int, ...]) -> torch.Tensor | None:
        _, r1a0 = layer_ratios(layer, self.L)
        ddd = self.ddd
        if self.version == "7":
            return 1 - ddd ** (r1a0**4) if leaf == "x_k" else None
        if self.version == "6":
            return 1 - ddd ** (r1a0**3) if leaf in ("time_maa_k", "time_maa_r") else None
        return ddd**r1a0 if leaf in ("time_mix_k", "time_mix_r") else None
