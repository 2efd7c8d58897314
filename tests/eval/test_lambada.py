"""LAMBADA scoring: the official procedure, batched and on the fast path, against a hand computation."""

from __future__ import annotations

import json
import math

import pytest

from rwkvkit.data import DataError
from rwkvkit.eval import lambada, read_lambada, split_passage
from rwkvkit.inference.auto import ENV_FAST
from tests.eval.conftest import hand_score

TOL = 1e-4  # fp32: the fast twin (compiled WKV, shared weights) against the plain forward


def official(model, tok, text: str) -> tuple[float, bool]:
    """rwkv_v7_demo.py: src = [0] + encode(context), dst = encode(" " + last word), one forward over
    src + dst, the target's log-probabilities summed, correct if every target token is the argmax."""
    context, word = text.rsplit(" ", 1)
    src, dst = [0] + tok.encode(context), tok.encode(" " + word)
    return hand_score(model, src + dst, len(src))


def test_lambada_equals_the_official_computation(model, tok, passages):
    r = lambada(model, tok, passages, batch_size=4, progress=False)
    hand = [official(model, tok, t) for t in passages]
    assert r.documents == len(passages)
    for (lp, ok), got, correct in zip(hand, r.logprobs, r.correct):
        assert got == pytest.approx(lp, abs=TOL)
        assert correct == ok
    mean = sum(lp for lp, _ in hand) / len(hand)
    assert r.perplexity == pytest.approx(math.exp(-mean), rel=TOL)
    assert r.accuracy == sum(ok for _, ok in hand) / len(hand)
    assert r.target_tokens == sum(len(tok.encode(" " + t.rsplit(" ", 1)[1])) for t in passages)


def test_batched_equals_unbatched_and_reference_path(model, tok, passages, monkeypatch):
    one = lambada(model, tok, passages, batch_size=1, progress=False)
    three = lambada(model, tok, passages, batch_size=3, progress=False)
    monkeypatch.setenv(ENV_FAST, "0")  # the model as loaded, no inference twin
    ref = lambada(model, tok, passages, batch_size=5, progress=False)
    for a, b, c in zip(one.logprobs, three.logprobs, ref.logprobs):
        assert b == pytest.approx(a, abs=1e-5)
        assert c == pytest.approx(a, abs=TOL)
    assert one.correct == three.correct == ref.correct


def test_a_correct_passage_counts(model, tok):
    """A passage the model gets right: accuracy 1 (the default model knows its Python)."""
    text = "class Foo(object):\n    def __init__(self, name):\n        self.name = name"
    lp, ok = official(model, tok, text)
    r = lambada(model, tok, [text], progress=False)
    assert ok and r.correct == [True] and r.accuracy == 1.0
    assert r.logprobs[0] == pytest.approx(lp, abs=TOL)


def test_file_and_limit(model, tok, tmp_path, passages):
    path = tmp_path / "l.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in passages) + "\n")
    assert read_lambada(path) == passages
    r = lambada(model, tok, path, limit=2, progress=False)
    assert r.documents == 2 and r.tokens > 0


@pytest.mark.parametrize(
    "lines, message",
    [
        (['{"text": "a b"}', '{"txt": "a b"}'], ':2: expected an object with a string "text"'),
        (["not json"], ":1: not a JSON line"),
        (['{"text": 3}'], ':1: expected an object with a string "text"'),
        ([""], "has no passages"),
    ],
)
def test_malformed_files(tmp_path, lines, message):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=message):
        read_lambada(path)


def test_passages_without_a_last_word(model, tok):
    assert split_passage("one two three") == ("one two", " three")
    for text, message in [("", "is empty"), ("single", "no space"), ("trailing ", "empty context or last")]:
        with pytest.raises(DataError, match=message):
            lambada(model, tok, ["fine text here", text], progress=False)
    with pytest.raises(DataError, match="not found"):
        read_lambada("/nonexistent/lambada.jsonl")
