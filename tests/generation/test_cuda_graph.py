"""The graph-replayed decoding step (rwkvkit.generation.cuda_graph).

On the CPU the capture is :class:`EagerGraph`: capture runs the step once and keeps its outputs as
the static outputs, and each replay re-runs the captured callable on the same static buffers and
copies the results into those outputs, as a CUDA graph writes into the same memory. So these tests
check all of the bookkeeping (buckets and padding rows, static buffers reused, the state kept
resident, states handed out as values, rows joining and leaving the BatchEngine, eager fallbacks)
against the plain path: batch 1 is bitwise the plain forward; padded batches run the same rows in
a larger matrix product (~1e-6 differences, far below the greedy margins checked here).

The tests marked ``gpu`` run the real ``torch.cuda.CUDAGraph`` and are skipped without CUDA.
"""

from __future__ import annotations

import logging

import pytest
import torch

import rwkvkit
from rwkvkit.errors import ConfigError, InputError, StateError
from rwkvkit.generation import BatchEngine, generate, generate_tokens
from rwkvkit.generation.cuda_graph import CudaGraphStep, EagerGraph, _fingerprint, decode_step
from rwkvkit.models.rwkv.init import random_model
from tests.generation.test_engine import CHUNK, CONFIGS  # the engine tests' models, prompts chunked alike


@pytest.fixture(autouse=True)
def reference_path(monkeypatch):
    """These tests compare paths bitwise (batched vs alone, graph vs plain): every one runs the model
    as given, without the CPU fast path's twin (its fused one-row kernel rounds differently from a
    batched product; tests/inference/test_auto.py covers the twin)."""
    monkeypatch.setenv("RWKVKIT_FAST", "0")


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def tok():
    return rwkvkit.load_tokenizer("bytes")


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def model(request):
    return random_model(CONFIGS[request.param], seed=3)


def fake_step(model, **kwargs) -> CudaGraphStep:
    return CudaGraphStep(model, graph_factory=EagerGraph, **kwargs)


def assert_same_state(a, b, atol: float = 0.0) -> None:
    assert a.tensors.keys() == b.tensors.keys()
    for name in a.tensors:
        if atol:
            torch.testing.assert_close(a[name], b[name], atol=atol, rtol=1e-5)  # v4's aa, bb grow large
        else:
            assert torch.equal(a[name], b[name]), name


# -- the switch -----------------------------------------------------------------------------------


def test_never_on_cpu_and_the_off_switches(model, monkeypatch):
    assert decode_step(model) is None  # CPU model: plain forwards
    assert decode_step(model, False) is None
    step = fake_step(model)
    assert decode_step(model, step) is step  # an explicit step is used as given, on any device
    with pytest.raises(ConfigError, match="another model"):
        decode_step(random_model(CONFIGS["v4"], seed=1), step)
    with pytest.raises(ConfigError, match="cuda_graphs"):
        decode_step(model, "yes")
    assert decode_step(object()) is None  # not an rwkvkit recurrent model
    monkeypatch.setenv("RWKVKIT_CUDA_GRAPHS", "0")
    assert not rwkvkit.generation.cuda_graph.graphs_enabled()
    monkeypatch.setenv("RWKVKIT_CUDA_GRAPHS", "1")
    assert rwkvkit.generation.cuda_graph.graphs_enabled()
    with pytest.raises(ConfigError, match="buckets"):
        CudaGraphStep(model, buckets=(4, 2))


def test_a_moved_model_gets_a_new_step():
    """decode_step keeps one step per model; it is rebuilt when the model's tensors moved."""
    model = random_model(CONFIGS["v4"], seed=1)
    before = _fingerprint(model)
    assert _fingerprint(model) == before
    model.double()
    assert _fingerprint(model) != before


# -- the step itself ------------------------------------------------------------------------------


def test_buckets_padding_and_resident_state(model):
    """B rows run in the smallest bucket >= B; one capture per bucket; the state passed back costs no
    copy; the result equals the plain forward (padding rows do not leak into real rows)."""
    step = fake_step(model)
    assert [step.bucket_size(b) for b in (1, 2, 3, 5, 33, 64, 65)] == [1, 2, 4, 8, 64, 64, None]
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, 256, (3, 7), generator=g)
    _, state0 = model(prompt)
    state_g, state_e = state0, state0
    ids = torch.randint(0, 256, (3, 1), generator=g)
    for _ in range(5):
        logits_g, state_g = step(ids, state_g)
        logits_e, state_e = model(ids, state_e, full_output=False)
        torch.testing.assert_close(logits_g, logits_e, atol=1e-5, rtol=0)
        assert_same_state(state_g, state_e, atol=1e-5)
        torch.testing.assert_close(state_g.logits, state_e.logits, atol=1e-5, rtol=0)
        assert step.owns(state_g) and not step.owns(state_e)
        ids = logits_e[:, -1].argmax(-1, keepdim=True)
    assert (step.captures, step.replays, step.loads) == (1, 5, 1)
    assert state0.batch_size == 3  # the given state is a value: left as it was
    torch.testing.assert_close(model(prompt)[1]["wkv"], state0["wkv"])

    # Batch 1, a fresh sequence (state=None), ids as a list: bitwise the plain forward.
    logits_g, s = step([5], None)
    logits_e, e = model(torch.tensor([[5]]), None, full_output=False)
    assert torch.equal(logits_g, logits_e) and torch.equal(s["wkv"], e["wkv"])
    assert step.captures == 2 and set(step.buckets) >= {1, 4}


def test_errors_are_those_of_the_plain_forward(model):
    step = fake_step(model)
    with pytest.raises(InputError, match="vocabulary"):
        step([256], None)
    with pytest.raises(InputError, match=r"\[B, 1\]"):
        step(torch.zeros(2, 3, dtype=torch.long), None)
    with pytest.raises(StateError):
        step([1, 2], model.initial_state(3))
    assert step.replays == 0


def test_beyond_the_largest_bucket_runs_eagerly(model, tok):
    step = fake_step(model, buckets=(1, 2))
    logits, state = step([1, 2, 3], None)
    assert step.eager_steps == 1 and step.captures == 0 and not step.owns(state)
    want, _ = model(torch.tensor([[1], [2], [3]]), full_output=False)
    torch.testing.assert_close(logits, want)


def test_a_failed_capture_falls_back_to_plain_forwards(model, tok, caplog):
    class Broken(EagerGraph):
        def capture(self, fn):
            raise RuntimeError("operation not permitted when stream is capturing")

    step = CudaGraphStep(model, graph_factory=Broken)
    with caplog.at_level(logging.WARNING, logger="rwkvkit.generation"):
        text = generate(model, tok, "Hello", 12, temperature=0, cuda_graphs=step)
    assert text == generate(model, tok, "Hello", 12, temperature=0, cuda_graphs=False)
    assert "capture failed" in caplog.text and "stream is capturing" in step.failed
    assert step.replays == 0 and step.eager_steps == 11  # the 12th token is never fed


# -- generate ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        dict(temperature=0),
        dict(temperature=1.0, top_p=0.9, seed=3, presence_penalty=0.3, frequency_penalty=0.2),
    ],
    ids=["greedy", "sampled"],
)
def test_generate_equals_the_plain_path(model, tok, options):
    """Batch 1 runs the same arithmetic: tokens, text, final state and logits are bitwise equal."""
    step = fake_step(model)
    plain = generate(model, tok, "The quick brown fox", 30, stream=True, chunk_len=CHUNK, **options)
    text = "".join(plain)
    graphed = generate(
        model, tok, "The quick brown fox", 30, stream=True, chunk_len=CHUNK, cuda_graphs=step, **options
    )
    assert "".join(graphed) == text and graphed.tokens == plain.tokens and len(plain.tokens) == 30
    assert_same_state(graphed.state, plain.state)
    assert torch.equal(graphed.logits, plain.logits)
    # one capture, one copy of the prefilled state into the buffers, then every step resident
    assert (step.captures, step.loads, step.replays, step.eager_steps) == (1, 1, 30, 0)


def test_states_handed_out_are_values(model, tok):
    """A state read mid-stream does not change when the stream (or another one) goes on, and a saved
    state seeds two generations that both equal the plain path."""
    step = fake_step(model)
    gen = generate_tokens(model, tok.encode("abc"), max_new_tokens=20, seed=1, cuda_graphs=step)
    ref = generate_tokens(model, tok.encode("abc"), max_new_tokens=20, seed=1, cuda_graphs=False)
    for _ in range(5):
        next(gen), next(ref)
    mid, mid_ref = gen.state, ref.state
    assert not step.owns(mid)
    copy = mid.clone()
    list(gen), list(ref)
    assert gen.tokens == ref.tokens
    assert_same_state(mid, copy)
    assert_same_state(mid, mid_ref)

    a = generate(model, tok, "", 10, state=mid, logits=mid_ref.logits, temperature=0, cuda_graphs=step)
    b = generate(model, tok, "", 10, state=mid, logits=mid_ref.logits, temperature=0, cuda_graphs=step)
    c = generate(model, tok, "", 10, state=mid_ref, logits=mid_ref.logits, temperature=0, cuda_graphs=False)
    assert a == b == c
    assert_same_state(mid, copy)


def test_interleaved_streams_share_one_step(model, tok):
    """Two streams on one step take turns in its buffers: each evicts the other's resident state
    (into private copies), and both equal their plain runs."""
    step = fake_step(model)
    prompts = ["first prompt", "second"]
    graphed = [
        generate_tokens(model, tok.encode(p), max_new_tokens=15, seed=2, cuda_graphs=step) for p in prompts
    ]
    plain = [
        generate_tokens(model, tok.encode(p), max_new_tokens=15, seed=2, cuda_graphs=False) for p in prompts
    ]
    for _ in range(15):
        for s in graphed:
            next(s)
    for s in plain:
        list(s)
    assert [s.tokens for s in graphed] == [s.tokens for s in plain]
    for g, p in zip(graphed, plain, strict=True):
        assert_same_state(g.state, p.state)
    assert step.evictions >= 14 and step.captures == 1


# -- BatchEngine ------------------------------------------------------------------------------------


def run(engine: BatchEngine, requests, join_at):
    join_at = dict(join_at)
    ids, steps = [engine.add(p, **o) for p, o in requests], 0
    while engine.has_work or join_at:
        ids += [engine.add(p, **o) for p, o in join_at.pop(steps, [])]
        engine.step()
        steps += 1
    return [engine.pop_result(i) for i in ids]


REQUESTS = [
    ("Hello", dict(max_new_tokens=24, temperature=0)),
    ("A", dict(max_new_tokens=9, temperature=0)),
    ("The quick brown fox jumps over the lazy dog, twice.", dict(max_new_tokens=20, temperature=0)),
    ("abc", dict(max_new_tokens=30, temperature=0, presence_penalty=0.4, frequency_penalty=0.4)),
    ("x" * 37, dict(max_new_tokens=5, temperature=0, stop_tokens=[ord("e")])),
]
LATER = {
    3: [("joined late", dict(max_new_tokens=12, temperature=0))],
    6: [("z", dict(max_new_tokens=17, temperature=0)), ("q", dict(max_new_tokens=3, temperature=0))],
}


@pytest.mark.parametrize("max_batch", [3, 64])
def test_batch_engine_with_rows_joining_and_leaving(model, tok, max_batch):
    """Greedy requests joining and leaving: the same tokens, texts and stop reasons as the plain
    engine, final states within 1e-5 (padded batches), buckets 1 to 8 captured once each."""
    step = fake_step(model)
    plain = run(BatchEngine(model, tok, max_batch, CHUNK, cuda_graphs=False), REQUESTS, LATER)
    graphed = run(BatchEngine(model, tok, max_batch, CHUNK, cuda_graphs=step), REQUESTS, LATER)
    for g, p in zip(graphed, plain, strict=True):
        assert (g.tokens, g.text, g.stop_reason) == (p.tokens, p.text, p.stop_reason)
        assert_same_state(g.state, p.state, atol=1e-5)
        assert not step.owns(g.state)
        torch.testing.assert_close(g.logits, p.logits, atol=1e-4, rtol=0)
    assert 2 <= step.captures <= len({step.bucket_size(b) for b in range(1, min(max_batch, 7) + 1)})
    assert step.eager_steps == 0 and step.loads < step.replays


def test_batch_engine_keeps_the_state_resident(model, tok):
    """The state is copied into the graph's buffers only when the rows change: here once when the
    three requests start, and once when the shortest one leaves."""
    step = fake_step(model)
    engine = BatchEngine(model, tok, max_batch=8, cuda_graphs=step)
    ids = [engine.add(p, max_new_tokens=k, temperature=0) for p, k in [("ab", 10), ("cd", 10), ("ef", 4)]]
    while engine.has_work:
        engine.step()
    # decode steps: 10 (each request feeds its last token for its final state); rows change once
    assert step.replays == 10 and step.loads == 2 and step.captures == 2  # buckets 4 (3 rows), 2
    for rid, prompt, k in zip(ids, ["ab", "cd", "ef"], [10, 10, 4], strict=True):
        want = generate_tokens(model, tok.encode(prompt), max_new_tokens=k, temperature=0, cuda_graphs=False)
        assert engine.pop_result(rid).tokens == list(want)


# -- CUDA only ----------------------------------------------------------------------------------------


@pytest.fixture
def cuda_model(request):
    model = random_model(CONFIGS[request.param], seed=3).cuda()
    yield model
    del model
    torch.cuda.empty_cache()


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("cuda_model", sorted(CONFIGS), indirect=True)
def test_cuda_graphs_give_the_eager_tokens(cuda_model, tok):
    """On CUDA, generate() and BatchEngine use graphs by default and give the eager tokens."""
    step = decode_step(cuda_model)
    assert step is not None and decode_step(cuda_model) is step  # shared by later calls
    for options in [dict(temperature=0), dict(temperature=1.0, top_p=0.9, seed=5)]:
        eager = generate(
            cuda_model, tok, "The quick brown fox", 40, stream=True, cuda_graphs=False, **options
        )
        text = "".join(eager)
        graphed = generate(cuda_model, tok, "The quick brown fox", 40, stream=True, **options)
        assert "".join(graphed) == text and graphed.tokens == eager.tokens
        assert step.failed is None and step.replays >= 39  # 40 tokens: 39 fed so far
        assert_same_state(graphed.state, eager.state, atol=1e-5)
    plain = run(BatchEngine(cuda_model, tok, 4, CHUNK, cuda_graphs=False), REQUESTS, LATER)
    graphed = run(BatchEngine(cuda_model, tok, 4, CHUNK), REQUESTS, LATER)
    for g, p in zip(graphed, plain, strict=True):
        assert (g.tokens, g.text, g.stop_reason) == (p.tokens, p.text, p.stop_reason)
        assert_same_state(g.state, p.state, atol=1e-5)
    assert step.failed is None and step.captures >= 2  # bucket 1, and 4 for the engine


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("cuda_model", ["v7"], indirect=True)
def test_cuda_replayed_steps_do_not_synchronise(cuda_model):
    """torch.cuda.set_sync_debug_mode("error") raises on any host synchronisation: a replayed step
    (ids from the device or from Python ints, the resident state or a state copied in) has none."""
    step = CudaGraphStep(cuda_model)
    state = cuda_model(torch.randint(0, 256, (3, 9), device="cuda"))[1]
    logits, state = step([1, 2, 3], state)  # captures (which synchronises) outside the check
    other = state.clone()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(4):
            ids = logits[:, -1].argmax(-1, keepdim=True)  # greedy on the device: no host read
            logits, state = step(ids, state)
        logits, state = step([4, 5, 6], state)  # host ints: pinned, non-blocking copy
        logits, _unused = step(logits[:, -1].argmax(-1, keepdim=True), other)  # copied in, evicts
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()
    assert step.captures == 1 and step.replays == 7 and step.failed is None
    assert torch.isfinite(logits).all()
    assert torch.isfinite(state["wkv"]).all()  # evicted: private copies, still the right values
