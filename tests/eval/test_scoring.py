"""The scoring primitives: right padding, chunks with the state carried, states after contexts."""

from __future__ import annotations

import pytest
import torch

from rwkvkit.eval import score, states_after
from tests.eval.conftest import hand_score


def sequences(n: int = 6, vocab: int = 4000) -> list[list[int]]:
    g = torch.Generator().manual_seed(1)
    lengths = [1, 2, 5, 9, 9, 23][:n]
    return [[0, *torch.randint(1, vocab, (k,), generator=g).tolist()] for k in lengths]


def test_score_equals_one_forward_per_sequence(model):
    seqs = sequences()
    starts = [1, 1, 3, 1, 5, 10]
    for chunk_len, batch_size in [(1024, 4), (4, 3), (1, 16)]:
        got = score(model, seqs, starts, batch_size=batch_size, chunk_len=chunk_len)
        for seq, start, s in zip(seqs, starts, got):
            lp, greedy = hand_score(model, seq, start)
            assert s.tokens == len(seq) - start
            assert s.logprob == pytest.approx(lp, abs=1e-4), (chunk_len, batch_size)
            assert s.greedy == greedy


def test_nothing_to_score():
    """A sequence shorter than its start has no scored token: log-probability 0, vacuously greedy."""
    got = score(None, [[0], [0, 5]], [1, 2])
    assert [(s.logprob, s.greedy, s.tokens) for s in got] == [(0.0, True, 0), (0.0, True, 0)]


def test_states_after_are_exact(model):
    seqs = [[], *sequences()]
    states = states_after(model, seqs, batch_size=4, chunk_len=4)
    assert states[0] is None
    for seq, state in zip(seqs[1:], states[1:]):
        with torch.no_grad():
            _, ref = model(torch.tensor([seq]))
        assert state.batch_size == 1
        for name in ref.tensors:
            torch.testing.assert_close(state[name], ref[name], atol=1e-5, rtol=1e-4)


def test_score_from_given_states(model):
    """Scoring a continuation from the state after its context equals scoring the whole sequence."""
    seqs = sequences()[2:]
    cut = [2, 3, 4, 10]
    states = states_after(model, [s[: c - 1] for s, c in zip(seqs, cut)])
    tails = [s[c - 1 :] for s, c in zip(seqs, cut)]
    got = score(model, tails, 1, states=states, batch_size=3)
    for seq, c, s in zip(seqs, cut, got):
        lp, greedy = hand_score(model, seq, c)
        assert s.logprob == pytest.approx(lp, abs=1e-4) and s.greedy == greedy
