"""Decoder-only patch forecasters: Rimer (RWKV-7 blocks) and Timer (causal self-attention).

One pipeline, two backbones (Rimer: Li & Liu, arXiv 2503.06121; Timer: Liu et al., ICML 2024)::

    x [B, L, M]  --RevIN-->  per series: z = (x - mean_L) / std_L       (statistics of the look-back)
                 --channel independence-->  [B*M, L]: every variable is its own series
                 --patching-->  [B*M, N, P]  (N = L / P tokens of P steps each)
                 --patch embedding-->  Linear(P -> d)          (+ sinusoidal positions, Timer only)
                 --backbone-->  n_layers blocks, causal: token i sees patches 0..i
                 --head-->  LayerNorm, Linear(d -> P): token i predicts patch i + 1
                 --inverse RevIN-->  [B, H, M]

Training is next-patch prediction with teacher forcing: ``loss(x, y)`` runs the backbone over the
patches of ``[x; y]`` except the last and compares the outputs with the patches that follow them,
in the data's (standardised) scale: by default only the outputs that predict the patches of ``y``
(``loss_on="horizon"``; ``"all"`` scores every position, which lets positions inside the look-back
learn from RevIN statistics that include their own future). Forecasting is autoregressive: the predicted
patch is fed back as the next token until ``horizon`` steps are covered, so one trained model
serves every horizon.

- **Rimer**: the backbone is a stack of real RWKV-7 blocks of :mod:`rwkvkit.models.rwkv` (LayerNorm,
  time mix with the generalised delta rule, LayerNorm, ReLU^2 channel mix, the value residual across
  layers), with the official training initialisation. There are no position embeddings: the
  recurrence orders the tokens. Forecasting runs the look-back through the chunked WKV once, then
  one RWKV step per generated patch, carrying the recurrent state: each further patch costs the
  same, however long the context has grown.
- **Timer**: GPT-2-style pre-LN blocks (causal multi-head attention, GELU MLP) of
  :mod:`rwkvkit.models.gpt`, with fixed sinusoidal positions. Forecasting slides a window of the
  last ``N`` tokens (the look-back's length, as Timer does) and re-runs the stack for every
  generated patch.

The seed repository differs from this (docs/seed-systems.md#rimer): it uses one RWKV-7 block
whatever ``e_layers`` says, a single linear layer in place of the channel mix, and one token per
variable. Here ``n_layers`` blocks are stacked and the patch length is a free parameter.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from rwkvkit.errors import ConfigError, InputError
from rwkvkit.inference import fused
from rwkvkit.models.gpt.config import GPTConfig
from rwkvkit.models.gpt.model import Block as GPTBlock
from rwkvkit.models.rwkv.config import RWKVConfig
from rwkvkit.models.rwkv.init import official_init_blocks_
from rwkvkit.models.rwkv.model import Block
from rwkvkit.models.rwkv.versions import spec_of


def config_from_dict(cls, d: dict[str, Any]):
    """``cls(**d)`` for a forecaster config dataclass; unknown keys -> :class:`ConfigError` naming them."""
    if not isinstance(d, dict):
        raise ConfigError(f"{cls.__name__}.from_dict expects a dict, got {type(d).__name__}")
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - fields
    if unknown:
        raise ConfigError(
            f"unknown {cls.__name__} fields {sorted(unknown)}; known: {sorted(fields)} (remove the others)"
        )
    return cls(**d)


def check_series(op: str, x: torch.Tensor, lookback: int | None = None) -> None:
    """Raise :class:`InputError` unless ``x`` is a finite float ``[B, L, M]`` tensor."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise InputError(f"{op}: x must be a float tensor [batch, time, variables], got {type(x).__name__}")
    if x.dim() != 3:
        raise InputError(f"{op}: x must be [batch, time, variables], got shape {tuple(x.shape)}")
    if lookback is not None and x.shape[1] != lookback:
        raise InputError(f"{op}: the model was built for a look-back of {lookback} steps, got {x.shape[1]}")
    if not torch.isfinite(x).all():
        raise InputError(f"{op}: x has NaN or infinite values; fill or drop them first")


class RevIN(nn.Module):
    """Reversible instance normalisation (Kim et al., ICLR 2022), without the affine part.

    Each series of a batch is shifted and scaled by the mean and standard deviation of its own
    look-back; forecasts are mapped back with the same numbers. ``normalize`` returns the statistics
    so that the caller can also normalise the targets with them (training)."""

    def __init__(self, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps

    def stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x [..., L]`` -> ``(mean, std)`` each ``[..., 1]`` (population std, plus eps under the root)."""
        mean = x.mean(dim=-1, keepdim=True)
        std = torch.sqrt(x.var(dim=-1, keepdim=True, unbiased=False) + self.eps)
        return mean, std


@dataclass(frozen=True, kw_only=True)
class PatchConfig:
    """Fields shared by the patch forecasters."""

    lookback: int = 96  # L: steps of history the model reads (a multiple of patch_len)
    patch_len: int = 16  # P: steps per token; forecasts are produced P steps at a time
    d_model: int = 128
    n_layers: int = 3
    dropout: float = 0.1  # after the patch embedding (and inside Timer's blocks)
    revin: bool = True  # per-series normalisation by the look-back's mean and std
    # which next-patch predictions the training loss scores: "horizon" (those of the patches after the
    # look-back, default) or "all" (every position, also inside the look-back, as Timer pre-trains)
    loss_on: str = "horizon"

    def __post_init__(self) -> None:
        for name in ("lookback", "patch_len", "d_model", "n_layers"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{type(self).__name__}.{name} must be >= 1, got {getattr(self, name)}")
        if self.lookback % self.patch_len:
            raise ConfigError(
                f"lookback {self.lookback} is not a multiple of patch_len {self.patch_len}; "
                "choose a patch length that divides it (16 divides 96, 336 and 512)"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.loss_on not in ("horizon", "all"):
            raise ConfigError(f"loss_on must be 'horizon' or 'all', got {self.loss_on!r}")

    @property
    def n_patches(self) -> int:
        return self.lookback // self.patch_len

    def replace(self, **changes: Any):
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        return config_from_dict(cls, d)


@dataclass(frozen=True, kw_only=True)
class RimerConfig(PatchConfig):
    """Sizes of :class:`Rimer`. ``head_size`` is the RWKV-7 head width (d_model / head_size heads);
    ``dim_ffn`` 0 means 4 d_model; LoRA ranks 0 mean the official formulas of the trainer."""

    head_size: int = 32
    dim_ffn: int = 0
    lora_w: int = 0
    lora_a: int = 0
    lora_v: int = 0
    lora_g: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.head_size < 1 or self.d_model % self.head_size:
            raise ConfigError(f"d_model {self.d_model} must be a multiple of head_size {self.head_size}")

    def rwkv_config(self):
        """The :class:`RWKVConfig` of the blocks (vocab_size 1: the LM embedding is not used)."""
        ranks = spec_of("7").default_lora_ranks(self.d_model)
        for k in ranks:
            if getattr(self, k):
                ranks[k] = getattr(self, k)
        return RWKVConfig(
            version="7", n_layer=self.n_layers, n_embd=self.d_model, vocab_size=1,
            head_size=self.head_size, dim_ffn=self.dim_ffn, **ranks,
        )  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class TimerConfig(PatchConfig):
    """Sizes of :class:`Timer` (MLP width 4 d_model, as GPT-2)."""

    n_heads: int = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_heads < 1 or self.d_model % self.n_heads:
            raise ConfigError(f"d_model {self.d_model} must be a multiple of n_heads {self.n_heads}")


class PatchForecaster(nn.Module):
    """The shared pipeline; subclasses provide the backbone (``_run``) and the rollout."""

    config: PatchConfig

    def __init__(self, config: PatchConfig) -> None:
        super().__init__()
        self.config = config
        self.revin = RevIN()
        self.embed = nn.Linear(config.patch_len, config.d_model)
        self.drop = nn.Dropout(config.dropout)
        self.ln_out = nn.LayerNorm(config.d_model)
        self.head = nn.Linear(config.d_model, config.patch_len)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ---- the pipeline around the backbone ---------------------------------------------------

    def _normalize(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x [B, L, M]`` -> ``(z [B*M, L], mean [B*M, 1], std [B*M, 1])``: channel independence + RevIN."""
        B, L, M = x.shape
        z = x.transpose(1, 2).reshape(B * M, L)
        if not self.config.revin:
            return z, z.new_zeros(B * M, 1), z.new_ones(B * M, 1)
        mean, std = self.revin.stats(z)
        return (z - mean) / std, mean, std

    def _patches(self, z: torch.Tensor) -> torch.Tensor:
        P = self.config.patch_len
        return z.reshape(z.shape[0], -1, P)

    def _project(self, h: torch.Tensor) -> torch.Tensor:
        return self.head(self.ln_out(h))

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean squared next-patch error over every position of ``[x; y]`` (teacher forcing).

        ``x [B, L, M]`` is the look-back (its statistics normalise the whole sequence), ``y [B, H, M]``
        the steps after it; ``H`` must be a multiple of ``patch_len``. The error is measured in the
        scale of ``x`` (RevIN undone), the scale the forecasts are scored in.
        """
        cfg = self.config
        check_series("loss", x, cfg.lookback)
        check_series("loss", y)
        if y.shape[0] != x.shape[0] or y.shape[2] != x.shape[2]:
            raise InputError(
                f"loss: y {tuple(y.shape)} does not match x {tuple(x.shape)} in batch or variables"
            )
        if y.shape[1] % cfg.patch_len:
            raise InputError(
                f"loss: the target length {y.shape[1]} is not a multiple of patch_len {cfg.patch_len}"
            )
        B, L, M = x.shape
        _, mean, std = self._normalize(x)
        seq = torch.cat([x, y], dim=1).transpose(1, 2).reshape(B * M, -1)
        patches = self._patches((seq - mean) / std)
        pred = self._forward_train(patches[:, :-1])  # [B*M, N_total - 1, P], normalised
        target = self._patches(seq)[:, 1:]
        if cfg.loss_on == "horizon":
            # only the patches after the look-back: inside it, the RevIN statistics (taken over the whole
            # look-back) would tell each position something about the patches that follow it
            first = cfg.n_patches - 1
            pred, target = pred[:, first:], target[:, first:]
        return F.mse_loss(pred * std.unsqueeze(-1) + mean.unsqueeze(-1), target)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The next patch after ``x [B, L, M]``: ``[B, patch_len, M]``, differentiable (for objectives
        other than :meth:`loss`, such as the seed repository's next-step protocol)."""
        check_series("forward", x, self.config.lookback)
        B, L, M = x.shape
        z, mean, std = self._normalize(x)
        nxt = self._forward_train(self._patches(z))[:, -1] * std + mean  # [B*M, P]
        return nxt.reshape(B, M, -1).transpose(1, 2)

    @torch.no_grad()
    def forecast(self, x: torch.Tensor, horizon: int) -> torch.Tensor:
        """``x [B, L, M]`` -> the next ``horizon`` steps ``[B, horizon, M]`` (autoregressive patches)."""
        cfg = self.config
        check_series("forecast", x, cfg.lookback)
        if horizon < 1:
            raise InputError(f"forecast: horizon must be >= 1, got {horizon}")
        B, L, M = x.shape
        z, mean, std = self._normalize(x)
        steps = math.ceil(horizon / cfg.patch_len)
        was_training = self.training
        self.eval()  # forecasts never use dropout, whatever mode the model was left in
        try:
            out = self._rollout(self._patches(z), steps)  # [B*M, steps, P]
        finally:
            self.train(was_training)
        y = out.reshape(B * M, -1)[:, :horizon] * std + mean
        return y.reshape(B, M, horizon).transpose(1, 2).contiguous()

    # ---- backbone hooks ---------------------------------------------------------------------

    def _forward_train(self, patches: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _rollout(self, patches: torch.Tensor, steps: int) -> torch.Tensor:
        raise NotImplementedError


class Rimer(PatchForecaster):
    """RWKV-7 patch forecaster. ``model.forecast(x [B, L, M], horizon) -> [B, horizon, M]``."""

    config: RimerConfig

    def __init__(self, config: RimerConfig | None = None, seed: int = 0) -> None:
        config = config or RimerConfig()
        super().__init__(config)
        self.rwkv_config = config.rwkv_config()
        self.blocks = nn.ModuleList(Block(self.rwkv_config, i) for i in range(config.n_layers))
        official_init_blocks_(self.blocks, self.rwkv_config, seed=seed)
        g = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for lin in (self.embed, self.head):
                lin.weight.copy_(torch.randn(lin.weight.shape, generator=g) * lin.weight.shape[1] ** -0.5)
                lin.bias.zero_()

    def initial_state(self, batch: int, device=None) -> list[list[torch.Tensor]]:
        """Per layer ``[att_shift [B, d], wkv [B, H, N, N] fp32, ffn_shift [B, d]]``, all zero."""
        c = self.rwkv_config
        H, N, d = c.n_head, c.head_size, c.n_embd
        dtype = self.embed.weight.dtype
        return [
            [torch.zeros(batch, d, device=device, dtype=dtype),
             torch.zeros(batch, H, N, N, device=device, dtype=torch.float32),
             torch.zeros(batch, d, device=device, dtype=dtype)]
            for _ in range(c.n_layer)
        ]  # fmt: skip

    def step(
        self, patches: torch.Tensor, state: list[list[torch.Tensor]] | None = None, impl: str = "auto"
    ) -> tuple[torch.Tensor, list[list[torch.Tensor]]]:
        """Run normalised patches ``[B, T, P]`` from ``state`` -> ``(next-patch predictions [B, T, P],
        new state)``. Splitting a sequence into pieces and carrying the state gives the same result as
        one call on the whole sequence (the RNN form)."""
        if state is None:
            state = self.initial_state(patches.shape[0], patches.device)
        h = self.drop(self.embed(patches))
        v_first = None
        new_state = []
        for block, (att_shift, wkv, ffn_shift) in zip(self.blocks, state, strict=True):
            h, att_shift, wkv, ffn_shift, v_first = block(h, att_shift, wkv, ffn_shift, v_first, impl=impl)
            new_state.append([att_shift, wkv, ffn_shift])
        return self._project(h), new_state

    def _forward_train(self, patches: torch.Tensor) -> torch.Tensor:
        return self.step(patches)[0]

    fused_decode = True  # generated patches go through the fused C++ RWKV-7 block (rwkvkit.inference)
    # ... for up to this many series (windows x variables); beyond, batched PyTorch ops are as fast
    # (benchmarks/forecast.py: 1792 series, 720 steps: fused 2.4 s, modules 2.1 s)
    fused_max_series = 16

    def _rollout(self, patches: torch.Tensor, steps: int) -> torch.Tensor:
        out, state = self.step(patches)  # the whole look-back at once (chunked WKV)
        nxt = out[:, -1:]
        preds = [nxt]
        packed = self._packed() if steps > 1 and patches.shape[0] <= self.fused_max_series else None
        for _ in range(steps - 1):  # then one recurrent step per further patch
            nxt, state = self.step(nxt, state) if packed is None else self._fused_step(packed, nxt, state)
            preds.append(nxt)
        return torch.cat(preds, dim=1)

    def _packed(self):
        """The blocks packed for :func:`rwkvkit.inference.fused.block_decode` (fp32 CPU only), or None."""
        if (
            not self.fused_decode
            or self.embed.weight.dtype != torch.float32
            or self.embed.weight.device.type != "cpu"
        ):
            return None

        if not fused.available():
            return None
        return [fused.pack_block(b) for b in self.blocks]

    def _fused_step(self, packed, nxt: torch.Tensor, state: list[list[torch.Tensor]]):
        """One generated patch ``[B, 1, P]`` through every block, one C++ call per block (the same
        math as :meth:`step` with T = 1, tested against it)."""

        h = self.embed(nxt[:, 0])
        v_first = None
        new_state = []
        for p, (att_shift, wkv, ffn_shift) in zip(packed, state, strict=True):
            h, att_shift, wkv, ffn_shift, v_first = fused.block_decode(
                p, h.contiguous(), att_shift.contiguous(), wkv.contiguous(), ffn_shift.contiguous(), v_first
            )
            new_state.append([att_shift, wkv, ffn_shift])
        return self._project(h).unsqueeze(1), new_state


def sinusoidal_positions(n: int, d: int) -> torch.Tensor:
    """The fixed ``[n, d]`` position code of "Attention is all you need" (sin on even, cos on odd)."""
    pos = torch.arange(n, dtype=torch.float32).unsqueeze(1)
    freq = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * (-math.log(10000.0) / d))
    pe = torch.zeros(n, d)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq[: d // 2])
    return pe


class Timer(PatchForecaster):
    """Causal-attention patch forecaster (the Timer baseline), same pipeline as :class:`Rimer`."""

    config: TimerConfig
    max_positions = 4096  # sinusoidal table size; training sequences must be shorter (in patches)

    def __init__(self, config: TimerConfig | None = None, seed: int = 0) -> None:

        config = config or TimerConfig()
        super().__init__(config)
        gpt = GPTConfig(
            n_layer=config.n_layers, n_embd=config.d_model, n_head=config.n_heads, vocab_size=1,
            block_size=self.max_positions, bias=True, dropout=config.dropout,
        )  # fmt: skip
        self.blocks = nn.ModuleList(GPTBlock(gpt) for _ in range(config.n_layers))
        self.register_buffer(
            "pos", sinusoidal_positions(self.max_positions, config.d_model), persistent=False
        )
        # GPT-2 initialisation: N(0, 0.02), residual projections scaled by 1 / sqrt(2 n_layers)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if p.dim() == 2:
                    std = 0.02 / math.sqrt(2 * config.n_layers) if name.endswith("c_proj.weight") else 0.02
                    if name in ("embed.weight", "head.weight"):
                        std = p.shape[1] ** -0.5
                    p.copy_(torch.randn(p.shape, generator=g) * std)
                elif name.endswith("bias"):
                    p.zero_()

    def _run(self, patches: torch.Tensor) -> torch.Tensor:
        T = patches.shape[1]
        if T > self.max_positions:
            raise InputError(f"Timer: {T} patches exceed the {self.max_positions} positions it has")
        h = self.drop(self.embed(patches) + self.pos[:T])
        for block in self.blocks:
            h = block(h)
        return self._project(h)

    def _forward_train(self, patches: torch.Tensor) -> torch.Tensor:
        return self._run(patches)

    def _rollout(self, patches: torch.Tensor, steps: int) -> torch.Tensor:
        window = patches.shape[1]
        ctx = patches
        preds = []
        for _ in range(steps):  # re-run the stack on the last `window` tokens for every patch
            nxt = self._run(ctx[:, -window:])[:, -1:]
            preds.append(nxt)
            ctx = torch.cat([ctx, nxt], dim=1)
        return torch.cat(preds, dim=1)
