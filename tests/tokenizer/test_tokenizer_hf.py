"""The Hugging Face tokenizer.json adapter: the GPT-NeoX 20B tokenizer and a non-byte-level one."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from rwkvkit.errors import TokenizerError
from rwkvkit.tokenizer import Tokenizer, load_tokenizer
from rwkvkit.tokenizer.hf import HFTokenizer, _bytes_to_unicode

SHARED_DATA = Path(
    os.environ.get("RWKVKIT_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data")
)
NEOX = SHARED_DATA / "tokenizers" / "20B_tokenizer.json"
needs_neox = pytest.mark.skipif(not NEOX.is_file(), reason=f"{NEOX} not present")
SETTINGS = settings(max_examples=150, deadline=None)


@pytest.fixture(scope="module")
def neox() -> HFTokenizer:
    t = load_tokenizer(NEOX)
    assert isinstance(t, HFTokenizer)
    return t


def test_bytes_to_unicode_is_gpt2s_table() -> None:
    table = _bytes_to_unicode()
    assert len(set(table.values())) == 256
    assert table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ" and table[ord("A")] == "A"


@needs_neox
def test_neox_vector(neox) -> None:
    assert isinstance(neox, Tokenizer)
    assert (neox.vocab_size, neox.eos_id) == (50277, 0)
    ids = neox.encode("Hello world\n\nThe Eiffel tower")
    assert ids == [12092, 1533, 187, 187, 510, 444, 1648, 293, 15469]
    assert neox.decode(ids) == "Hello world\n\nThe Eiffel tower"
    assert neox.encode("a<|endoftext|>") == [66, 0]  # special tokens in the text are parsed
    assert neox.decode([66, 0, 1, 50276]) == "a  "  # specials skipped; 50276 is two spaces


@needs_neox
@SETTINGS
@given(ids=st.lists(st.integers(0, 50276), max_size=40))
def test_neox_decode_bytes_agrees_with_hf_decode(neox, ids: list[int]) -> None:
    # our per-token byte table (incl. added tokens: specials -> nothing, space runs -> spaces) must
    # reproduce the ByteLevel decoder exactly, including U+FFFD for invalid UTF-8
    assert neox.decode_bytes(ids).decode("utf-8", errors="replace") == neox.decode(ids)
    dec = neox.stream_decoder()
    assert "".join([dec.push(i) for i in ids] + [dec.flush()]) == neox.decode(ids)


@needs_neox
@SETTINGS
@given(text=st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=100))
def test_neox_round_trip_and_stream(neox, text: str) -> None:
    import unicodedata

    # HF (and so the official package) parses special tokens in the text: they encode to their ids
    # and decode to nothing, so they do not round-trip
    assume("<|endoftext|>" not in text and "<|padding|>" not in text)
    ids = neox.encode(text)
    assert neox.decode(ids) == unicodedata.normalize("NFC", text)  # the 20B tokenizer normalizes to NFC
    dec = neox.stream_decoder()
    pieces = [dec.push(i) for i in ids] + [dec.flush()]
    assert "".join(pieces) == neox.decode(ids)
    assert all("\ufffd" not in p for p in pieces) or "\ufffd" in text


@needs_neox
@pytest.mark.parametrize("bad", [50277, 50303, -1])
def test_neox_rejects_unknown_ids(neox, bad: int) -> None:
    with pytest.raises(TokenizerError, match=f"token id {bad}"):
        neox.decode([12092, bad])
    with pytest.raises(TokenizerError, match=f"token id {bad}"):
        neox.stream_decoder().push(bad)


def _word_level_json(path: Path) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {"[UNK]": 0, "</s>": 1, "hello": 2, "world": 3, "!": 4, "héllo": 5}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    tok.add_special_tokens(["</s>"])
    out = path / "tokenizer.json"
    tok.save(str(out))
    return out


def test_non_byte_level_tokenizer(tmp_path) -> None:
    path = _word_level_json(tmp_path)
    tok = load_tokenizer(tmp_path)  # a directory holding tokenizer.json
    assert isinstance(tok, HFTokenizer) and tok.name == "tokenizer"
    assert (tok.vocab_size, tok.eos_id) == (6, 1)
    ids = tok.encode("hello héllo world !")
    assert ids == [2, 5, 3, 4]
    assert tok.decode(ids) == "hello héllo world !"
    assert tok.decode_bytes(ids) == "hello héllo world !".encode()
    dec = tok.stream_decoder()
    assert "".join([dec.push(i) for i in ids] + [dec.flush()]) == tok.decode(ids)
    assert load_tokenizer(path) is tok
    # a special token decodes to nothing, so pushing it emits nothing
    assert [dec.push(i) for i in [2, 1, 3]] + [dec.flush()] == ["hello", "", " world", ""]
    with pytest.raises(TokenizerError, match="token id 6"):
        dec.push(6)
    with pytest.raises(TokenizerError, match="token id 1.5"):
        dec.push(1.5)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "content",
    ["{not json", json.dumps({"version": "1.0", "model": {"type": "Nonsense"}}), ""],
    ids=["syntax", "schema", "empty"],
)
def test_malformed_tokenizer_json(tmp_path, content: str) -> None:
    path = tmp_path / "tokenizer.json"
    path.write_text(content)
    with pytest.raises(TokenizerError, match="cannot load Hugging Face tokenizer") as e:
        load_tokenizer(path)
    assert "\n" not in str(e.value)
