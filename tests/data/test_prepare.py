"""``prepare``: every source kind and tokenizer, exact round trips, counts, the split, binidx, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rwkvkit.data import open_tokens, prepare, read_binidx
from rwkvkit.data.binidx import DataError
from rwkvkit.data.corpus import split_score
from rwkvkit.data.prepare import choose_dtype
from rwkvkit.errors import ConfigError, RWKVKitError, TokenizerError

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
TOKENIZER_20B = SHARED / "tokenizers" / "20B_tokenizer.json"

# key -> text of every usable document the `corpus` fixture holds (keys as rwkvkit.data.corpus defines)
TRICKY = "héllo 😀 — ñ\r\n\ttabs, trailing spaces   \n a literal <|endoftext|> inside\n\u00a0\u200b end"


def _docs() -> dict[str, str]:
    docs = {
        "corpus/a.txt": "Hello world\nsecond line\n",
        "corpus/sub/b.md": TRICKY,
        "corpus/c.py": "def f(x):\n    return x * 2  # double\n\n\nclass A:\n    pass\n",
        "extra.txt": "A file given directly.",
        "data.jsonl:1": "first json document",
        "data.jsonl:3": "third line, after a blank one: ünïcödé",
        "data.jsonl:4": "x" * 50 + " long " * 30,
    }
    for i in range(40):  # enough documents for the hash split to put some on each side
        docs[f"corpus/many/doc{i:02d}.txt"] = f"Document number {i}.\n" + "lorem ipsum " * (i % 7 + 1)
    return docs


DOCS = _docs()


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """A folder with ``corpus/`` (a directory source), ``extra.txt`` and ``data.jsonl``, plus files
    that must be skipped (empty, NUL, not UTF-8) or never listed (hidden, __pycache__, .json)."""
    root = tmp_path_factory.mktemp("src")
    for key, text in DOCS.items():
        if key.startswith("data.jsonl"):
            continue
        p = root / key
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(text.encode("utf-8"))  # bytes: no newline translation on any platform
    c = root / "corpus"
    (c / "empty.txt").write_bytes(b"")
    (c / "binary.txt").write_bytes(b"abc\x00def")
    (c / "latin1.txt").write_bytes("café".encode("latin-1"))
    (c / ".hidden").mkdir()
    (c / ".hidden" / "x.txt").write_text("hidden")
    (c / "__pycache__").mkdir()
    (c / "__pycache__" / "y.txt").write_text("cache")
    (c / "data.json").write_text('{"not": "a document"}')
    lines = [
        json.dumps({"text": DOCS["data.jsonl:1"]}),
        "",
        json.dumps({"text": DOCS["data.jsonl:3"], "meta": 1}),
        json.dumps({"text": DOCS["data.jsonl:4"]}),
        json.dumps({"text": ""}),
    ]
    (root / "data.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def sources(root: Path) -> list[Path]:
    return [root / "corpus", root / "extra.txt", root / "data.jsonl"]


SKIPPED = {"empty": ["corpus/empty.txt", "data.jsonl:5"], "contains NUL": ["corpus/binary.txt"],
           "not UTF-8": ["corpus/latin1.txt"]}  # fmt: skip


@pytest.fixture(scope="module", params=["bytes", "world", "bpe:400"])
def prepared(request, corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    meta = prepare(sources(corpus), out, request.param, val_fraction=0.2, seed=1, quiet=True)
    return request.param, out, meta


def split_texts(tf) -> list[str]:
    """The documents of a split recovered by cutting the flat tokens after each separator 0."""
    a = np.asarray(tf.tokens)
    assert len(a) == 0 or a[-1] == 0  # every document, the last included, ends with the separator
    cuts = np.flatnonzero(a == 0)
    starts = np.concatenate([[0], cuts[:-1] + 1])
    return [tf.tokenizer.decode(a[s:e].tolist()) for s, e in zip(starts, cuts)]


def test_documents_round_trip_exactly(prepared):
    spec, out, meta = prepared
    val = set(meta["val_documents"])
    assert val and val != set(DOCS)  # both splits are populated at this fraction
    for split in ("train", "val"):
        tf = open_tokens(out, split)
        # files in source order: the directory sorted by relative path, then extra.txt, then the JSONL lines
        order = sorted((k for k in DOCS if (k in val) == (split == "val")), key=_source_order)
        expected = [DOCS[k] for k in order]
        assert split_texts(tf) == expected
        assert [tf.tokenizer.decode(d[:-1].tolist()) for d in tf.documents()] == expected


def _source_order(key: str) -> tuple:
    if key.startswith("corpus/"):
        return (0, key)
    if key == "extra.txt":
        return (1, key)
    return (2, int(key.split(":")[1]))


def test_meta_counts_and_skips(prepared):
    spec, out, meta = prepared
    assert meta["format"] == "rwkvkit.tokens" and meta["version"] == 1 and meta["storage"] == "bin"
    assert meta["dtype"] == "uint16" and meta["separator"] == 0 and meta["byte_exact"]
    assert json.loads((out / "meta.json").read_text()) == meta
    val = set(meta["val_documents"])
    for split, s in meta["splits"].items():
        tf = open_tokens(out, split)
        keys = [k for k in DOCS if (k in val) == (split == "val")]
        assert s["tokens"] == len(tf) == (out / f"{split}.bin").stat().st_size // 2
        assert s["documents"] == len(keys) == len(tf.doc_offsets()) - 1
        assert s["bytes"] == s["source_bytes"] == sum(len(DOCS[k].encode()) for k in keys)
        assert s["altered_documents"] == 0
    assert {k: sorted(v["examples"]) for k, v in meta["skipped"].items()} == SKIPPED
    assert meta["split_rule"]["method"] == "hash" and meta["split_rule"]["seed"] == 1
    assert (out / "tokenizer.json").is_file() == spec.startswith("bpe:")
    if spec == "bpe:400":
        assert meta["vocab_size"] <= 400 and meta["tokenizer"]["file"] == "tokenizer.json"


def test_token_bytes_table_is_exact_per_document(prepared):
    spec, out, meta = prepared
    tf = open_tokens(out, "train")
    table = tf.token_bytes_table()
    assert table.shape == (meta["vocab_size"],) and table[0] == 0
    for doc in tf.documents():
        assert int(table[np.asarray(doc)].sum()) == len(tf.tokenizer.decode_bytes(doc[:-1].tolist()))
    assert int(table[np.asarray(tf.tokens)].sum()) == meta["splits"]["train"]["bytes"]


def test_split_is_deterministic_and_stable(corpus, tmp_path):
    a = prepare(sources(corpus), tmp_path / "a", "bytes", val_fraction=0.3, seed=5, quiet=True)
    prepare(sources(corpus), tmp_path / "b", "bytes", val_fraction=0.3, seed=5, quiet=True)
    for name in ("train.bin", "val.bin"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert set(a["val_documents"]) == {k for k in DOCS if split_score(k, 5) < 0.3}
    # a new file moves no other document between the splits
    more = tmp_path / "more.txt"
    more.write_text("a new document")
    c = prepare([*sources(corpus), more], tmp_path / "c", "bytes", val_fraction=0.3, seed=5, quiet=True)
    assert set(c["val_documents"]) - {"more.txt"} == set(a["val_documents"])
    d = prepare(sources(corpus), tmp_path / "d", "bytes", val_fraction=0.3, seed=6, quiet=True)
    assert set(d["val_documents"]) != set(a["val_documents"])


def test_val_files_hold_out_exactly_those(corpus, tmp_path):
    names = ["corpus/a.txt", str(corpus / "extra.txt"), "data.jsonl:3"]
    meta = prepare(sources(corpus), tmp_path, "bytes", val_files=names, quiet=True)
    assert sorted(meta["val_documents"]) == ["corpus/a.txt", "data.jsonl:3", "extra.txt"]
    assert meta["split_rule"] == {"method": "files", "val_files": sorted(names)}
    meta = prepare(sources(corpus), tmp_path, "bytes", val_files=["data.jsonl"], quiet=True)
    assert sorted(meta["val_documents"]) == ["data.jsonl:1", "data.jsonl:3", "data.jsonl:4"]
    with pytest.raises(DataError, match="not among the sources"):
        prepare(sources(corpus), tmp_path, "bytes", val_files=["nope.txt"], quiet=True)
    with pytest.raises(DataError, match="not found"):
        prepare(sources(corpus), tmp_path, "bytes", val_files=["data.jsonl:2"], quiet=True)  # a blank line


@pytest.mark.parametrize("prepared", ["bpe:400"], indirect=True)
def test_trained_bpe_round_trips_arbitrary_text(prepared):
    spec, out, meta = prepared
    tok = open_tokens(out).tokenizer
    assert tok.eos_id == 0 and tok.vocab_size == meta["vocab_size"]
    samples = ["", " ", "\x00\x01\x7f", "日本語のテキスト", "🏳️‍🌈 zwj", "\U0010ffff", "a\r\n" * 50]
    samples.append(bytes(range(1, 128)).decode("ascii") + "".join(map(chr, range(0x80, 0x800, 7))))
    samples.append(TRICKY.replace("<|endoftext|>", "<|end|>"))

    @settings(max_examples=60, deadline=None, derandomize=True)
    @given(st.text(max_size=80))
    def round_trip(text: str) -> None:
        ids = tok.encode(text)
        assert tok.decode(ids) == text and tok.decode_bytes(ids) == text.encode()

    for text in samples:
        round_trip.hypothesis.inner_test(text)
    round_trip()
    # A literal "<|endoftext|>" typed into a prompt is the end-of-document id (as for every HF
    # tokenizer), but inside a prepared document it is text: the data never holds a stray separator.
    assert tok.encode("<|endoftext|>") == [0]
    tf = open_tokens(out, "val" if "corpus/sub/b.md" in meta["val_documents"] else "train")
    assert TRICKY in split_texts(tf)


def test_binidx_output(corpus, tmp_path):
    meta = prepare(sources(corpus), tmp_path, "world", format="binidx", val_fraction=0.2, seed=1, quiet=True)
    assert meta["storage"] == "binidx" and meta["splits"]["train"]["index"] == "train.idx"
    b = read_binidx(tmp_path / "train")
    assert b.dtype == np.uint16 and len(b.sizes) == meta["splits"]["train"]["documents"]
    tf = open_tokens(tmp_path, "train")
    assert np.array_equal(tf.doc_offsets(), b.doc_offsets())
    assert split_texts(tf) == [tf.tokenizer.decode(d[:-1].tolist()) for d in b.documents()]
    # the same tokens as the plain format
    prepare(sources(corpus), tmp_path / "plain", "world", val_fraction=0.2, seed=1, quiet=True)
    assert (tmp_path / "train.bin").read_bytes() == (tmp_path / "plain" / "train.bin").read_bytes()
    # the binidx prefix opens directly, with its meta.json beside it
    assert open_tokens(tmp_path / "train").tokenizer.name == "world"


@pytest.mark.skipif(not TOKENIZER_20B.is_file(), reason="shared 20B tokenizer not present")
def test_20b_tokenizer(corpus, tmp_path):
    meta = prepare(sources(corpus), tmp_path, str(TOKENIZER_20B), val_fraction=0.2, seed=1, quiet=True)
    assert meta["vocab_size"] == 50277 and meta["separator"] == 0 and meta["byte_exact"]
    assert meta["tokenizer"]["file"] == str(TOKENIZER_20B.resolve())
    tf = open_tokens(tmp_path, "train")
    texts = split_texts(tf)  # a literal <|endoftext|> would have split a document had it become id 0
    assert len(texts) == meta["splits"]["train"]["documents"]
    assert set(texts) <= set(DOCS.values())  # every test document is NFC: nothing altered


def test_errors(corpus, tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        prepare([tmp_path / "missing"], tmp_path / "o", quiet=True)
    (tmp_path / "only_empty").mkdir()
    (tmp_path / "only_empty" / "e.txt").write_text("")
    with pytest.raises(DataError, match="empty corpus"):
        prepare([tmp_path / "only_empty"], tmp_path / "o", "bytes", quiet=True)
    (tmp_path / "nothing").mkdir()
    with pytest.raises(DataError, match="no documents"):
        prepare([tmp_path / "nothing"], tmp_path / "o", "bytes", quiet=True)
    with pytest.raises(TokenizerError):
        prepare(sources(corpus), tmp_path / "o", "no-such-tokenizer", quiet=True)
    with pytest.raises(ConfigError, match="bpe:N"):
        prepare(sources(corpus), tmp_path / "o", "bpe:12", quiet=True)
    with pytest.raises(ConfigError, match="format"):
        prepare(sources(corpus), tmp_path / "o", "bytes", format="npy", quiet=True)
    with pytest.raises(ConfigError, match="val_fraction"):
        prepare(sources(corpus), tmp_path / "o", "bytes", val_fraction=1.0, quiet=True)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"content": "x"}\n')
    with pytest.raises(DataError, match="bad.jsonl:1.*'text'"):
        prepare([bad], tmp_path / "o", "bytes", quiet=True)
    assert prepare([bad], tmp_path / "o", "bytes", jsonl_field="content", val_fraction=0, quiet=True)
    bad.write_text("{not json\n")
    with pytest.raises(DataError, match="not a JSON line"):
        prepare([bad], tmp_path / "o", "bytes", quiet=True)
    with pytest.raises(ConfigError, match="does not fit uint16"):
        choose_dtype(70000, "uint16")
    assert choose_dtype(70000) == np.uint32 and choose_dtype(70000, storage="binidx") == np.int32
    assert choose_dtype(65536) == np.uint16
    with pytest.raises(DataError):
        open_tokens(tmp_path / "nothing")
    assert all(issubclass(e, RWKVKitError) for e in (DataError, ConfigError, TokenizerError))


def test_failed_run_keeps_the_previous_output(corpus, tmp_path):
    prepare(sources(corpus), tmp_path, "bytes", quiet=True)
    before = (tmp_path / "train.bin").read_bytes()
    with pytest.raises(DataError):
        prepare([*sources(corpus), tmp_path / "missing"], tmp_path, "bytes", quiet=True)
    (tmp_path / "only_empty.txt").write_text("")
    with pytest.raises(DataError):
        prepare([tmp_path / "only_empty.txt"], tmp_path, "bytes", quiet=True)
    assert (tmp_path / "train.bin").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "meta.json",
        "only_empty.txt",
        "train.bin",
        "val.bin",
    ]
