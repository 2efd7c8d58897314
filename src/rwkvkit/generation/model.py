"""What generation needs from a model and its recurrent state (the contract, written as Protocols).

:func:`rwkvkit.generate`, :class:`~rwkvkit.generation.TokenStream` and
:class:`~rwkvkit.generation.BatchEngine` call a model only through :func:`forward_last`, and read
nothing else from it but the optional attributes below; the state is opaque to them except for the
batching methods of :class:`BatchableState`. See the package docstring (:mod:`rwkvkit.generation`)
for which models satisfy what.
"""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Integral
from typing import Any, Protocol

import torch

from rwkvkit.errors import VocabularyError

__all__ = [
    "BatchableState",
    "GenerativeModel",
    "check_prompt_tokens",
    "forward_last",
    "model_device",
    "model_vocab_size",
]


class GenerativeModel(Protocol):
    """``logits, state = model(tokens, state=state)``: the one call generation makes.

    ``tokens`` is a LongTensor ``[B, T]`` on the model's device (ids already checked against the
    vocabulary), ``state=None`` starts fresh sequences, and ``logits`` is float ``[B, T, V]`` (or
    ``[B, 1, V]``, the last position only, when called with ``full_output=False``). The returned state
    is passed back as it is on the next call; the given state must not be modified (so one saved state
    can seed many generations). Every batch row must be computed independently of the others.

    Optional attributes, read when present:

    * ``config.vocab_size``: lets prompt ids and option ids be checked before any model call;
    * ``device`` (else the device of the first parameter, else CPU): where token tensors are made;
    * ``accepts_full_output = True``: the model takes ``full_output=False`` and then computes the
      output head for the last position only (prefill then costs one head row per sequence);
    * ``initial_state(batch_size)``: a fresh state, needed only by :class:`BatchEngine` to prefill a
      fresh prompt and one continuing a given state in the same forward.
    """

    def __call__(self, tokens: torch.Tensor, state: Any = None) -> tuple[torch.Tensor, Any]: ...


class BatchableState(Protocol):
    """The state :class:`~rwkvkit.generation.BatchEngine` needs (``rwkvkit.State`` is one).

    ``select`` keeps some batch rows; ``type(state).cat`` stacks states along the batch. An optional
    ``logits`` attribute (``[B, V]`` or ``[V]``, the logits after the last consumed token) lets a
    request continue from the state with an empty prompt.
    """

    def select(self, index: Sequence[int]) -> BatchableState: ...

    @staticmethod
    def cat(states: Sequence[BatchableState]) -> BatchableState: ...


def forward_last(model: Any, tokens: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
    """``model(tokens [B, T], state)`` -> ``(logits [B, T or 1, V], state)``; only the last position is used.

    Models with a true ``accepts_full_output`` attribute (rwkvkit's RWKV) are asked for the last
    position's logits only (``full_output=False``: the output head then costs one row per sequence,
    not ``T``); any other model is called plainly.
    """
    if getattr(model, "accepts_full_output", False):
        out, state = model(tokens, state=state, full_output=False)
    else:
        out, state = model(tokens, state=state)
    B, T = tokens.shape
    if out.ndim != 3 or out.shape[0] != B or out.shape[1] not in (1, T):
        raise RuntimeError(
            f"the model returned logits of shape {tuple(out.shape)}, expected [{B}, {T}, V] "
            f"for tokens [{B}, {T}]"
        )
    return out, state


def model_device(model: Any) -> torch.device:
    """``model.device``, else the device of its first parameter or buffer, else CPU."""
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    if isinstance(model, torch.nn.Module):
        for p in model.parameters():
            return p.device
        for b in model.buffers():
            return b.device
    return torch.device("cpu")


def model_vocab_size(model: Any) -> int | None:
    """``model.config.vocab_size`` when the model has one, else None (then learned from the logits)."""
    size = getattr(getattr(model, "config", None), "vocab_size", None)
    return int(size) if isinstance(size, Integral) and not isinstance(size, bool) else None


def check_prompt_tokens(ids: Sequence[int], vocab_size: int) -> None:
    """Raise :class:`~rwkvkit.errors.VocabularyError` (an ``InputError`` and a ``TokenizerError``) when
    a prompt id is outside ``[0, vocab_size)``.

    Generation checks prompt ids here, once, on the host list before any model call, so the model's
    forward needs no check of its own (which would be a device synchronisation per call).
    """
    bad = [t for t in ids if not 0 <= t < vocab_size]
    if bad:
        raise VocabularyError(
            f"the prompt has token ids {bad[:5]} outside the model vocabulary [0, {vocab_size}): "
            "the tokenizer does not fit this model; load the tokenizer the model was trained with"
        )
