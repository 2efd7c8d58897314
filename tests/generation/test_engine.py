"""Tests of rwkvkit.generation.engine.BatchEngine: batched results equal generate() run alone.

Two kinds of model are used:

* ``RowByRow(model)`` runs every row of a batch as its own batch-1 forward. The batched results are
  then *bitwise* those of the model run alone, so these tests compare tokens, text, stop reasons,
  final states and logits exactly: they test the engine's bookkeeping (prefill chunks, joins and
  leaves, per-row options and generators, penalties, stop handling) with no rounding in the way.
* the plain model, whose batched matrix products may differ from batch-1 ones in the last bits
  (~1e-6 on the logits). A token can then only change on a near-tie; the greedy tests check that
  every step's margin between the two best logits is far above that (so equal tokens are
  guaranteed, not lucky), and states are compared within 1e-5.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import rwkvkit
from rwkvkit.errors import ConfigError
from rwkvkit.generation import BatchEngine, generate
from rwkvkit.generation.engine import StepEvent
from rwkvkit.models.rwkv.config import RWKVConfig
from rwkvkit.models.rwkv.init import random_model
from rwkvkit.state import State


@pytest.fixture(autouse=True)
def reference_path(monkeypatch):
    """These tests compare paths bitwise (batched vs alone, graph vs plain): every one runs the model
    as given, without the CPU fast path's twin (its fused one-row kernel rounds differently from a
    batched product; tests/inference/test_auto.py covers the twin)."""
    monkeypatch.setenv("RWKVKIT_FAST", "0")


CONFIGS = {
    "v7": RWKVConfig(
        version="7",
        n_layer=2,
        n_embd=64,
        vocab_size=256,
        head_size=32,
        lora_w=8,
        lora_a=8,
        lora_v=8,
        lora_g=16,
    ),
    "v4": RWKVConfig(version="4", n_layer=2, n_embd=64, vocab_size=256),
}
CHUNK = 16  # small prefill chunks so that prompts span several (same value for engine and generate)


@pytest.fixture(scope="module")
def tok():
    return rwkvkit.load_tokenizer("bytes")


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def model(request):
    return random_model(CONFIGS[request.param], seed=3)


class RowByRow:
    """Runs each batch row as its own batch-1 forward, and records every call's tokens."""

    def __init__(self, model) -> None:
        self.model = model
        self.config = model.config
        self.device = model.device
        self.calls: list[torch.Tensor] = []

    def initial_state(self, batch_size: int = 1) -> State:
        return self.model.initial_state(batch_size)

    accepts_full_output = True

    def __call__(self, tokens: torch.Tensor, state: State | None = None, full_output: bool = True):
        self.calls.append(tokens.clone())
        outs, states = [], []
        for i in range(tokens.shape[0]):
            row_state = None if state is None else state.select([i])
            out, s = self.model(tokens[i : i + 1], row_state, full_output=full_output)
            outs.append(out)
            states.append(s)
        return torch.cat(outs), State.cat(states)


# A mix of prompt lengths (1 token to several chunks) and options: greedy and seeded sampling, top-k,
# penalties, bans, stop tokens, stop strings, max_new_tokens from 0 to 40.
CASES: list[tuple[str, dict]] = [
    ("Hello", dict(max_new_tokens=24, temperature=0)),
    ("A", dict(max_new_tokens=30, temperature=1.0, top_p=0.9, seed=1)),
    ("The quick brown fox jumps over the lazy dog, twice.", dict(max_new_tokens=20, temperature=0.8, seed=2)),
    ("abc", dict(max_new_tokens=40, temperature=0, presence_penalty=0.4, frequency_penalty=0.4)),
    (
        "x" * 37,
        dict(
            max_new_tokens=25, temperature=1.2, top_k=20, seed=3, presence_penalty=0.3, frequency_penalty=0.1
        ),
    ),
    ("Once", dict(max_new_tokens=1, temperature=0)),
    ("Zero", dict(max_new_tokens=0)),
    (
        "stop me",
        dict(max_new_tokens=40, temperature=1.0, top_p=1.0, seed=4, stop_tokens=[ord("e"), ord("a")]),
    ),
    ("strings", dict(max_new_tokens=40, temperature=1.0, seed=5, stop=["e", "o "])),
    ("banned", dict(max_new_tokens=15, temperature=1.0, seed=6, banned_tokens=list(range(97, 123)))),
    (
        "greedy seeded " * 3,
        dict(
            max_new_tokens=30,
            temperature=0,
            seed=7,
            penalty_decay=0.5,
            presence_penalty=0.2,
            frequency_penalty=2,
        ),
    ),
]


def reference(model, tok, prompt, options):
    """generate() alone: (tokens, text, stop_reason, state, logits)."""
    gen = generate(model, tok, prompt, stream=True, chunk_len=CHUNK, **options)
    text = "".join(gen)
    return gen.tokens, text, gen.stop_reason, gen.state, gen.logits


def run_engine(engine: BatchEngine, cases, join_at: dict[int, list] | None = None):
    """Add ``cases`` (some only at later steps), step to the end; returns results and events per id."""
    join_at = dict(join_at or {})
    ids = [engine.add(p, **o) for p, o in cases]
    events: dict[int, list[StepEvent]] = {}
    later: list[int] = []
    step = 0
    while engine.has_work or join_at:
        for p, o in join_at.pop(step, []):
            later.append(engine.add(p, **o))
        for e in engine.step():
            events.setdefault(e.request_id, []).append(e)
        assert engine.num_active <= engine.max_batch
        step += 1
    return ids + later, {i: engine.pop_result(i) for i in ids + later}, events


def assert_same_state(a: State, b: State, exact: bool) -> None:
    assert a.tensors.keys() == b.tensors.keys()
    for name in a.tensors:
        if exact:
            assert torch.equal(a[name], b[name]), name
        else:
            torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=0)


@pytest.mark.parametrize("max_batch", [3, 64])
def test_matches_generate_alone_exactly(model, tok, max_batch):
    """Every request, whatever else is in the batch, equals generate() alone (bitwise, RowByRow)."""
    spy = RowByRow(model)
    engine = BatchEngine(spy, tok, max_batch=max_batch, prefill_chunk=CHUNK)
    first, second = CASES[:7], CASES[7:]
    # Half the requests join mid-way (at steps 2 and 5), while others are decoding or queued.
    ids, results, events = run_engine(engine, first, {2: second[:2], 5: second[2:]})
    for rid, (prompt, options) in zip(ids, first + second, strict=True):
        tokens, text, reason, state, logits = reference(model, tok, prompt, options)
        res = results[rid]
        assert res.tokens == tokens, (prompt, options)
        assert res.text == text
        assert res.stop_reason == reason
        assert res.prompt_tokens == tok.encode(prompt)
        assert_same_state(res.state, state, exact=True)
        assert torch.equal(res.logits, logits)
        # The event stream of a request replays its result: tokens, text pieces, one final event.
        evs = events[rid]
        assert [e.token for e in evs if e.token is not None] == res.tokens
        assert "".join(e.text for e in evs) == res.text
        assert [e.finished for e in evs] == [False] * (len(evs) - 1) + [True]
        assert evs[-1].result is res

    # Structure: a forward with T == 1 is the one decode call of its step (at most max_batch rows);
    # every prefill row is a slice of its own prompt, never padded.
    prompts = [tok.encode(p) for p, _ in first + second]
    for call in spy.calls:
        assert call.shape[0] <= max_batch
        if call.shape[1] > 1:
            for row in call.tolist():
                assert any(
                    p[i : i + len(row)] == row and i % CHUNK == 0 for p in prompts for i in range(len(p))
                )
    if max_batch == 3:
        assert max(c.shape[0] for c in spy.calls) == 3  # the queue was used


@pytest.mark.parametrize("budget", [1, CHUNK, 3 * CHUNK])
def test_prefill_budget_gives_the_same_results(model, tok, budget):
    """With a prefill budget, prompts are fed over several steps (at most ``budget`` tokens per step,
    plus the rest of the forward that crossed it) and every result still equals generate() alone."""
    spy = RowByRow(model)
    engine = BatchEngine(spy, tok, max_batch=64, prefill_chunk=CHUNK, prefill_budget=budget)
    first, second = CASES[:7], CASES[7:]
    fed_per_step = []
    ids = [engine.add(p, **o) for p, o in first]
    later = {2: second[:2], 5: second[2:]}
    step = 0
    while engine.has_work or later:
        ids += [engine.add(p, **o) for p, o in later.pop(step, [])]
        before = len(spy.calls)
        engine.step()
        fed_per_step.append(sum(c.numel() for c in spy.calls[before:] if c.shape[1] > 1))
        step += 1
    for rid, (prompt, options) in zip(ids, first + second, strict=True):
        tokens, text, reason, state, logits = reference(model, tok, prompt, options)
        res = engine.pop_result(rid)
        assert (res.tokens, res.text, res.stop_reason) == (tokens, text, reason), (prompt, options)
        assert_same_state(res.state, state, exact=True)
    assert max(fed_per_step) < budget + CHUNK


def test_prefill_budget_keeps_decoding_during_a_long_prefill(model, tok):
    engine = BatchEngine(model, tok, max_batch=4, prefill_chunk=CHUNK, prefill_budget=CHUNK)
    short = engine.add("hi", max_new_tokens=50, temperature=0)
    engine.step()  # "hi" is prefilled and decoding
    long = engine.add("x" * (10 * CHUNK), max_new_tokens=5, temperature=0)
    tokens_while_prefilling = 0
    while engine.num_prefilling or engine.num_queued:
        events = engine.step()
        tokens_while_prefilling += sum(1 for e in events if e.request_id == short and e.token is not None)
    assert tokens_while_prefilling >= 9  # one token per step of the ten-chunk prefill
    # a request being prefilled can be cancelled; its result says so
    third = engine.add("y" * (5 * CHUNK), max_new_tokens=5)
    engine.step()
    assert engine.num_prefilling == 1 and engine.cancel(third)
    results = engine.run()
    assert results[third].stop_reason == "cancelled" and results[third].state is None
    assert len(results[long].tokens) == 5 and len(results[short].tokens) == 50
    with pytest.raises(ConfigError, match="prefill_budget"):
        BatchEngine(model, tok, prefill_budget=0)


def test_continuous_batching_one_decode_per_step(model, tok):
    """Rows leave early and the rest go on; each step runs exactly one decode forward."""
    spy = RowByRow(model)
    engine = BatchEngine(spy, tok, max_batch=8)
    lengths = [3, 9, 1, 6]
    ids = [engine.add("ab" * (k + 1), max_new_tokens=k, temperature=0) for k in lengths]
    active_per_step = []
    while engine.has_work:
        before = len(spy.calls)
        events = engine.step()
        decodes = [c for c in spy.calls[before:] if c.shape[1] == 1 and c.shape[0] > 0]
        prefills = [c for c in spy.calls[before:] if c.shape[1] > 1]
        assert len(decodes) <= 1
        # Prompts "ab"*(k+1) have four different lengths: four separate prefill forwards in step 1.
        if active_per_step == []:
            assert not decodes and len(prefills) == 4
        active_per_step.append(decodes[0].shape[0] if decodes else 0)
        assert all(e.request_id in ids for e in events)
    # Each request stays max_new_tokens + 1 steps (the last one feeds its final token for the state).
    expected = [sum(1 for k in lengths if k >= s) for s in range(1, max(lengths) + 1)]
    assert active_per_step == [0, *expected]
    for rid, k in zip(ids, lengths, strict=True):
        assert len(engine.pop_result(rid).tokens) == k


@pytest.mark.parametrize("max_batch", [4, 64])
def test_real_batched_model_greedy(model, tok, max_batch):
    """Plain model (batched matmuls): same greedy tokens, states within 1e-5, with clear margins."""
    prompts = ["Hi", "Hello world", "A longer prompt, over one chunk of sixteen tokens.", "z", "0123456789"]
    options = dict(max_new_tokens=20, temperature=0)
    engine = BatchEngine(model, tok, max_batch=max_batch, prefill_chunk=CHUNK)
    ids = [engine.add(p, **options) for p in prompts]
    results = engine.run()
    for rid, prompt in zip(ids, prompts, strict=True):
        # Margins of the run alone: batched logits differ by ~1e-6, far below every margin.
        stream = rwkvkit.generation.generate_tokens(model, tok.encode(prompt), chunk_len=CHUNK, **options)
        for _ in range(options["max_new_tokens"]):
            top2 = stream.logits.topk(2).values
            assert top2[0] - top2[1] > 1e-3
            next(stream)
        tokens, text, reason, state, logits = reference(model, tok, prompt, options)
        assert results[rid].tokens == tokens == stream.tokens
        assert results[rid].text == text
        assert_same_state(results[rid].state, state, exact=False)
        torch.testing.assert_close(results[rid].logits, logits, atol=1e-4, rtol=0)


def test_real_batched_model_sampling_and_companions(model, tok):
    """Plain model: seeded sampling with penalties equals generate alone, and a request's result does
    not depend on what else is in the batch (no padding or cross-row leak).

    Seeded draws compare probabilities p_i / q_i, so ~1e-6 logit noise could flip a token only when two
    candidates are that close: for these fixed seeds they are not (the test is deterministic)."""
    target = (
        "The tortoise",
        dict(max_new_tokens=30, temperature=1.0, top_p=0.9, seed=11, presence_penalty=0.2),
    )
    others = [(p, dict(o, max_new_tokens=min(o.get("max_new_tokens", 64), 12))) for p, o in CASES[:6]]
    alone = BatchEngine(model, tok, prefill_chunk=CHUNK)
    a = alone.add(target[0], **target[1])
    res_alone = alone.run()[a]
    crowd = BatchEngine(model, tok, max_batch=4, prefill_chunk=CHUNK)
    ids, results, _ = run_engine(crowd, others[:3] + [target], {1: others[3:]})
    res_crowd = results[ids[3]]
    tokens, text, reason, state, _ = reference(model, tok, target[0], target[1])
    assert res_alone.tokens == res_crowd.tokens == tokens
    assert res_alone.text == res_crowd.text == text
    assert res_crowd.stop_reason == reason
    assert_same_state(res_alone.state, state, exact=False)
    assert_same_state(res_crowd.state, state, exact=False)


def test_continue_from_state(model, tok):
    """A request may start from a saved state (with or without more prompt), like generate."""
    text, state = generate(model, tok, "Question:", 5, temperature=0, return_state=True)
    spy = RowByRow(model)
    engine = BatchEngine(spy, tok)
    a = engine.add("", 8, temperature=0, state=state)  # logits default to state.logits
    b = engine.add(" more", 8, temperature=0.7, seed=1, state=state)
    c = engine.add("fresh", 8, temperature=0)  # shares a prefill forward with b (same length, fresh)
    results = engine.run()
    ref_a = generate(model, tok, "", 8, temperature=0, state=state, logits=state.logits)
    ref_b = generate(model, tok, " more", 8, temperature=0.7, seed=1, state=state)
    ref_c = generate(model, tok, "fresh", 8, temperature=0)
    assert (results[a].text, results[b].text, results[c].text) == (ref_a, ref_b, ref_c)
    assert [tuple(call.shape) for call in spy.calls][0] == (2, 5)  # b and c prefilled together


class TieModel:
    """Logits that tie exactly on some steps, so greedy decoding draws among tied tokens.

    The state counts the tokens consumed; on every third position all even ids tie for the max.
    """

    def __init__(self, vocab: int = 16) -> None:
        self.config = SimpleNamespace(vocab_size=vocab)
        self.device = torch.device("cpu")

    def initial_state(self, batch_size: int = 1) -> State:
        return State({"n": torch.zeros(1, batch_size, 1)}, "7")

    def __call__(self, tokens: torch.Tensor, state: State | None = None):
        B, T = tokens.shape
        n = (state if state is not None else self.initial_state(B))["n"][0, :, 0]
        pos = n[:, None] + torch.arange(1, T + 1)  # [B, T]
        V = self.config.vocab_size
        logits = torch.zeros(B, T, V)
        tie = (pos % 3 == 0)[..., None] & (torch.arange(V) % 2 == 0)
        logits = torch.where(tie, torch.ones(()), logits)
        clear = ~(pos % 3 == 0)
        winner = (pos.long() * 5 + tokens) % V
        logits[clear] = logits[clear].scatter(-1, winner[clear][:, None], 2.0)
        return logits, State({"n": (n + T)[None, :, None]}, "7")


def test_greedy_ties_replay_the_generator():
    """On exact ties greedy rows draw like generate(): the skipped draws are replayed first."""
    model = TieModel()
    engine = BatchEngine(model, None, max_batch=4)
    ids = [engine.add([1, 2, 3][: k + 1], 12, temperature=0, seed=10 + k) for k in range(3)]
    results = engine.run()
    for k, rid in enumerate(ids):
        stream = rwkvkit.generation.generate_tokens(
            model, [1, 2, 3][: k + 1], max_new_tokens=12, temperature=0, seed=10 + k
        )
        assert results[rid].tokens == list(stream)


def test_token_ids_without_tokenizer(model):
    engine = BatchEngine(model, max_batch=2)
    rid = engine.add([72, 105], 6, temperature=0, stop_tokens=[])
    res = engine.run()[rid]
    ref = rwkvkit.generation.generate_tokens(model, [72, 105], max_new_tokens=6, temperature=0)
    assert res.tokens == list(ref) and res.text == ""
    with pytest.raises(ConfigError, match="tokenizer"):
        engine.add("text")
    with pytest.raises(ConfigError, match="tokenizer"):
        engine.add([1], stop="x")


def test_generate_many_cancel_and_errors(model, tok):
    engine = BatchEngine(model, tok, max_batch=2)
    prompts = ["one", "two", "three", "four", "five"]
    texts = engine.generate_many(prompts, 10, temperature=1.0, seed=[1, 2, 3, 4, 5])
    assert texts == [
        generate(model, tok, p, 10, temperature=1.0, seed=s) for p, s in zip(prompts, range(1, 6))
    ]

    queued_a = engine.add("a", 50)
    engine.add("b", 50)
    queued_c = engine.add("c", 50)
    engine.step()
    assert engine.cancel(queued_c) and engine.cancel(queued_a)  # one queued, one active
    assert not engine.cancel(12345)
    results = engine.run()
    assert results[queued_a].stop_reason == results[queued_c].stop_reason == "cancelled"
    assert results[queued_a].state is None and len(results[queued_a].tokens) == 1

    with pytest.raises(ConfigError, match="top_p"):
        engine.add("x", top_p=0)
    with pytest.raises(ConfigError, match="stop"):
        engine.add("x", stop=[""])
    with pytest.raises(ConfigError, match="empty"):
        engine.add("")
    with pytest.raises(ConfigError, match="max_batch"):
        BatchEngine(model, tok, max_batch=0)
