"""The tokenizer side of generation: prompts in, streamed text with stop strings out.

:class:`TextTracker` is the one streaming detokeniser of rwkvkit: :class:`~rwkvkit.generation.Generation`
(so :func:`rwkvkit.generate` and ``rwkvkit generate``) and :class:`~rwkvkit.generation.BatchEngine`
feed it the generated ids one by one and release the text it returns. The helpers below read what
generation needs from a tokenizer: ``encode``, ``decode``, ``vocab_size``, ``eos_id`` and, preferably,
``stream_decoder()``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from numbers import Integral
from typing import Any

import torch

from rwkvkit.errors import ConfigError
from rwkvkit.generation.sampling import penalty_weight

__all__ = ["TextTracker", "prompt_ids", "token_weights", "vocab_limit_of"]


def prompt_ids(prompt: str | Sequence[int] | torch.Tensor, tokenizer: Any, hint: str = "") -> list[int]:
    """A prompt (text, ids or a tensor of ids) as a list of ids; text needs ``tokenizer``."""
    if isinstance(prompt, str):
        if tokenizer is None:
            raise ConfigError(f"a text prompt needs a tokenizer{hint}")
        return list(tokenizer.encode(prompt)) if prompt else []
    if isinstance(prompt, bytes):
        raise ConfigError("prompt must be a str or a sequence of token ids, not bytes: decode it first")
    if isinstance(prompt, torch.Tensor):
        return prompt.reshape(-1).tolist()
    return list(prompt)


def vocab_limit_of(tokenizer: Any) -> int | None:
    """The tokenizer's ``vocab_size``: ids at or above it cannot be decoded, so they are never sampled
    (a model's embedding may be padded past it: World models have 65536 logits for 65530 ids)."""
    size = getattr(tokenizer, "vocab_size", None) if tokenizer is not None else None
    ok = isinstance(size, Integral) and not isinstance(size, bool) and size >= 1
    return int(size) if ok else None


def token_weights(tokenizer: Any) -> Callable[[int], float]:
    """``id -> occurrence weight`` for the frequency penalty, by the official rule
    (:func:`~rwkvkit.generation.sampling.penalty_weight` of the decoded token, cached per id);
    weight 1 for every id without a tokenizer."""
    if tokenizer is None:
        return lambda _token: 1.0
    cache: dict[int, float] = {}

    def weight(token: int) -> float:
        if token not in cache:
            cache[token] = penalty_weight(tokenizer.decode([token]))
        return cache[token]

    return weight


class _PendingDecoder:
    """Stream decoder for tokenizers without ``stream_decoder()``: the official strategy.

    Pending tokens are decoded together and released once the text has no U+FFFD (so a character
    split across tokens is never emitted half-way); ``flush`` releases whatever is left.
    """

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._pending: list[int] = []

    def push(self, token_id: int) -> str:
        if self._tokenizer is None:  # ids only: no text
            return ""
        self._pending.append(token_id)
        text = self._tokenizer.decode(self._pending)
        if "\ufffd" in text:
            return ""
        self._pending = []
        return text

    def flush(self) -> str:
        text = self._tokenizer.decode(self._pending) if self._pending else ""
        self._pending = []
        return text


class TextTracker:
    """Streaming detokenisation with stop strings for one sequence.

    ``push(id)`` takes the next generated id and ``close()`` ends the stream; both return the text
    released now, and the pieces concatenate to :attr:`text`. A piece is always complete text (never
    half a UTF-8 character: the tokenizer's ``stream_decoder()`` is used, or pending ids are decoded
    together until they form valid text). Text that could be the start of a stop string is held back
    until it is known not to be one. Once a stop string appears, :attr:`stop_hit` is True, the text
    ends right before it, and the caller stops generating (a stop string completed by the final
    flush in ``close()`` counts too).

    With ``tokenizer=None`` (token ids only) every piece is ''.

    Attributes:
        text: the text released so far.
        stop_hit: True once a stop string was found.
    """

    def __init__(self, tokenizer: Any, stop: tuple[str, ...] = ()) -> None:
        if tokenizer is None and stop:
            raise ConfigError("stop strings need a tokenizer")
        make = getattr(tokenizer, "stream_decoder", None)
        self._decoder = make() if callable(make) else _PendingDecoder(tokenizer)
        self._stop = stop
        self._buffer = ""  # decoded text not yet released (a possible stop-string prefix)
        self.text = ""
        self.stop_hit = False

    def push(self, token: int) -> str:
        """Feed one generated id; returns the text released by it ('' while it is held back)."""
        return self._advance(self._decoder.push(token), last=False)

    def close(self) -> str:
        """End the stream; returns the rest of the text (or the text before a stop string)."""
        return self._advance(self._decoder.flush(), last=True)

    def _release(self, piece: str) -> str:
        self.text += piece
        return piece

    def _advance(self, piece: str, last: bool) -> str:
        self._buffer += piece
        if self._stop:
            # The buffer never held a whole stop string before, so any match involves the new piece;
            # cut at the earliest one. A stop string wins over the end of the stream.
            hits = [i for i in (self._buffer.find(s) for s in self._stop) if i >= 0]
            if hits:
                out, self._buffer = self._buffer[: min(hits)], ""
                self.stop_hit = True
                return self._release(out)
        if last:
            out, self._buffer = self._buffer, ""
            return self._release(out)
        cut = len(self._buffer) - self._held_suffix()
        out, self._buffer = self._buffer[:cut], self._buffer[cut:]
        return self._release(out)

    def _held_suffix(self) -> int:
        """Length of the longest suffix of the buffer that is a proper prefix of some stop string."""
        best = 0
        for s in self._stop:
            for n in range(min(len(s) - 1, len(self._buffer)), best, -1):
                if self._buffer.endswith(s[:n]):
                    best = n
                    break
        return best
