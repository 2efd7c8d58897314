"""The World tokenizer against docs/tokenizer.md#test-vectors and the official TRIE_TOKENIZER (the oracle).

Every encode path is checked: the Python walk for short inputs, and the numpy path (trie matcher,
vectorized greedy walk, piece deduplication) forced on short inputs with tiny blocks and chunks, so
that block edges, walker syncing and the no-cut fallback are all exercised by hypothesis.
"""

from __future__ import annotations

import contextlib
import os
import random
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rwkvkit
import rwkvkit.tokenizer.world as world_mod
from rwkvkit.errors import TokenizerError
from rwkvkit.tokenizer import Tokenizer, WorldTokenizer, load_tokenizer, world_vocab_path

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SPEC_VECTORS = [  # docs/tokenizer.md#test-vectors
    ("Hello world", [33155, 40213]),
    ("The Eiffel tower is in the city of", [6699, 304, 25740, 109, 39990, 4600, 4596, 22590, 30449, 4706]),
    ("\n\nUser: hi", [261, 24281, 59, 4571]),
    ("我们发现", [12605, 10402, 10997, 14446]),
    ("  indentation\n\tx = 1", [267, 41621, 33944, 260, 121, 296, 284]),
    ("<|endoftext|>", [61, 125, 25258, 7588, 2318, 125, 63]),
]


@pytest.fixture(scope="module")
def tok() -> WorldTokenizer:
    t = load_tokenizer("world")
    assert isinstance(t, WorldTokenizer)
    return t


@pytest.fixture(scope="module")
def official():
    from rwkv.rwkv_tokenizer import TRIE_TOKENIZER  # the package's tokenizer module only (no torch model)

    return TRIE_TOKENIZER(str(world_vocab_path()))


@pytest.fixture(scope="module")
def pieces(tok) -> list[bytes]:
    return [t for t in tok._table if t]


@contextlib.contextmanager
def numpy_path(block: int = 64, chunk: int = 4, budget: float = world_mod._DEEP_BUDGET):
    """Force the numpy encode path with tiny blocks and walker chunks."""
    with mock.patch.multiple(world_mod, _SMALL=0, _BLOCK=block, _WALK_CHUNK=chunk, _DEEP_BUDGET=budget):
        yield


# python: short inputs' walk; numpy: tiny blocks and walker chunks; numpy-wide: larger ones;
# numpy-bail: the matcher gives up at once, so blocks are walked in Python (the long-run fallback)
MODES = ["python", "numpy", "numpy-wide", "numpy-bail"]


def mode_ctx(mode: str):
    if mode == "python":
        return contextlib.nullcontext()
    if mode == "numpy":
        return numpy_path()
    if mode == "numpy-bail":
        return numpy_path(block=100, chunk=8, budget=0)
    return numpy_path(block=1000, chunk=16)


# Text that mixes everything: any code point (no surrogates), plus the characters that matter most
# for this vocabulary (spaces and newlines, which form long tokens; CJK; emoji; control characters).
SPECIAL_CHARS = list(" \n\t\r\x00\x7f\u3000我们发现的是😀👍🏽\u200d\ufeff") + ["é", "\u0301", "\U0010ffff"]
TEXT = st.text(
    alphabet=st.one_of(
        st.characters(exclude_categories=("Cs",)),
        st.sampled_from(SPECIAL_CHARS),
        st.characters(min_codepoint=0x20, max_codepoint=0x7E),
    ),
    max_size=300,
)


# -- facts and vectors ---------------------------------------------------------------------------


def test_vocabulary_facts(tok) -> None:
    assert isinstance(tok, Tokenizer)
    assert (tok.name, tok.vocab_size, tok.eos_id) == ("world", 65530, 0)
    assert [tok.token_bytes(b + 1) for b in range(256)] == [bytes([b]) for b in range(256)]
    assert max(len(t) for t in tok._table if t) == 128
    assert sum(1 for t in tok._table[1:] if not _valid_utf8(t)) == 486
    assert tok.decode([0]) == "" and tok.decode_bytes([0, 33155, 0]) == b"Hello"


def _valid_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("text", "ids"), SPEC_VECTORS)
def test_spec_vectors(tok, text: str, ids: list[int], mode: str) -> None:
    with mode_ctx(mode):
        assert tok.encode(text) == ids
    assert tok.decode(ids) == text


def test_top_level_lazy_attribute() -> None:
    assert rwkvkit.load_tokenizer("world") is load_tokenizer("world")


def test_loader_is_cached(tok) -> None:
    assert load_tokenizer("world") is tok
    assert load_tokenizer(world_vocab_path()) is load_tokenizer(str(world_vocab_path()))


# -- equality with the official tokenizer ----------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@SETTINGS
@given(text=TEXT)
def test_matches_official_on_random_text(tok, official, text: str, mode: str) -> None:
    with mode_ctx(mode):
        ids = tok.encode(text)
    assert ids == official.encode(text)
    assert tok.decode(ids) == text


@pytest.mark.parametrize("mode", MODES)
@SETTINGS
@given(data=st.data())
def test_matches_official_on_glued_vocabulary_pieces(tok, official, pieces, data, mode: str) -> None:
    # Pieces of real tokens glued together: the greedy match must often choose between a long token
    # and a shorter one followed by another; cut pieces (token prefixes/suffixes) make near misses.
    n = data.draw(st.integers(0, 40))
    parts = []
    for _ in range(n):
        t = pieces[data.draw(st.integers(0, len(pieces) - 1))]
        cut = data.draw(st.sampled_from(["whole", "whole", "prefix", "suffix"]))
        if cut == "prefix":
            t = t[: data.draw(st.integers(1, len(t)))]
        elif cut == "suffix":
            t = t[data.draw(st.integers(0, len(t) - 1)) :]
        parts.append(t * data.draw(st.sampled_from([1, 1, 1, 2, 5])))
    raw = b"".join(parts)  # not always valid UTF-8: encode_bytes takes any bytes
    with mode_ctx(mode):
        ids = tok.encode_bytes(raw)
    assert ids == official.encodeBytes(raw)
    assert tok.decode_bytes(ids) == raw


def _stdlib_text(limit: int) -> str:
    d = Path(os.__file__).parent
    out, size = [], 0
    for name in ["os.py", "typing.py", "argparse.py", "inspect.py", "_pydecimal.py", "difflib.py"]:
        text = (d / name).read_text(encoding="utf-8")
        out.append(text)
        size += len(text)
        if size >= limit:
            break
    return "".join(out)[:limit]


@pytest.mark.parametrize("mode", ["default", "small-blocks"])
def test_matches_official_on_real_files(tok, official, mode: str) -> None:
    text = _stdlib_text(300_000)
    # add prose in several scripts and long whitespace runs (tokens of up to 128 spaces)
    text += "\n" + "Der Eiffelturm steht in Paris. 我们发现了一个问题。Эйфелева башня 😀🎉\n" * 50
    text += " " * 5000 + "\t" * 300 + "x" + "\n" * 700 + "end"
    ctx = numpy_path(block=4096, chunk=64) if mode == "small-blocks" else contextlib.nullcontext()
    with ctx:
        ids = tok.encode(text)
    assert ids == official.encode(text)
    assert tok.decode(ids) == text


def test_long_run_without_cuts(tok, official) -> None:
    # 300 KB of spaces has no cut (every pair is inside a token), so blocks take the plain walk.
    text = " " * 300_001 + "a"
    assert tok.encode(text) == official.encode(text)


def test_hash_collision_falls_back(tok, official) -> None:
    # group() returns None on a collision; the block must then be tokenized directly.
    text = _stdlib_text(50_000)
    with mock.patch.object(world_mod._Segments, "group", lambda self, a, cuts: None):
        assert tok.encode(text) == official.encode(text)


def test_group_detects_collisions(tok) -> None:
    seg = tok._segments
    a = np.frombuffer(b"ab cd ab cd", dtype=np.uint8)
    cuts = seg.cuts(a)
    starts, lens, rep, inv = seg.group(a, cuts)
    assert len(rep) < len(starts)  # repeated pieces share a representative
    # simulate a collision: every piece hashes alike
    with mock.patch.object(world_mod, "_LEN_MIX", np.uint64(0)), mock.patch.object(seg, "pow", seg.pow * 0):
        assert seg.group(a, cuts) is None  # pieces of different lengths
        same_len = np.frombuffer(b"\x00\x01\x02\x01", dtype=np.uint8)  # control bytes: cuts everywhere
        assert len(seg.cuts(same_len)) == 3
        assert seg.group(same_len, seg.cuts(same_len)) is None  # same lengths, different bytes


def test_popcount_fallback_for_old_numpy() -> None:
    x = np.random.default_rng(0).integers(0, 2**63, size=1000, dtype=np.uint64) * np.uint64(3)
    expected = [bin(int(v)).count("1") for v in x]
    assert world_mod._popcount_bytes(x).tolist() == expected
    assert world_mod._popcount(x).tolist() == expected


def test_random_bytes_large(tok, official) -> None:
    rng = random.Random(0)
    raw = bytes(rng.getrandbits(8) for _ in range(60_000))
    assert tok.encode_bytes(raw) == official.encodeBytes(raw)


# -- decode -----------------------------------------------------------------------------------------


@SETTINGS
@given(text=TEXT)
def test_round_trip(tok, text: str) -> None:
    assert tok.decode(tok.encode(text)) == text


def test_decode_accepts_arrays_and_tensors(tok) -> None:
    ids = [33155, 40213]
    assert (
        tok.decode(np.array(ids)) == tok.decode(torch.tensor(ids)) == tok.decode(tuple(ids)) == "Hello world"
    )
    assert tok.decode(iter(ids)) == "Hello world"
    assert tok.decode([]) == "" and tok.decode_bytes([]) == b""


def test_decode_invalid_utf8_is_replaced_locally(tok, official) -> None:
    ids = tok.encode_bytes(b"ok \xe4\xb8 done")  # a truncated 3-byte character in the middle
    assert tok.decode(ids) == "ok \ufffd done"
    assert official.decode(ids) == "\ufffd"  # the official decode gives up on the whole call


@pytest.mark.parametrize("bad", [65530, 65535, -1, 10**9])
def test_decode_rejects_unknown_ids(tok, bad: int) -> None:
    with pytest.raises(TokenizerError, match=f"token id {bad}.*vocab_size"):
        tok.decode([1, bad])
    with pytest.raises(TokenizerError):
        tok.stream_decoder().push(bad)


def test_encode_rejects_lone_surrogates(tok) -> None:
    with pytest.raises(TokenizerError, match="surrogate"):
        tok.encode("abc\ud800")


# -- stream decoding --------------------------------------------------------------------------------


def _stream(tok, ids) -> list[str]:
    dec = tok.stream_decoder()
    return [dec.push(i) for i in ids] + [dec.flush()]


@SETTINGS
@given(ids=st.lists(st.integers(0, 65529), max_size=60))
def test_stream_matches_full_decode_for_any_ids(tok, ids: list[int]) -> None:
    assert "".join(_stream(tok, ids)) == tok.decode(ids)


@SETTINGS
@given(text=TEXT)
def test_stream_never_splits_a_character(tok, text: str) -> None:
    ids = tok.encode(text)
    raw = text.encode("utf-8")
    dec = tok.stream_decoder()
    emitted, fed = "", b""
    for i in ids:
        emitted += dec.push(i)
        fed += tok.token_bytes(i)
        done = emitted.encode("utf-8")
        # everything emitted is a whole-character prefix of the input; at most 3 bytes are held back,
        # and they are the start of one character, not garbage
        assert fed.startswith(done) and raw.startswith(done)
        held = fed[len(done) :]
        assert len(held) <= 3
        if held:
            with pytest.raises(UnicodeDecodeError, match="unexpected end of data"):
                held.decode("utf-8")
    assert dec.flush() == ""
    assert emitted == text


def test_stream_holds_back_split_characters(tok) -> None:
    dec = tok.stream_decoder()
    emoji = "😀".encode()  # 4 bytes, fed as single-byte tokens (id = byte + 1)
    assert [dec.push(b + 1) for b in emoji] == ["", "", "", "😀"]
    assert dec.push(tok.encode("a")[0]) == "a"
    # an incomplete character at the end becomes one U+FFFD at flush, and flush resets the decoder
    assert dec.push(emoji[0] + 1) == ""
    assert dec.flush() == "\ufffd"
    assert dec.push(tok.encode("b")[0]) == "b"
    # a byte that cannot continue the pending character is replaced at once
    assert dec.push(0xE4 + 1) == ""
    assert dec.push(ord("c") + 1) == "\ufffdc"


# -- custom vocabulary files -----------------------------------------------------------------------


def _write_custom_vocab(path: Path) -> None:
    lines = [f"{b + 1} {bytes([b])!r} 1" for b in range(256)]
    extra = ["ab", "abc", "abcd", "bcd", "  ", "    ", "我们", "x'y", 'q"r', "é\\n"]
    extra_bytes = [b"\xe4\xb8", b"\xff\xfe"]
    i = 257
    for t in extra:
        lines.append(f"{i} {t!r} {len(t.encode())}")
        i += 1
    for t in extra_bytes:
        lines.append(f"{i} {t!r} {len(t)}")
        i += 1
    path.write_text("\r\n".join(lines) + "\r\n", encoding="utf-8")


def test_custom_vocabulary_matches_official(tmp_path) -> None:
    from rwkv.rwkv_tokenizer import TRIE_TOKENIZER

    path = tmp_path / "custom_vocab.txt"
    _write_custom_vocab(path)
    tok = load_tokenizer(path)
    ref = TRIE_TOKENIZER(str(path))
    assert (tok.name, tok.vocab_size, tok.eos_id) == ("custom_vocab", 269, 0)
    rng = random.Random(1)
    alphabet = ["a", "b", "c", "d", " ", "我", "们", "x'y", 'q"r', "é\\n", "z"]
    for _ in range(200):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        assert tok.encode(text) == ref.encode(text)
    text = "".join(rng.choice(alphabet) for _ in range(20_000))
    assert tok.encode(text) == ref.encode(text)
    raw = bytes(rng.choice(b"abcd \xe4\xb8\xff\xfe") for _ in range(20_000))
    assert tok.encode_bytes(raw) == ref.encodeBytes(raw)
