"""The byte-level tokenizer (id = byte value) and the shared UTF-8 stream decoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rwkvkit.errors import TokenizerError
from rwkvkit.tokenizer import ByteTokenizer, Tokenizer, load_tokenizer

SETTINGS = settings(max_examples=200, deadline=None)


@pytest.fixture(scope="module")
def tok() -> ByteTokenizer:
    t = load_tokenizer("bytes")
    assert isinstance(t, ByteTokenizer)
    return t


def test_interface(tok) -> None:
    assert isinstance(tok, Tokenizer)
    assert (tok.name, tok.vocab_size, tok.eos_id) == ("bytes", 256, None)
    assert load_tokenizer("bytes") is tok
    assert tok.encode("hé\x00") == [104, 195, 169, 0]
    assert tok.decode(np.array([104, 105])) == tok.decode(torch.tensor([104, 105])) == "hi"


@SETTINGS
@given(text=st.text(alphabet=st.characters(exclude_categories=("Cs",))))
def test_text_round_trip(tok, text: str) -> None:
    ids = tok.encode(text)
    assert ids == list(text.encode("utf-8"))
    assert tok.decode(ids) == text


@SETTINGS
@given(raw=st.binary(max_size=200))
def test_bytes_round_trip_and_stream(tok, raw: bytes) -> None:
    ids = tok.encode_bytes(raw)
    assert tok.decode_bytes(ids) == raw
    assert tok.decode(ids) == raw.decode("utf-8", errors="replace")
    dec = tok.stream_decoder()
    pieces = [dec.push(i) for i in ids] + [dec.flush()]
    assert "".join(pieces) == raw.decode("utf-8", errors="replace")


@pytest.mark.parametrize("bad", [256, -1, 1000])
def test_rejects_ids_outside_0_255(tok, bad: int) -> None:
    with pytest.raises(TokenizerError, match=f"token id {bad}"):
        tok.decode([65, bad])
    with pytest.raises(TokenizerError, match=f"token id {bad}"):
        tok.stream_decoder().push(bad)
