"""The RWKV language model: one skeleton for every version, read top to bottom.

::

    x = LN0(emb[tokens])                      # blocks.0.ln0
    for each block l:
        x = x + TimeMix_l(LN1_l(x))           # "att": carries a token shift and a WKV state
        x = x + ChannelMix_l(LN2_l(x))        # "ffn": carries a token shift
    logits = head(LN_out(x))                  # head is not tied to emb

The version-specific time and channel mixes live in ``rwkvkit.layers``; module names follow the
official checkpoints (``emb``, ``blocks.N.att.key``, ``ln_out``, ``head``), so an official state
dict loads with an (almost) identity key map. The same module tree serves training (whole
sequences, chunked WKV, autograd) and inference (chunked prefill, then one token at a time).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from rwkvkit.models.recurrent import RecurrentLM, check_tokens
from rwkvkit.models.rwkv.config import RWKVConfig
from rwkvkit.models.rwkv.versions import SPECS
from rwkvkit.state import State

__all__ = ["BLOCK_CLASSES", "Block", "RWKV", "check_tokens"]

# version -> (time mix class, channel mix class), from the version specs (kept for callers of 1.x)
BLOCK_CLASSES = {v: (s.time_mix, s.channel_mix) for v, s in SPECS.items()}


class Block(nn.Module):
    """One residual block: time mix then channel mix, each behind its own LayerNorm."""

    def __init__(self, config: RWKVConfig, layer_id: int, device=None, dtype=None) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        C = config.n_embd
        self.layer_id = layer_id
        if layer_id == 0:
            self.ln0 = nn.LayerNorm(C, eps=1e-5, **dd)
        self.ln1 = nn.LayerNorm(C, eps=1e-5, **dd)
        self.ln2 = nn.LayerNorm(C, eps=1e-5, **dd)
        spec = config.spec
        self.att = spec.time_mix(config, layer_id, **dd, **spec.time_mix_options)
        self.ffn = spec.channel_mix(config, layer_id, **dd)

    def forward(
        self,
        x: torch.Tensor,
        att_shift: torch.Tensor,
        wkv: torch.Tensor,
        ffn_shift: torch.Tensor,
        v_first: torch.Tensor | None,
        impl: str = "auto",
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``x [B, T, C]`` and this layer's state -> ``(x, att_shift, wkv, ffn_shift, v_first)``.

        A real ``forward`` (not called piecewise by the model) so that wrappers applied from outside
        (FSDP2's ``fully_shard``, activation checkpointing) see each block as one unit.
        """
        if self.layer_id == 0:
            x = self.ln0(x)
        xx, att_shift, wkv, v_first = self.att(self.ln1(x), att_shift, wkv, v_first, impl=impl)
        x = x + xx
        xx, ffn_shift = self.ffn(self.ln2(x), ffn_shift)
        return x + xx, att_shift, wkv, ffn_shift, v_first


class RWKV(RecurrentLM):
    """RWKV language model. ``logits, state = model(tokens, state)``."""

    def __init__(self, config: RWKVConfig, device=None, dtype=None) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.config = config
        self.emb = nn.Embedding(config.vocab_size, config.n_embd, **dd)
        self.blocks = nn.ModuleList(Block(config, i, **dd) for i in range(config.n_layer))
        self.ln_out = nn.LayerNorm(config.n_embd, eps=1e-5, **dd)
        self.head = nn.Linear(config.n_embd, config.vocab_size, bias=False, **dd)

    def forward(
        self,
        tokens: torch.Tensor,
        state: State | None = None,
        *,
        impl: str = "auto",
        full_output: bool = True,
        return_hidden: bool = False,
    ) -> tuple[torch.Tensor, State]:
        """Run a batch of token sequences.

        Args:
            tokens: LongTensor ``[B, T]`` (a 1-D ``[T]`` is taken as ``B = 1``).
            state: the state after the previous tokens of each sequence, or None (fresh start).
            impl: WKV implementation, ``"auto"`` (chunked for T > 1, one-step for T == 1),
                ``"chunk"``, ``"naive"``, ``"step"`` or ``"kernel"`` (the compiled CPU kernels of
                :mod:`rwkvkit.inference`, forward only).
            full_output: True (default): logits for every position. False: logits for the last
                position only, ``[B, 1, V]`` (what generation needs after a prompt; the output
                head then costs one row instead of ``T``, the official package's
                ``full_output=False``).
            return_hidden: False (default): logits. True: the head's input instead, the hidden
                states after ``ln_out`` ``[B, T, C]`` (in their own dtype), for a loss that applies
                ``head`` itself in chunks (``rwkvkit.training.loss.fused_lm_loss``, which never holds
                the ``[B, T, V]`` logits); ``new_state.logits`` is still the last position's logits.

        Returns:
            ``(logits, new_state)``: float32 logits ``[B, T, V]`` (``[B, 1, V]`` with
            ``full_output=False``; the hidden states with ``return_hidden=True``); the state after
            the last token (``new_state.logits`` holds the last position's logits). The input state
            is not modified.
        """
        tokens, state = self._begin(tokens, state)
        att_shift, wkv, ffn_shift = [], [], []

        x = self.emb(tokens)
        v_first = None  # RWKV-7: layer 0's values, shared with every later layer
        for i, block in enumerate(self.blocks):
            x, s_att, s_wkv, s_ffn, v_first = block(
                x, state["att_shift"][i], state["wkv"][i], state["ffn_shift"][i], v_first, impl=impl
            )
            att_shift.append(s_att)
            wkv.append(s_wkv)
            ffn_shift.append(s_ffn)

        if not full_output:
            x = x[:, -1:]
        tensors = {"att_shift": att_shift, "wkv": wkv, "ffn_shift": ffn_shift}
        x = self.ln_out(x)
        if return_hidden:
            with torch.no_grad():  # one row per sequence, for the state
                last = self.head(x[:, -1:]).float()
            return x, self._end(tensors, last)
        logits = self.head(x).float()
        return logits, self._end(tensors, logits)
