"""A GPT-2-style decoder-only transformer: the quality yardstick for the RWKV models.

nanoGPT's model, kept small and readable, with the interface of :class:`rwkvkit.models.rwkv.model.RWKV`
so that one trainer drives both (``logits, _ = model(tokens)``)::

    x = wte[tokens] + wpe[positions]                  # learned absolute positions, as GPT-2
    for each block:
        x = x + Attn(LN_1(x))                          # causal multi-head self-attention (SDPA)
        x = x + MLP(LN_2(x))                           # C -> 4C -> C, GELU (tanh approximation)
    logits = lm_head(LN_f(x))                          # tied to wte only if the config says so

Choices: learned position embeddings rather than RoPE, because that is the GPT-2 baseline the
RWKV papers compare against and it keeps the model one file of plain layers (the price:
``block_size`` caps the sequence length). Names follow GPT-2 (``c_attn``, ``c_proj``, ``c_fc``,
``ln_1``, ``ln_2``, ``ln_f``, ``wte``, ``wpe``), so GPT-2 weights map by name (with the usual
transposes of its Conv1D layers).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from rwkvkit.errors import InputError
from rwkvkit.models.gpt.config import GPTConfig


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, device=None, dtype=None) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        C = config.n_embd
        self.n_head = config.n_head
        self.dropout = config.dropout
        self.c_attn = nn.Linear(C, 3 * C, bias=config.bias, **dd)  # q, k, v for all heads at once
        self.c_proj = nn.Linear(C, C, bias=config.bias, **dd)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        # (B, T, C) -> (B, nh, T, hs)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        # SDPA picks flash / memory-efficient / math kernels; is_causal masks the future
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True
        )
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble the heads
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig, device=None, dtype=None) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        C = config.n_embd
        self.c_fc = nn.Linear(C, 4 * C, bias=config.bias, **dd)
        self.c_proj = nn.Linear(4 * C, C, bias=config.bias, **dd)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))  # GPT-2's GELU


class Block(nn.Module):
    """Pre-LN transformer block."""

    def __init__(self, config: GPTConfig, device=None, dtype=None) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias, **dd)
        self.attn = CausalSelfAttention(config, **dd)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias, **dd)
        self.mlp = MLP(config, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """GPT language model. ``logits, None = model(tokens)``.

    The constructor leaves PyTorch's default layer initialisation; call :meth:`init_weights` for
    GPT-2's.
    """

    def __init__(self, config: GPTConfig, device=None, dtype=None) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.config = config
        C = config.n_embd
        self.wte = nn.Embedding(config.vocab_size, C, **dd)
        self.wpe = nn.Embedding(config.block_size, C, **dd)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config, **dd) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(C, bias=config.bias, **dd)
        self.lm_head = nn.Linear(C, config.vocab_size, bias=False, **dd)
        if config.tie_embeddings:
            self.lm_head.weight = self.wte.weight  # one tensor, (V, C) in both layouts

    @property
    def dtype(self) -> torch.dtype:
        return self.wte.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.wte.weight.device

    def num_params(self) -> int:
        """Number of parameters (a tied head counted once); equals ``config.num_params``."""
        return sum(p.numel() for p in self.parameters())

    @torch.no_grad()
    def init_weights(self, seed: int = 0) -> GPT:
        """GPT-2's initialisation, seeded: returns the model.

        Linear and embedding weights ~ N(0, 0.02); the projections that write into the residual
        stream (``attn.c_proj``, ``mlp.c_proj``) ~ N(0, 0.02 / sqrt(2 n_layer)), so the residual's
        variance does not grow with depth (GPT-2 paper, section 2.3); biases 0; LayerNorms gain 1,
        bias 0. Values are drawn on the CPU in fp32 from one generator, in parameter order, so a
        seed gives the same model on every device and dtype.
        """
        g = torch.Generator().manual_seed(seed)
        proj_std = 0.02 / math.sqrt(2 * self.config.n_layer)
        norms = {n for n, m in self.named_modules() if isinstance(m, nn.LayerNorm)}
        for name, p in self.named_parameters():  # a tied head is listed (and drawn) once, as wte
            module, _, leaf = name.rpartition(".")
            if module in norms:
                value = torch.ones(p.shape) if leaf == "weight" else torch.zeros(p.shape)
            elif leaf == "bias":
                value = torch.zeros(p.shape)
            else:
                std = proj_std if module.endswith("c_proj") else 0.02
                value = torch.randn(p.shape, generator=g) * std
            p.copy_(value.to(device=p.device, dtype=p.dtype))
        return self

    def forward(
        self, tokens: torch.Tensor, state: None = None, *, return_hidden: bool = False
    ) -> tuple[torch.Tensor, None]:
        """Run a batch of token sequences.

        Args:
            tokens: LongTensor ``[B, T]`` (a 1-D ``[T]`` is taken as ``B = 1``), ``T <= block_size``.
            state: must be None. It is here so that code written for RWKV's
                ``model(tokens, state)`` runs this model too; a transformer carries no state.
            return_hidden: True: return the head's input, the hidden states after ``ln_f``
                ``[B, T, C]``, instead of the logits (for a loss that applies ``lm_head`` itself in
                chunks, ``rwkvkit.training.loss.fused_lm_loss``).

        Returns:
            ``(logits, None)``: float32 logits ``[B, T, V]`` (the hidden states with
            ``return_hidden=True``).
        """
        if state is not None:
            raise InputError("GPT has no recurrent state: pass state=None (feed the whole context instead)")
        if tokens.dim() == 1:
            tokens = tokens.unsqueeze(0)
        if tokens.dim() != 2:
            raise InputError(f"tokens must be a [B, T] LongTensor, got shape {tuple(tokens.shape)}")
        B, T = tokens.shape
        if T > self.config.block_size:
            raise InputError(
                f"sequence of {T} tokens is longer than the model's block_size {self.config.block_size} "
                "(its learned position embedding has no rows beyond that); crop or split the input"
            )
        pos = torch.arange(T, device=tokens.device)
        x = self.drop(self.wte(tokens) + self.wpe(pos))  # (B, T, C) + (T, C)
        for block in self.blocks:
            x = block(x)
        x = self.ln_f(x)
        if return_hidden:
            return x, None
        return self.lm_head(x).float(), None
