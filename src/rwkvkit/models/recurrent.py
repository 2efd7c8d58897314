"""What every rwkvkit recurrent language model shares: token checks, the state, the bookkeeping.

:class:`RecurrentLM` is the base of :class:`~rwkvkit.models.rwkv.model.RWKV`,
:class:`~rwkvkit.models.arwkv.ARWKV` and
:class:`~rwkvkit.models.rwkv.perspectives.MultiPerspectiveRWKV`. Their contract, the one
:func:`rwkvkit.generate` and :class:`rwkvkit.generation.BatchEngine` rely on::

    logits, state = model(tokens [B, T], state or None, full_output=True | False)
    logits: float32 [B, T, V] ([B, 1, V] with full_output=False); state: an rwkvkit.State
    (state.logits holds the last position's logits; the input state is never modified)

Token ids are fully checked (shape, dtype, range) by :func:`check_tokens` at the public boundary:
``rwkvkit.generate``, the batch engine and the CLI call it once per prompt. A model's forward checks
shape and dtype, and the range only for ids it gets on the CPU outside ``torch.compile``: reading a
GPU tensor's minimum would stop the host until the GPU catches up (a device sync per forward) and
break CUDA graphs and ``torch.compile(fullgraph=True)``.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from rwkvkit.errors import InputError
from rwkvkit.state import State

_INT_DTYPES = (torch.long, torch.int32, torch.int16, torch.uint8, torch.int8)


def check_tokens(tokens, vocab_size: int, device: torch.device, *, check_range: bool = True) -> torch.Tensor:
    """Token ids as a ``[B, T]`` LongTensor on ``device`` (a 1-D ``[T]`` is ``B = 1``), or one clear
    InputError: wrong shape or dtype, empty, or (``check_range``) an id outside ``[0, vocab_size)``."""
    if not isinstance(tokens, torch.Tensor):
        tokens = torch.as_tensor(tokens, dtype=torch.long)
    if tokens.dim() == 1:
        tokens = tokens.unsqueeze(0)
    if tokens.dim() != 2:
        raise InputError(f"tokens must be a [B, T] LongTensor, got shape {tuple(tokens.shape)}")
    if tokens.dtype not in _INT_DTYPES:
        raise InputError(f"tokens must be integer ids, got dtype {tokens.dtype}")
    if tokens.shape[1] == 0:
        raise InputError("tokens is empty (T = 0); pass at least one token")
    if check_range:
        lo, hi = int(tokens.min()), int(tokens.max())
        if lo < 0 or hi >= vocab_size:
            raise InputError(
                f"token id {hi if hi >= vocab_size else lo} is outside the model's "
                f"vocabulary [0, {vocab_size}); is the tokenizer the right one for this model?"
            )
    return tokens.to(device=device, dtype=torch.long)


def range_check_is_free(tokens) -> bool:
    """Whether checking the ids' range costs no device sync: host data, outside ``torch.compile``."""
    on_host = not isinstance(tokens, torch.Tensor) or tokens.device.type == "cpu"
    return on_host and not torch.compiler.is_compiling()


class RecurrentLM(nn.Module):
    """Base of rwkvkit's recurrent language models (see the module docstring for the contract).

    A subclass sets ``self.config`` (with ``vocab_size``), has an ``emb`` embedding (or overrides
    :attr:`embedding`) and, where its state is not described by ``self.config``, overrides
    :attr:`state_config` (the RWKVConfig whose :class:`rwkvkit.State` it carries).
    """

    accepts_full_output = True  # forward(..., full_output=False): generation asks for the last logits only

    @property
    def embedding(self) -> nn.Embedding:
        return self.emb

    @property
    def state_config(self):
        return self.config

    @property
    def dtype(self) -> torch.dtype:
        return self.embedding.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.embedding.weight.device

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def initial_state(self, batch_size: int = 1) -> State:
        """The state before any token (what ``state=None`` means)."""
        return State.initial(self.state_config, batch_size, device=self.device)

    def check_state(self, state: State, batch_size: int) -> None:
        """Raise StateError unless ``state`` fits this model and ``batch_size``."""
        state.check_fits(self.state_config, batch_size)

    def check_tokens(self, tokens) -> torch.Tensor:
        """``tokens`` as ``[B, T]`` ids on this model's device, fully checked (the public boundary)."""
        return check_tokens(tokens, self.config.vocab_size, self.device)

    def _begin(self, tokens, state: State | None) -> tuple[torch.Tensor, State]:
        """The forward's input checks (no device sync, see the module docstring) and its start state."""
        tokens = check_tokens(
            tokens, self.config.vocab_size, self.device, check_range=range_check_is_free(tokens)
        )
        B = tokens.shape[0]
        if state is None:
            state = self.initial_state(B)
        else:
            self.check_state(state, B)
        return tokens, state

    def _end(self, tensors: dict[str, list[torch.Tensor] | torch.Tensor], logits: torch.Tensor) -> State:
        """The state after a forward: per-layer lists stacked ``[L, B, ...]``, fp32, with the logits
        of the last position (so that generation can continue from a saved state)."""
        stacked = {n: (torch.stack(t) if isinstance(t, list) else t).float() for n, t in tensors.items()}
        return State(stacked, self.state_config.version, logits=logits[:, -1].detach().clone())
