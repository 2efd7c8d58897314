"""Training windows (seeded per-epoch order, exact resume, ranks) and evaluation windows (each token once)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rwkvkit.data import WindowSampler, iter_eval_windows
from rwkvkit.data.binidx import DataError
from rwkvkit.data.tokens import permute


def tokens(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.int64) % 65000  # value = position: easy to check windows


@pytest.mark.parametrize("n", [1, 2, 3, 5, 16, 17, 1000, 4097])
def test_permute_is_a_bijection(n):
    for seed, epoch in [(0, 0), (0, 1), (123, 7)]:
        p = permute(np.arange(n), n, seed, epoch)
        assert sorted(p.tolist()) == list(range(n))
    if n >= 16:  # seeded: another seed or epoch gives another order
        assert not np.array_equal(permute(np.arange(n), n, 0, 0), permute(np.arange(n), n, 0, 1))
        assert not np.array_equal(permute(np.arange(n), n, 0, 0), permute(np.arange(n), n, 1, 0))


def test_permute_values_are_pinned():
    # the order depends on this code only (no numpy/torch RNG): pin it so a change is noticed
    assert permute(np.arange(10), 10, 0, 0).tolist() == [1, 7, 3, 6, 0, 2, 8, 4, 9, 5]


def test_batches_are_windows_of_the_data_and_deterministic():
    a = tokens(1001)
    s1, s2 = WindowSampler(a, ctx_len=10, seed=3), WindowSampler(a, ctx_len=10, seed=3)
    assert s1.n_windows == 100
    for _ in range(5):
        b1, b2 = s1.next_batch(7), s2.next_batch(7)
        assert b1.dtype == torch.long and b1.shape == (7, 11)
        assert torch.equal(b1, b2)
        for row in b1:  # consecutive positions starting on the ctx_len grid
            assert row[0] % 10 == 0 and torch.equal(row, torch.arange(int(row[0]), int(row[0]) + 11))
    other = WindowSampler(a, ctx_len=10, seed=4)
    assert not torch.equal(WindowSampler(a, ctx_len=10, seed=3).next_batch(8), other.next_batch(8))


def test_each_epoch_covers_every_window_once():
    a = tokens(1001)
    s = WindowSampler(a, ctx_len=10, seed=0)
    starts = np.concatenate([s.next_starts(7) for _ in range(30)])  # 210 windows: crosses two epoch ends
    assert s.epoch == 2 and s.cursor == 10
    for e in range(2):
        assert sorted(starts[e * 100 : (e + 1) * 100].tolist()) == list(range(0, 1000, 10))
    assert not np.array_equal(starts[:100], starts[100:200])  # a new order each epoch
    # every token but the first is a target exactly once per epoch (the windows share their boundary)
    targets = np.concatenate([np.arange(st + 1, st + 11) for st in starts[:100]])
    assert sorted(targets.tolist()) == list(range(1, 1001))


def test_resume_gives_exactly_the_same_batches():
    a = tokens(997)
    full = WindowSampler(a, ctx_len=8, seed=11)
    batches = [full.next_batch(5) for _ in range(60)]  # several epochs (124 windows each)
    for k in (0, 3, 24, 25, 59):
        s = WindowSampler(a, ctx_len=8, seed=11)
        for _ in range(k):
            s.next_batch(5)
        state = s.state_dict()
        resumed = WindowSampler(a, ctx_len=8, seed=11)
        resumed.load_state_dict(state)
        for b in batches[k:]:
            assert torch.equal(resumed.next_batch(5), b)
    assert set(state) >= {"epoch", "cursor"}


def test_state_from_other_settings_is_refused():
    s = WindowSampler(tokens(500), ctx_len=8, seed=1)
    s.next_batch(3)
    with pytest.raises(DataError, match="seed"):
        WindowSampler(tokens(500), ctx_len=8, seed=2).load_state_dict(s.state_dict())
    with pytest.raises(DataError, match="n_tokens"):
        WindowSampler(tokens(600), ctx_len=8, seed=1).load_state_dict(s.state_dict())
    with pytest.raises(DataError, match="window"):
        WindowSampler(tokens(5), ctx_len=8)


def test_ranks_split_each_step():
    a = tokens(2001)
    ranks = [WindowSampler(a, ctx_len=10, seed=5, rank=r, world_size=4) for r in range(4)]
    single = WindowSampler(a, ctx_len=10, seed=5)
    for _ in range(12):  # 12 steps * 4 ranks * 3 rows = 144 windows of 200
        together = torch.cat([s.next_batch(3) for s in ranks])
        assert torch.equal(together, single.next_batch(12))
    assert len({tuple(s.state_dict().items()) for s in ranks}) == 1


@pytest.mark.parametrize("n,ctx,bs", [(1, 4, 2), (10, 4, 2), (12, 4, 3), (13, 4, 3), (100, 7, 4), (0, 3, 2)])
@pytest.mark.parametrize("context_token", [0, None])
def test_eval_windows_cover_every_token_once(n, ctx, bs, context_token):
    a = tokens(n) + 1  # no zeros in the data: the context token 0 is recognizable
    stream = ([context_token] if context_token is not None else []) + a.tolist()
    seen = []
    for b in iter_eval_windows(a, ctx_len=ctx, batch_size=bs, context_token=context_token):
        assert b.inputs.shape == b.targets.shape == b.mask.shape and b.inputs.shape[1] == ctx
        assert b.inputs.shape[0] <= bs and b.inputs.dtype == torch.long and b.mask.dtype == torch.bool
        for x, y, m in zip(b.inputs, b.targets, b.mask):
            k = int(m.sum())
            assert m[:k].all() and not m[k:].any() and (x[k:] == 0).all() and (y[k:] == 0).all()
            seen.extend(y[:k].tolist())
            # inputs are the targets shifted by one in the stream (context token first)
            i = stream.index(int(y[0])) if k else 0
            assert x[:k].tolist() == stream[i - 1 : i - 1 + k]
    assert seen == a.tolist()[0 if context_token is not None else 1 :]


def test_eval_limit_scores_a_prefix():
    a = tokens(100) + 1
    full = [b for b in iter_eval_windows(a, ctx_len=8, batch_size=3)]
    part = [b for b in iter_eval_windows(a, ctx_len=8, batch_size=3, limit=21)]
    got = torch.cat([y[m] for _, y, m in part])
    assert got.tolist() == a[:21].tolist()
    assert torch.equal(part[0].inputs[:2], full[0].inputs[:2])  # rows before the limit are unchanged
    assert [] == list(iter_eval_windows(a, ctx_len=8, batch_size=3, limit=0))
    assert sum(int(m.sum()) for _, _, m in iter_eval_windows(a, 8, 3, limit=10**9)) == 100
