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

from rwkvkit.errors import InputError
from rwkvkit.layers.rwkv4 import RWKV4ChannelMix, RWKV4TimeMix
from rwkvkit.layers.rwkv5 import RWKV5TimeMix
from rwkvkit.layers.rwkv6 import RWKV6ChannelMix, RWKV6TimeMix
from rwkvkit.layers.rwkv7 import RWKV7ChannelMix, RWKV7TimeMix
from rwkvkit.models.rwkv.config import RWKVConfig
from rwkvkit.state import State

# version -> (time mix class, channel mix class); RWKV-5 keeps RWKV-4's channel mix
BLOCK_CLASSES = {
    "4": (RWKV4TimeMix, RWKV4ChannelMix),
    "5.0": (RWKV5TimeMix, RWKV4ChannelMix),
    "5.1": (RWKV5TimeMix, RWKV4ChannelMix),
    "5.2": (RWKV5TimeMix, RWKV4ChannelMix),
    "6": (RWKV6TimeMix, RWKV6ChannelMix),
    "7": (RWKV7TimeMix, RWKV7ChannelMix),
}


def check_tokens(tokens, vocab_size: int, device: torch.device) -> torch.Tensor:
    """Token ids as a ``[B, T]`` LongTensor on ``device`` (a 1-D ``[T]`` is ``B = 1``), or one clear
    InputError: wrong shape or dtype, empty, or an id outside ``[0, vocab_size)``."""
    if not isinstance(tokens, torch.Tensor):
        tokens = torch.as_tensor(tokens, dtype=torch.long)
    if tokens.dim() == 1:
        tokens = tokens.unsqueeze(0)
    if tokens.dim() != 2:
        raise InputError(f"tokens must be a [B, T] LongTensor, got shape {tuple(tokens.shape)}")
    if tokens.dtype not in (torch.long, torch.int32, torch.int16, torch.uint8, torch.int8):
        raise InputError(f"tokens must be integer ids, got dtype {tokens.dtype}")
    if tokens.shape[1] == 0:
        raise InputError("tokens is empty (T = 0); pass at least one token")
    lo, hi = int(tokens.min()), int(tokens.max())
    if lo < 0 or hi >= vocab_size:
        raise InputError(
            f"token id {hi if hi >= vocab_size else lo} is outside the model's "
            f"vocabulary [0, {vocab_size}); is the tokenizer the right one for this model?"
        )
    return tokens.to(device=device, dtype=torch.long)


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
        TimeMix, ChannelMix = BLOCK_CLASSES[config.version]
        self.att = TimeMix(config, layer_id, **dd)
        self.ffn = ChannelMix(config, layer_id, **dd)

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


class RWKV(nn.Module):
    """RWKV language model. ``logits, state = model(tokens, state)``."""

    accepts_full_output = True  # forward(..., full_output=False): generation asks for the last logits only

    def __init__(self, config: RWKVConfig, device=None, dtype=None) -> None:
        super().__init__()
        if config.version not in BLOCK_CLASSES:
            from rwkvkit.errors import UnsupportedVersionError

            raise UnsupportedVersionError(
                f"RWKV-{config.version} models are not implemented yet (available: "
                f"{', '.join('RWKV-' + v for v in BLOCK_CLASSES)})"
            )
        dd = {"device": device, "dtype": dtype}
        self.config = config
        self.emb = nn.Embedding(config.vocab_size, config.n_embd, **dd)
        self.blocks = nn.ModuleList(Block(config, i, **dd) for i in range(config.n_layer))
        self.ln_out = nn.LayerNorm(config.n_embd, eps=1e-5, **dd)
        self.head = nn.Linear(config.n_embd, config.vocab_size, bias=False, **dd)

    @property
    def dtype(self) -> torch.dtype:
        return self.emb.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.emb.weight.device

    def initial_state(self, batch_size: int = 1) -> State:
        """The state before any token (what ``state=None`` means)."""
        return State.initial(self.config, batch_size, device=self.device)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(
        self,
        tokens: torch.Tensor,
        state: State | None = None,
        *,
        impl: str = "auto",
        full_output: bool = True,
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

        Returns:
            ``(logits, new_state)``: float32 logits ``[B, T, V]`` (``[B, 1, V]`` with
            ``full_output=False``); the state after the last token
            (``new_state.logits`` holds the last position's logits). The input state is not modified.
        """
        tokens = self._check_tokens(tokens)
        B, T = tokens.shape
        if state is None:
            state = self.initial_state(B)
        else:
            state.check_fits(self.config, B)
        cfg = self.config
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
        logits = self.head(self.ln_out(x)).float()
        new_state = State(
            {
                "att_shift": torch.stack(att_shift).float(),
                "wkv": torch.stack(wkv).float(),
                "ffn_shift": torch.stack(ffn_shift).float(),
            },
            cfg.version,
            logits=logits[:, -1].detach().clone(),  # lets generation continue from a saved state
        )
        return logits, new_state

    def _check_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        return check_tokens(tokens, self.config.vocab_size, self.device)
