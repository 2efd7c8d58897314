"""The binidx format of RWKV-LM's trainer: exact bytes, files laid out by hand, round trips, corruption."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from rwkvkit.data import open_tokens, prepare, read_binidx, write_binidx
from rwkvkit.data.binidx import DataError

DOCS = [[5, 6, 7, 0], [8, 0], [65535, 1, 2, 3, 0], [0]]


def test_written_bytes_follow_the_reference_layout(tmp_path):
    write_binidx(tmp_path / "d", [np.array(d) for d in DOCS], np.uint16)
    idx = (tmp_path / "d.idx").read_bytes()
    n = len(DOCS)
    # magic, version 1 (uint64), dtype code 8 = uint16 (uint8), item count, doc-index length (uint64 each)
    assert idx[:9] == b"MMIDIDX\x00\x00"
    assert struct.unpack_from("<QBQQ", idx, 9) == (1, 8, n, n + 1)
    sizes = struct.unpack_from(f"<{n}i", idx, 34)
    pointers = struct.unpack_from(f"<{n}q", idx, 34 + 4 * n)
    doc_idx = struct.unpack_from(f"<{n + 1}q", idx, 34 + 12 * n)
    assert list(sizes) == [len(d) for d in DOCS]
    assert list(pointers) == [0, 8, 12, 22]  # byte offsets: 2 bytes per uint16 token
    assert list(doc_idx) == [0, 1, 2, 3, 4]  # one item per document, as make_data.py writes
    assert len(idx) == 34 + 12 * n + 8 * (n + 1)
    assert (tmp_path / "d.bin").read_bytes() == np.concatenate(DOCS).astype("<u2").tobytes()


def test_uint32_vocabularies_are_stored_as_int32(tmp_path):
    write_binidx(tmp_path / "d", [np.array([70000, 0])], np.uint32)
    assert (tmp_path / "d.idx").read_bytes()[17] == 4  # int32: the format has no uint32 code
    b = read_binidx(tmp_path / "d")
    assert b.dtype == np.int32 and b.tokens.tolist() == [70000, 0]


def _hand_written(prefix, tokens, sizes, doc_idx, code=8, dtype="<u2", version=1):
    """A binidx pair laid out with struct, independently of rwkvkit's writer."""
    (prefix.parent / (prefix.name + ".bin")).write_bytes(np.asarray(tokens, dtype=dtype).tobytes())
    item = np.dtype(dtype).itemsize
    pointers = np.concatenate([[0], np.cumsum(sizes)[:-1]]) * item
    body = b"MMIDIDX\x00\x00" + struct.pack("<QBQQ", version, code, len(sizes), len(doc_idx))
    body += struct.pack(f"<{len(sizes)}i", *sizes) + struct.pack(f"<{len(sizes)}q", *pointers)
    body += struct.pack(f"<{len(doc_idx)}q", *doc_idx)
    (prefix.parent / (prefix.name + ".idx")).write_bytes(body)


def test_reads_a_file_laid_out_by_hand(tmp_path):
    # Megatron style: documents made of several items (sentences); doc 1 has items 1 and 2
    tokens = [1, 2, 0, 3, 4, 5, 6, 0, 7, 0]
    _hand_written(tmp_path / "m", tokens, sizes=[3, 2, 3, 2], doc_idx=[0, 1, 3, 4])
    b = read_binidx(tmp_path / "m.bin")  # the .bin (or .idx) path names the prefix too
    assert b.tokens.tolist() == tokens and b.dtype == np.uint16
    assert b.doc_offsets().tolist() == [0, 3, 8, 10]
    assert [d.tolist() for d in b.documents()] == [[1, 2, 0], [3, 4, 5, 6, 0], [7, 0]]
    tf = open_tokens(tmp_path / "m", tokenizer="bytes")  # no meta.json: the tokenizer is given
    assert len(tf) == 10 and tf.doc_offsets().tolist() == [0, 3, 8, 10]
    with pytest.raises(DataError, match="tokenizer"):
        _ = open_tokens(tmp_path / "m").tokenizer


def test_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    docs = [np.append(rng.integers(1, 65530, size=rng.integers(0, 50)), 0) for _ in range(30)]
    write_binidx(tmp_path / "r", docs)
    b = read_binidx(tmp_path / "r")
    assert all(np.array_equal(x, y) for x, y in zip(b.documents(), docs, strict=True))
    # tokens -> binidx -> tokens through a prepared folder
    src = tmp_path / "src"
    src.mkdir()
    for i in range(6):
        (src / f"{i}.txt").write_text(f"document {i} " * (i + 1))
    prepare([src], tmp_path / "p", "world", val_fraction=0, quiet=True)
    tf = open_tokens(tmp_path / "p")
    write_binidx(tmp_path / "conv", tf.documents(), tf.dtype)
    back = read_binidx(tmp_path / "conv")
    assert (tmp_path / "conv.bin").read_bytes() == (tmp_path / "p" / "train.bin").read_bytes()
    assert np.array_equal(back.doc_offsets(), tf.doc_offsets())


def test_empty_dataset(tmp_path):
    write_binidx(tmp_path / "e", [])
    b = read_binidx(tmp_path / "e")
    assert len(b.tokens) == 0 and b.doc_offsets().tolist() == [0]


@pytest.mark.parametrize(
    "damage,match",
    [
        (lambda idx: b"NOTANIDX!" + idx[9:], "not a binidx index"),
        (lambda idx: idx[:9] + struct.pack("<Q", 2) + idx[17:], "version 2"),
        (lambda idx: idx[:17] + bytes([7]) + idx[18:], "dtype code 7"),
        (lambda idx: idx[:-8], "truncated"),
        (lambda idx: idx[:34] + struct.pack("<i", 1000) + idx[38:], "outside"),
    ],
)
def test_corrupt_files_are_refused(tmp_path, damage, match):
    write_binidx(tmp_path / "c", [np.array(d) for d in DOCS])
    p = tmp_path / "c.idx"
    p.write_bytes(damage(p.read_bytes()))
    with pytest.raises(DataError, match=match):
        read_binidx(tmp_path / "c")


def test_missing_files(tmp_path):
    with pytest.raises(DataError, match="no binidx"):
        read_binidx(tmp_path / "none")
    write_binidx(tmp_path / "x", [np.array([1, 0])])
    (tmp_path / "x.bin").unlink()
    with pytest.raises(DataError, match="no data file"):
        read_binidx(tmp_path / "x")
    with pytest.raises(DataError, match="cannot store"):
        write_binidx(tmp_path / "f", [np.array([1])], np.float32)
    with pytest.raises(DataError, match="do not fit"):
        write_binidx(tmp_path / "g", [np.array([70000])], np.uint16)
