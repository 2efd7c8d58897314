"""The common tokenizer interface, and the byte-level tokenizers built on it.

Every rwkvkit tokenizer (World, bytes, Hugging Face adapter) satisfies :class:`Tokenizer`:

* ``name``: a short label ("world", "bytes", a file stem).
* ``vocab_size``: the largest id the tokenizer can produce or decode, plus one. A model's embedding
  can be larger (World models have 65536 rows for 65530 ids); ids at or above ``vocab_size`` are
  rejected by ``decode``, so samplers should mask those logits.
* ``eos_id``: the end-of-document id, or None when the vocabulary has none.
* ``encode(text) -> list[int]`` and ``decode(ids) -> str``.
* ``decode_bytes(ids) -> bytes``: the raw bytes of the tokens, before UTF-8 decoding.
* ``stream_decoder()``: an incremental decoder for generation (see :class:`StreamDecoder`).

A *byte-level* tokenizer maps each id to a fixed byte string; decoding is concatenation followed
by UTF-8 decoding. :class:`ByteLevelTokenizer` implements ``decode``/``decode_bytes``/
``stream_decoder`` once for all of them; :class:`ByteTokenizer` (id = byte value) is the simplest.
"""

from __future__ import annotations

import codecs
import operator
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol, runtime_checkable

from rwkvkit.errors import TokenizerError


@runtime_checkable
class StreamDecoder(Protocol):
    """Turns a stream of token ids into text without ever splitting a UTF-8 character.

    ``push(token_id)`` returns the text that became complete with this token ("" if the token only
    started a multi-byte character). ``flush()`` returns whatever is held back (incomplete bytes
    become U+FFFD) and resets the decoder. For a byte-level tokenizer the concatenation of all
    pieces, flush included, equals ``decode(all_ids)``.
    """

    def push(self, token_id: int) -> str: ...

    def flush(self) -> str: ...


@runtime_checkable
class Tokenizer(Protocol):
    """The interface every rwkvkit tokenizer provides (see the module docstring)."""

    name: str
    vocab_size: int
    eos_id: int | None

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Iterable[int]) -> str: ...

    def decode_bytes(self, ids: Iterable[int]) -> bytes: ...

    def stream_decoder(self) -> StreamDecoder: ...


def as_id_list(ids: Iterable[int]) -> list[int]:
    """``ids`` (list, tuple, 1-D numpy array or torch tensor, any iterable of ints) as a list of ints."""
    if isinstance(ids, list):
        return ids
    tolist = getattr(ids, "tolist", None)  # numpy arrays and torch tensors: one C-level conversion
    if tolist is not None:
        out = tolist()
        if not isinstance(out, list):  # a 0-d array/tensor
            out = [out]
        return out
    if isinstance(ids, int):
        return [ids]
    return list(ids)


def bad_id_error(name: str, token_id: object, vocab_size: int) -> TokenizerError:
    """The one-line error for an id the tokenizer cannot decode."""
    return TokenizerError(
        f"token id {token_id!r} is not in the {name!r} tokenizer's vocabulary (valid ids: "
        f"0..{vocab_size - 1}); if it came from a model whose embedding is larger than the vocabulary, "
        "mask logits at and above tokenizer.vocab_size before sampling, or use the tokenizer the model "
        "was trained with"
    )


class Utf8StreamDecoder:
    """A :class:`StreamDecoder` over a function id -> bytes.

    It feeds the bytes to Python's incremental UTF-8 decoder (``errors="replace"``), which keeps an
    incomplete trailing sequence (at most 3 bytes) until the next token completes it, and replaces
    bytes that can never become valid (a stray continuation byte, an invalid lead byte, a truncated
    sequence followed by a non-continuation byte) right away. So every piece is whole characters,
    and the pieces concatenate to ``bytes.decode("utf-8", "replace")`` of all the bytes.
    """

    __slots__ = ("_token_bytes", "_decoder")

    def __init__(self, token_bytes: Callable[[int], bytes]) -> None:
        self._token_bytes = token_bytes
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        """Text completed by ``token_id`` ("" while a multi-byte character is still incomplete)."""
        return self._decoder.decode(self._token_bytes(token_id))

    def flush(self) -> str:
        """Held-back bytes (as U+FFFD: they never became a whole character); resets the decoder."""
        out = self._decoder.decode(b"", final=True)
        self._decoder.reset()
        return out


class ByteLevelTokenizer:
    """Base class of tokenizers whose ids each stand for a fixed byte string.

    Subclasses fill ``self._table`` (index = id, value = the token's bytes, or None for an id the
    vocabulary does not define) and set ``name``, ``vocab_size`` (= ``len(self._table)``) and
    ``eos_id``, and implement :meth:`encode_bytes`. The end-of-document id, if any, maps to ``b""``
    so that decoding a sequence that contains it just drops it.
    """

    name: str
    vocab_size: int
    eos_id: int | None
    _table: list[bytes | None]

    def encode_bytes(self, data: bytes) -> list[int]:
        """Token ids of raw bytes (no UTF-8 requirement)."""
        raise NotImplementedError

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (encoded as UTF-8 first; no normalization, no special tokens)."""
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise TokenizerError(
                f"text has a lone surrogate {text[e.start]!r} at index {e.start}, which is not valid "
                "Unicode; clean the text (e.g. read files with errors='replace') or pass bytes to "
                "encode_bytes()"
            ) from None
        except AttributeError:
            raise TypeError(f"encode() takes a str, not {type(text).__name__}") from None
        return self.encode_bytes(data)

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes of one token (``b""`` for the end-of-document id); TokenizerError if undefined."""
        table = self._table
        try:
            i = operator.index(token_id)  # ints, numpy integers, 0-d integer tensors
        except TypeError:
            raise bad_id_error(self.name, token_id, self.vocab_size) from None
        if 0 <= i < len(table):
            b = table[i]
            if b is not None:
                return b
        raise bad_id_error(self.name, token_id, self.vocab_size)

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """Concatenated bytes of ``ids`` (any iterable of ints, a numpy array or a 1-D tensor)."""
        seq = as_id_list(ids)
        if not seq:
            return b""
        table = self._table
        # min/max first: a negative index would silently wrap around in a Python list
        if min(seq) < 0 or max(seq) >= len(table):
            bad = next(i for i in seq if not 0 <= i < len(table))
            raise bad_id_error(self.name, bad, self.vocab_size)
        try:
            return b"".join(map(table.__getitem__, seq))
        except TypeError:  # a None entry: an id inside the range that the vocabulary does not define
            bad = next(i for i in seq if table[i] is None)
            raise bad_id_error(self.name, bad, self.vocab_size) from None

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``: the bytes decoded as UTF-8 with ``errors="replace"``.

        Invalid or truncated UTF-8 becomes U+FFFD where it occurs and the rest of the text is kept.
        (The official ``TRIE_TOKENIZER.decode`` instead returns a single ``'\\ufffd'`` for the whole
        call when the bytes are not valid UTF-8; for valid UTF-8 the two agree.)
        """
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def stream_decoder(self) -> Utf8StreamDecoder:
        """An incremental decoder (see :class:`Utf8StreamDecoder`)."""
        return Utf8StreamDecoder(self.token_bytes)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, vocab_size={self.vocab_size}, eos_id={self.eos_id})"
        )


class ByteTokenizer(ByteLevelTokenizer):
    """One token per byte: id = byte value, ids 0..255, ``vocab_size`` 256.

    There is no end-of-document id (``eos_id`` is None): id 0 is the byte 0x00, like every other
    byte, so any byte string round-trips exactly. Models trained with it need no special tokens.
    """

    def __init__(self) -> None:
        self.name = "bytes"
        self.vocab_size = 256
        self.eos_id = None
        self._table = [bytes([b]) for b in range(256)]

    def encode_bytes(self, data: bytes | bytearray | memoryview) -> list[int]:
        """The byte values of ``data`` (``list(data)``: one C-level pass)."""
        return list(bytes(data))

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """``bytes(ids)``; TokenizerError for an id outside 0..255."""
        seq = as_id_list(ids)
        try:
            return bytes(seq)
        except (ValueError, TypeError):
            bad = next((i for i in seq if not (isinstance(i, int) and 0 <= i < 256)), None)
            if bad is None:
                raise
            raise bad_id_error(self.name, bad, self.vocab_size) from None


__all__: Sequence[str] = [
    "ByteLevelTokenizer",
    "ByteTokenizer",
    "StreamDecoder",
    "Tokenizer",
    "Utf8StreamDecoder",
    "as_id_list",
    "bad_id_error",
]
