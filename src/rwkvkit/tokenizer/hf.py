"""Adapter over a Hugging Face ``tokenizers`` ``tokenizer.json`` (e.g. the GPT-NeoX 20B tokenizer).

``encode`` is ``Tokenizer.encode(text).ids`` and ``decode`` is ``Tokenizer.decode(ids)`` (special
tokens skipped), exactly what the official ``rwkv`` package does for its 20B tokenizer
(``utils.PIPELINE``). The adapter adds the rwkvkit interface on top: range-checked ids,
``decode_bytes`` and a ``stream_decoder``.

For byte-level BPE tokenizers (decoder ``ByteLevel``, as in GPT-2, GPT-NeoX, Llama 3) each token
stands for fixed bytes: the characters of the token string map back to bytes through GPT-2's
``bytes_to_unicode`` table. A token string with a character outside that table (e.g. an added token
like a run of plain spaces) stands for its own UTF-8 bytes, and special tokens for nothing, which
is what the ``ByteLevel`` decoder does. Streaming then works on bytes, as for the World tokenizer.
For other decoders, ``decode_bytes`` is the UTF-8 of ``decode`` and the stream decoder re-decodes a
short window of recent ids (best effort: decoders that strip or add spaces at word starts can differ
from a one-shot ``decode`` by that whitespace).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from rwkvkit.errors import TokenizerError
from rwkvkit.tokenizer.byte_level import Utf8StreamDecoder, as_id_list, bad_id_error

if TYPE_CHECKING:
    import tokenizers

# Tokens that end a document in common vocabularies, in order of preference.
_EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>", "<|eot_id|>", "[SEP]")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (the ``ByteLevel`` alphabet)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    table = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in table:  # control bytes, space, 0x7f-0xa0, 0xad go to U+0100 and up
            table[b] = chr(256 + extra)
            extra += 1
    return table


class _TextStreamDecoder:
    """Incremental decoding by re-decoding recent ids (for tokenizers that are not byte-level).

    Keeps the ids from the last emitted point on; a token's text is emitted once decoding grows the
    text and does not end in U+FFFD (an unfinished byte-fallback character).
    """

    def __init__(self, decode: Callable[[list[int]], str], check: Callable[[int], int]) -> None:
        self._decode, self._check = decode, check
        self._ids: list[int] = []
        self._read = 0  # ids[:read] are already emitted (kept as left context for the decoder)

    def push(self, token_id: int) -> str:
        self._ids.append(self._check(token_id))
        before = self._decode(self._ids[: self._read])
        text = self._decode(self._ids)
        if len(text) > len(before) and not text.endswith("\ufffd") and text.startswith(before):
            del self._ids[: self._read]  # the newly emitted ids become the only left context
            self._read = len(self._ids)
            return text[len(before) :]
        return ""

    def flush(self) -> str:
        before = self._decode(self._ids[: self._read])
        text = self._decode(self._ids)
        self._ids, self._read = [], 0
        return text[len(before) :] if text.startswith(before) else text


class HFTokenizer:
    """The rwkvkit tokenizer interface over a ``tokenizers.Tokenizer``.

    ``vocab_size`` is the largest id (added tokens included) + 1: 50277 for the 20B tokenizer.
    ``eos_id`` is the id of the first of ``<|endoftext|>``, ``</s>``, ``<|end_of_text|>``, ``<eos>``,
    ``<|eot_id|>``, ``[SEP]`` the vocabulary has (0 for the 20B tokenizer), else None.
    """

    def __init__(self, tokenizer: tokenizers.Tokenizer, name: str) -> None:
        from tokenizers import decoders

        self._tok = tokenizer
        self.name = name
        vocab = tokenizer.get_vocab(with_added_tokens=True)
        if not vocab:
            raise TokenizerError(f"Hugging Face tokenizer {name!r} has an empty vocabulary")
        self.vocab_size = max(vocab.values()) + 1
        self._defined = bytearray(self.vocab_size)  # 1 where the id has a token
        for i in vocab.values():
            self._defined[i] = 1
        self.eos_id: int | None = next((vocab[t] for t in _EOS_CANDIDATES if t in vocab), None)
        self._table: list[bytes | None] | None = None
        if isinstance(tokenizer.decoder, decoders.ByteLevel):
            special = {i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special}
            char_to_byte = {c: b for b, c in _bytes_to_unicode().items()}
            table: list[bytes | None] = [None] * self.vocab_size
            for token, i in vocab.items():
                if i in special:
                    table[i] = b""  # decode() skips special tokens
                else:
                    try:
                        table[i] = bytes(char_to_byte[c] for c in token)
                    except KeyError:  # not a byte-level string: the decoder passes it through as UTF-8
                        table[i] = token.encode("utf-8")
            self._table = table

    @property
    def tokenizer(self) -> tokenizers.Tokenizer:
        """The wrapped ``tokenizers.Tokenizer``."""
        return self._tok

    def _check(self, token_id: int) -> int:
        try:
            i = operator.index(token_id)  # ints, numpy integers, 0-d integer tensors
        except TypeError:
            raise bad_id_error(self.name, token_id, self.vocab_size) from None
        if not (0 <= i < self.vocab_size and self._defined[i]):
            raise bad_id_error(self.name, token_id, self.vocab_size)
        return i

    def _checked(self, ids: Iterable[int]) -> list[int]:
        seq = as_id_list(ids)
        if seq and (
            min(seq) < 0 or max(seq) >= self.vocab_size or not all(map(self._defined.__getitem__, seq))
        ):
            for i in seq:
                self._check(i)
        return seq

    def encode(self, text: str) -> list[int]:
        """``Tokenizer.encode(text).ids`` (with the file's normalizer, pre-tokenizer and post-processor)."""
        if not isinstance(text, str):
            raise TypeError(f"encode() takes a str, not {type(text).__name__}")
        return self._tok.encode(text).ids

    def decode(self, ids: Iterable[int]) -> str:
        """``Tokenizer.decode(ids)``: special tokens are skipped; invalid UTF-8 becomes U+FFFD."""
        return self._tok.decode(self._checked(ids))

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The raw bytes of ``ids`` for byte-level tokenizers, else the UTF-8 of :meth:`decode`."""
        seq = self._checked(ids)
        if self._table is None:
            return self._tok.decode(seq).encode("utf-8")
        return b"".join(map(self._table.__getitem__, seq))  # type: ignore[arg-type]

    def stream_decoder(self) -> Utf8StreamDecoder | _TextStreamDecoder:
        """An incremental decoder: byte-based for byte-level tokenizers, else re-decoding (best effort)."""
        if self._table is not None:
            table = self._table

            def token_bytes(token_id: int) -> bytes:
                return table[self._check(token_id)]  # type: ignore[return-value]

            return Utf8StreamDecoder(token_bytes)
        return _TextStreamDecoder(self._tok.decode, self._check)

    @classmethod
    def from_file(cls, path: str | Path, name: str | None = None) -> HFTokenizer:
        """Load a ``tokenizer.json``; TokenizerError if it is missing or not a valid tokenizer file."""
        from tokenizers import Tokenizer

        path = Path(path)
        if not path.is_file():
            raise TokenizerError(f"tokenizer file not found: {path}")
        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as e:  # the Rust side raises plain Exception with a serde message
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise TokenizerError(
                f"cannot load Hugging Face tokenizer {path}: {msg}; expected a tokenizer.json written by "
                "the `tokenizers` library"
            ) from None
        return cls(tok, name=name or path.stem)

    def __repr__(self) -> str:
        return f"HFTokenizer(name={self.name!r}, vocab_size={self.vocab_size}, eos_id={self.eos_id})"


__all__ = ["HFTokenizer"]
