"""The BASED language model: a hybrid of Taylor linear attention, sliding-window attention and gated
short convolutions (Arora et al., arXiv 2402.18668), read top to bottom::

    x = emb[tokens]                                   # no position embedding (the convolutions order tokens)
    for each layer l:
        x = x + Mixer_l(RMSNorm(x))                   # linear | swa | conv, by config.layer_types
        x = x + SwiGLU(RMSNorm(x))                    # inner width mlp_ratio * d
    logits = head(RMSNorm(x))

Interface of :class:`rwkvkit.models.rwkv.model.RWKV`: ``logits, state = model(tokens, state)``. The
state is a list of per-layer mixer states of fixed size (linear attention: its kv and normaliser
sums; sliding window: the last ``window`` keys and values; convolution: the last ``k - 1`` inputs),
so :func:`rwkvkit.generate` decodes a BASED model token by token exactly as it does RWKV, and the
input state is never modified.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from rwkvkit.errors import InputError
from rwkvkit.layers.based import BasedLinearAttention, SlidingWindowAttention
from rwkvkit.layers.mlp import SwiGLU
from rwkvkit.layers.short_conv import BaseConv
from rwkvkit.models.based.config import BasedConfig
from rwkvkit.models.recurrent import range_check_is_free


class BasedBlock(nn.Module):
    def __init__(self, config: BasedConfig, layer_id: int, device=None, dtype=None) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        d = config.d_model
        self.kind = config.layer_types[layer_id]
        self.norm1 = nn.RMSNorm(d, eps=1e-5, **dd)
        self.norm2 = nn.RMSNorm(d, eps=1e-5, **dd)
        if self.kind == "linear":
            self.mixer = BasedLinearAttention(d, config.n_heads, config.feature_dim, **dd)
        elif self.kind == "swa":
            self.mixer = SlidingWindowAttention(d, config.n_heads, config.window, **dd)
        else:
            self.mixer = BaseConv(d, config.conv_expand, config.conv_kernel, **dd)
        self.mlp = SwiGLU(d, int(config.mlp_ratio * d), **dd)

    def forward(self, x: torch.Tensor, state=None):
        y, state = self.mixer(self.norm1(x), state)
        x = x + y
        return x + self.mlp(self.norm2(x)), state


class BasedLM(nn.Module):
    """BASED language model. ``logits, state = model(tokens [B, T], state=None)``."""

    def __init__(self, config: BasedConfig, device=None, dtype=None) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.config = config
        self.emb = nn.Embedding(config.vocab_size, config.d_model, **dd)
        self.blocks = nn.ModuleList(BasedBlock(config, i, **dd) for i in range(config.n_layer))
        self.norm_out = nn.RMSNorm(config.d_model, eps=1e-5, **dd)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False, **dd)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def init_weights(self, seed: int = 0) -> BasedLM:
        """N(0, 0.02) matrices and embedding, output projections scaled by 1 / sqrt(2 n_layer)."""
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if p.dim() == 2 and name.split(".")[-2] != "conv":  # ShortConv keeps its own init
                    std = (
                        0.02 / (2 * self.config.n_layer) ** 0.5
                        if name.endswith(("out_proj.weight", "down_proj.weight"))
                        else 0.02
                    )
                    p.copy_(torch.randn(p.shape, generator=g) * std)
        return self

    def forward(self, tokens: torch.Tensor, state: list | None = None):
        """``tokens [B, T]`` (or ``[T]``), ``state`` from an earlier call or None ->
        ``(logits float32 [B, T, V], new state)``."""
        if not isinstance(tokens, torch.Tensor) or tokens.dtype not in (torch.int64, torch.int32):
            raise InputError("BasedLM: tokens must be an integer tensor [batch, time]")
        if tokens.dim() == 1:
            tokens = tokens.unsqueeze(0)
        if tokens.dim() != 2 or tokens.shape[1] == 0:
            raise InputError(
                f"BasedLM: tokens must be [batch, time] with time >= 1, got {tuple(tokens.shape)}"
            )
        in_range = not range_check_is_free(tokens) or (
            int(tokens.max()) < self.config.vocab_size and int(tokens.min()) >= 0
        )  # on a device the range is checked at the boundary (generate), not with a sync per forward
        if not in_range:
            raise InputError(f"BasedLM: token ids must lie in [0, {self.config.vocab_size})")
        if state is not None and len(state) != len(self.blocks):
            raise InputError(f"BasedLM: the state has {len(state)} layers, the model {len(self.blocks)}")
        x = self.emb(tokens)
        new_state = []
        for i, block in enumerate(self.blocks):
            x, s = block(x, None if state is None else state[i])
            new_state.append(s)
        return self.head(self.norm_out(x)).float(), new_state
