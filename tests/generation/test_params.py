"""Tests of the shared pieces of the generation path: SamplingParams, TextTracker, the prompt id check."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import rwkvkit
from rwkvkit.errors import ConfigError, InputError, TokenizerError
from rwkvkit.generation import BatchEngine, SamplingParams, TextTracker, generate, generate_tokens
from rwkvkit.state import State


class Counter(nn.Module):
    """A recurrent toy LM over 256 ids that never checks its input (so only generation can): the
    logits favour ``(token * 7 + 3) % 256`` ([B, T, 256]); the state (batchable) is the last token."""

    def __init__(self) -> None:
        super().__init__()
        self.config = SimpleNamespace(vocab_size=256)
        self.calls = 0

    def forward(self, tokens: torch.Tensor, state=None):
        self.calls += 1
        logits = torch.nn.functional.one_hot((tokens * 7 + 3) % 256, 256).float() * 5.0
        return logits + torch.linspace(0, 1, 256), State({"last": tokens[None, :, -1:].float()}, "7")


@pytest.fixture(scope="module")
def tok():
    return rwkvkit.load_tokenizer("bytes")


def test_keywords_and_params_are_the_same_request(tok) -> None:
    options = dict(max_new_tokens=12, temperature=0.9, top_p=0.7, top_k=40, presence_penalty=0.3,
                   frequency_penalty=0.2, penalty_decay=0.9, banned_tokens=[0], seed=5)  # fmt: skip
    params = SamplingParams(**options)
    text = generate(Counter(), tok, "ab", **options)
    assert generate(Counter(), tok, "ab", params=params) == text
    # A keyword overrides one field of params; max_new_tokens may also come positionally.
    assert generate(Counter(), tok, "ab", params=dataclasses.replace(params, seed=6), seed=5) == text
    assert generate(Counter(), tok, "ab", 12, params=dataclasses.replace(params, max_new_tokens=3)) == text
    assert list(generate_tokens(Counter(), [1, 2], params=params)) == list(
        generate_tokens(Counter(), [1, 2], **options)
    )
    engine = BatchEngine(Counter(), tok)
    a, b = engine.add("ab", params=params), engine.add("ab", **options)
    results = engine.run()
    assert results[a].text == results[b].text == text


def test_fields_are_checked_and_normalised_once() -> None:
    params = SamplingParams(banned_tokens=range(3), stop="\n\n", stop_tokens=7, top_k=True + 1, seed=3)
    assert params.banned_tokens == (0, 1, 2) and params.stop == ("\n\n",) and params.stop_tokens == (7,)
    assert isinstance(params.temperature, float) and params == SamplingParams(**dataclasses.asdict(params))
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.temperature = 0.5  # type: ignore[misc]
    with pytest.raises(ConfigError, match="top_p must be in"):
        SamplingParams(top_p=0)
    with pytest.raises(ConfigError, match="penalty_decay"):
        dataclasses.replace(params, penalty_decay=2.0)  # replace() checks again
    with pytest.raises(TypeError, match="temprature"):
        generate(Counter(), None, [1], temprature=0.5)
    with pytest.raises(TypeError, match="top"):
        BatchEngine(Counter()).add([1], topp=0.5)
    with pytest.raises(ConfigError, match="params must be a SamplingParams"):
        generate(Counter(), None, [1], params=dict(temperature=0))
    with pytest.raises(ConfigError, match="stop strings need text"):
        generate_tokens(Counter(), [1], stop="x")


def test_vocabulary_checks_need_the_model() -> None:
    params = SamplingParams(banned_tokens=[5], stop_tokens=[300])
    with pytest.raises(ConfigError, match="stop_tokens has ids \\[300\\]"):
        params.check_vocab(256)
    params.check_vocab(301)
    with pytest.raises(ConfigError, match="whole vocabulary"):
        SamplingParams(banned_tokens=range(4)).check_vocab(8, vocab_limit=4)
    assert SamplingParams().for_tokenizer(SimpleNamespace(eos_id=0)).stop_tokens == (0,)
    assert SamplingParams(stop_tokens=()).for_tokenizer(SimpleNamespace(eos_id=0)).stop_tokens == ()
    assert SamplingParams().for_tokenizer(None).stop_tokens == ()


@pytest.mark.parametrize("bad", [[1, 256], [-1], [3, 1000, 2]])
def test_prompt_ids_outside_the_vocabulary_fail_before_any_model_call(tok, bad) -> None:
    """The prompt is checked once at the public boundary (the model's forward need not check it)."""
    model = Counter()
    with pytest.raises(InputError, match="outside the model vocabulary") as info:
        generate(model, tok, bad, 4)
    assert isinstance(info.value, TokenizerError)  # also what a tokenizer mismatch raised before
    with pytest.raises(InputError, match="outside the model vocabulary"):
        generate(model, tok, bad, 4, stream=True)
    with pytest.raises(InputError, match="outside the model vocabulary"):
        generate_tokens(model, torch.tensor(bad))
    engine = BatchEngine(model, tok)
    with pytest.raises(InputError, match="outside the model vocabulary"):
        engine.add(bad, 4)
    assert model.calls == 0 and not engine.has_work


def test_text_tracker_holds_back_possible_stop_strings_and_split_characters(tok) -> None:
    t = TextTracker(tok, ("\n\n", "END"))
    assert [t.push(i) for i in tok.encode("a\nb")] == ["a", "", "\nb"]  # "\n" might start "\n\n"
    assert [t.push(i) for i in tok.encode("é")] == ["", "é"]  # two bytes: never half a character
    assert [t.push(i) for i in tok.encode("EN")] == ["", ""] and not t.stop_hit
    assert t.push(tok.encode("D")[0]) == "" and t.stop_hit  # the text ends right before "END"
    assert t.text == "a\nbé"
    t = TextTracker(tok, ("xyz",))
    assert [t.push(i) for i in tok.encode("axy")] == ["a", "", ""]
    assert t.close() == "xy" and t.text == "axy" and not t.stop_hit  # the end releases held text
    ids_only = TextTracker(None)
    assert ids_only.push(97) == "" and ids_only.close() == "" and ids_only.text == ""
    with pytest.raises(ConfigError, match="stop strings need a tokenizer"):
        TextTracker(None, ("x",))
