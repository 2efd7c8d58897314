"""load_tokenizer: names, paths, caching, and one-line TokenizerErrors for every bad input."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from unittest import mock

import pytest

from rwkvkit.errors import RWKVKitError, TokenizerError
from rwkvkit.tokenizer import WORLD_VOCAB_FILE, load_tokenizer, world_vocab_path

GOOD_BYTES = [f"{b + 1} {bytes([b])!r} 1" for b in range(256)]


def _vocab(tmp_path: Path, lines: list[str], name: str = "vocab.txt") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _raises(arg, match: str) -> TokenizerError:
    with pytest.raises(TokenizerError, match=match) as e:
        load_tokenizer(arg)
    assert isinstance(e.value, RWKVKitError)
    assert "\n" not in str(e.value)  # one line for the CLI
    return e.value


def test_world_vocab_path_is_in_the_rwkv_package() -> None:
    path = world_vocab_path()
    assert path.name == WORLD_VOCAB_FILE and path.is_file()
    assert Path(importlib.util.find_spec("rwkv").submodule_search_locations[0]) == path.parent


def test_missing_rwkv_package() -> None:
    with mock.patch.object(importlib.util, "find_spec", return_value=None):
        _raises("world", r"pip install rwkv.*or pass the path")


def test_rwkv_package_without_vocabulary(tmp_path) -> None:
    spec = mock.Mock(submodule_search_locations=[str(tmp_path)])
    with mock.patch.object(importlib.util, "find_spec", return_value=spec):
        _raises("world", "has no rwkv_vocab_v20230424.txt")


def test_unknown_name_and_missing_paths(tmp_path) -> None:
    _raises("wrold", "not found.*pass 'world', 'bytes'")
    _raises(tmp_path / "nope.txt", "not found")
    _raises(tmp_path, "has no tokenizer.json")
    other = tmp_path / "vocab.bin"
    other.write_bytes(b"x")
    _raises(other, "from its extension '.bin'")


def test_small_custom_vocabulary(tmp_path) -> None:
    path = _vocab(tmp_path, GOOD_BYTES + ["257 'ab' 2", "258 b'\\xff\\xfe' 2", "259 '\\u4e2d' 3"])
    tok = load_tokenizer(path)
    assert (tok.name, tok.vocab_size, tok.eos_id) == ("vocab", 260, 0)
    assert tok.encode("abab中a") == [257, 257, 259, 98]
    assert tok.decode_bytes([258]) == b"\xff\xfe"


def test_ids_with_gaps(tmp_path) -> None:
    tok = load_tokenizer(_vocab(tmp_path, GOOD_BYTES + ["300 'ab' 2"]))
    assert (tok.vocab_size, tok.eos_id) == (301, 0)
    assert tok.encode("ab") == [300] and tok.decode([300, 0]) == "ab"
    with pytest.raises(TokenizerError, match="token id 299"):
        tok.decode([300, 299])
    with pytest.raises(TokenizerError, match="token id 299"):
        tok.stream_decoder().push(299)


def test_vocabulary_defining_id_0_has_no_eos(tmp_path) -> None:
    lines = [f"{b} {bytes([b])!r} 1" for b in range(256)]
    tok = load_tokenizer(_vocab(tmp_path, lines))
    assert (tok.vocab_size, tok.eos_id) == (256, None)
    assert tok.decode([0, 65]) == "\x00A"


def test_cache_follows_file_changes(tmp_path) -> None:
    path = _vocab(tmp_path, GOOD_BYTES)
    first = load_tokenizer(path)
    assert load_tokenizer(str(path)) is first
    _vocab(tmp_path, GOOD_BYTES + ["257 'ab' 2"])
    second = load_tokenizer(path)
    assert second is not first and second.encode("ab") == [257]


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["257 'ab' 3"], "line 257.*2 bytes long, but the line says 3"),
        (["257 ab 2"], "line 257.*not a Python str or bytes literal"),
        (["257 __import__('os').system('echo pwned') 1"], "line 257.*not a Python str or bytes literal"),
        (["257 ('a') + 'b' 2"], "line 257.*not a Python str or bytes literal"),
        (["257 12 2"], "line 257.*is a int, not str or bytes"),
        (["257 'ab'"], "line 257.*three space-separated fields"),
        (["x 'ab' 2"], "line 257.*id 'x' is not a non-negative integer"),
        (["-3 'ab' 2"], "line 257.*id '-3'"),
        (["257 'ab' two"], "line 257.*byte length 'two'"),
        (["100 'ab' 2"], "line 257.*duplicate id 100"),
        (["257 'a' 1"], "line 257.*token b'a' already has id 98"),
        (["257 '' 0"], "line 257.*empty token"),
        (["257 '\\ud800' 3"], "line 257.*not encodable as UTF-8"),
        (["99999999 'ab' 2"], "line 257.*too large"),
    ],
)
def test_malformed_vocabulary_lines(tmp_path, extra: list[str], match: str) -> None:
    _raises(_vocab(tmp_path, GOOD_BYTES + extra), match)


def test_vocabulary_without_every_byte(tmp_path) -> None:
    _raises(_vocab(tmp_path, GOOD_BYTES[1:]), r"no single-byte token for 1 byte value\(s\) \(0x00\)")


def test_unreadable_vocabulary_files(tmp_path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    _raises(empty, "has no tokens")
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"1 'a' 1\n\xff\xfe\n")
    _raises(binary, "not UTF-8 text")
    folder = tmp_path / "folder.txt"
    folder.mkdir()
    _raises(folder, "has no tokenizer.json")


def test_bad_argument_type() -> None:
    with pytest.raises(TypeError, match="name or a path"):
        load_tokenizer(42)  # type: ignore[arg-type]
