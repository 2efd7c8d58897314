"""Perplexity and bits per byte of documents and of a prepared split, against hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from rwkvkit.assets import default_tokenizer_path
from rwkvkit.data import DataError, iter_eval_windows, open_tokens, prepare
from rwkvkit.eval import perplexity, perplexity_files, perplexity_tokens
from tests.eval.conftest import hand_score

DOCS = {
    "a.py": "import os\n\n\ndef main():\n    return os.getcwd()\n",
    "b.txt": "Déjà vu: the café served crème brûlée to 3 guests. " * 3,
    "c.py": "class A:\n    pass\n",
}


@pytest.fixture
def files(tmp_path):
    paths = []
    for name, text in DOCS.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
        paths.append(tmp_path / name)
    return paths


def test_files_equal_a_hand_computation(model, tok, files):
    r = perplexity_files(model, tok, files, progress=False)
    nats, tokens = 0.0, 0
    for text, doc_nats, doc_tokens, doc_bytes in zip(DOCS.values(), r.doc_nats, r.doc_tokens, r.doc_bytes):
        ids = [0, *tok.encode(text)]  # the separator, then every token of the document is scored
        lp, _ = hand_score(model, ids, 1)
        assert doc_nats == pytest.approx(-lp, abs=1e-4)
        assert doc_tokens == len(ids) - 1 and doc_bytes == len(text.encode("utf-8"))
        nats, tokens = nats - lp, tokens + len(ids) - 1
    n_bytes = sum(len(t.encode("utf-8")) for t in DOCS.values())
    assert r.documents == 3 and r.tokens == tokens and r.bytes == n_bytes
    assert r.perplexity == pytest.approx(math.exp(nats / tokens), rel=1e-5)
    assert r.bits_per_byte == pytest.approx(nats / math.log(2) / n_bytes, rel=1e-5)


def test_chunks_carry_the_state(model, tok):
    """A document fed 7 tokens at a time, two documents a batch, has the likelihood of one forward."""
    texts = list(DOCS.values())
    whole = perplexity(model, tok, texts, batch_size=1, chunk_len=4096, progress=False)
    chunked = perplexity(model, tok, texts, batch_size=2, chunk_len=7, progress=False)
    for a, b in zip(whole.doc_nats, chunked.doc_nats):
        assert b == pytest.approx(a, abs=1e-4)


def test_bad_files(model, tok, tmp_path):
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8"):
        perplexity_files(model, tok, [tmp_path / "latin1.txt"])
    with pytest.raises(DataError, match="not found"):
        perplexity_files(model, tok, [tmp_path / "missing.txt"])
    with pytest.raises(DataError, match="is a directory"):
        perplexity_files(model, tok, [tmp_path])


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    src = tmp_path_factory.mktemp("docs")
    for name, text in DOCS.items():
        (src / name).write_text(text * 4, encoding="utf-8")
    out = tmp_path_factory.mktemp("prepared")
    prepare(
        [src], out, default_tokenizer_path(), val_files=[str(src / "a.py"), str(src / "b.txt")], quiet=True
    )
    return out


def test_prepared_split_equals_the_windows_by_hand(model, prepared):
    ctx_len = 32
    r = perplexity_tokens(model, prepared, ctx_len=ctx_len, batch_size=3, progress=False)
    val = open_tokens(prepared, split="val")
    table = torch.from_numpy(val.token_bytes_table())
    nats, tokens, n_bytes, windows = 0.0, 0, 0, 0
    for x, y, mask in iter_eval_windows(val, ctx_len, 1):
        with torch.no_grad():
            logits, _ = model(x)  # each window from a fresh state, as the trainer's evaluate
        logp = torch.log_softmax(logits.double(), -1).gather(-1, y[..., None])[..., 0]
        nats -= float(logp[mask].sum())
        tokens += int(mask.sum())
        n_bytes += int(table[y[mask]].sum())
        windows += 1
    assert (r.tokens, r.bytes, r.documents) == (tokens, n_bytes, windows)
    assert r.nats == pytest.approx(nats, abs=1e-3)
    assert r.tokens == len(val) and r.bytes == sum(len(DOCS[k].encode() * 4) for k in ("a.py", "b.txt"))
    limited = perplexity_tokens(model, prepared, ctx_len=ctx_len, limit=40, progress=False)
    assert limited.tokens == 40
