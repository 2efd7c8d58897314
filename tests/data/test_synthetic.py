"""Synthetic tasks: MQAR (zoology's distribution), permutation word problems, parity, key-value recall."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from rwkvkit.data.synthetic import (
    IGNORE_INDEX,
    _ordered_sample,
    group_elements,
    kv_recall,
    mqar,
    multiplication_table,
    parity,
    permutation_word_problem,
    word_problem_labels,
)
from rwkvkit.errors import InputError

GENERATORS = {
    "mqar": lambda seed: mqar(64, 256, 64, 8, seed=seed),
    "mqar_passes": lambda seed: mqar(64, 256, 64, 4, num_passes=3, seed=seed),
    "s5": lambda seed: permutation_word_problem(64, 32, "S5", seed=seed),
    "a5": lambda seed: permutation_word_problem(64, 32, "A5", seed=seed),
    "parity": lambda seed: parity(64, 32, seed=seed),
    "kv_recall": lambda seed: kv_recall(64, 20, num_pairs=3, vocab_size=64, seed=seed),
}


# ------------------------------------------------------------------------------------------ common


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_deterministic_and_seed_sensitive(name):
    make = GENERATORS[name]
    a, b, c = make(0), make(0), make(1)
    for t in (a.inputs, a.labels):
        assert t.dtype == torch.long and t.shape == a.inputs.shape and t.shape[0] == 64 == len(a)
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.inputs, c.inputs)
    # the generators never touch the global generators
    state = torch.random.get_rng_state()
    np_state = np.random.get_state()[1].copy()
    make(5)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert np.array_equal(np.random.get_state()[1], np_state)


def test_batch_selects_rows():
    data = mqar(10, 128, 32, 4, seed=3)
    for idx in ([7, 2, 2], np.array([0, 9]), torch.tensor([5])):
        x, y = data.batch(idx)
        rows = torch.as_tensor(np.asarray(idx))
        assert torch.equal(x, data.inputs[rows]) and torch.equal(y, data.labels[rows])
    x, y = data.batch(slice(2, 5))
    assert torch.equal(x, data.inputs[2:5]) and torch.equal(y, data.labels[2:5])


def test_ordered_sample_distributions():
    """Both samplers against exact probabilities: every ordered outcome within 5 standard deviations."""
    rng = np.random.default_rng(0)
    cases = [
        (6, 2, None),  # uniform, Floyd's algorithm (k * k < 4 * population)
        (4, 4, None),  # uniform, exponential race (all orders of 4 items)
        (5, 2, np.array([1.0, 2.0, 3.0, 4.0, 10.0])),  # weighted race, sequential draws
    ]
    for population, k, w in cases:
        rows = 40000
        out = _ordered_sample(rng, rows, population, k, None if w is None else w / w.sum())
        assert out.shape == (rows, k)
        assert all(len(set(r)) == k for r in out[:200].tolist())
        weights = np.ones(population) if w is None else w
        counts = {}
        for r in map(tuple, out.tolist()):
            counts[r] = counts.get(r, 0) + 1
        outcomes = list(itertools.permutations(range(population), k))
        assert set(counts) <= set(outcomes)
        for o in outcomes:
            prob, left = 1.0, weights.sum()
            for i in o:  # draw one after another among the items not drawn yet
                prob *= weights[i] / left
                left -= weights[i]
            sd = math.sqrt(rows * prob * (1 - prob))
            assert abs(counts.get(o, 0) - rows * prob) < 5 * sd + 1, (population, k, o)


# ---------------------------------------------------------------------------------------------- MQAR


def _query_positions(inputs: np.ndarray, keys: np.ndarray, start: int) -> np.ndarray:
    """[N, num_keys]: the position (from ``start``) of each key's first appearance after ``start``."""
    tail = inputs[:, start:]
    return np.stack([(tail == keys[:, [i]]).argmax(axis=1) for i in range(keys.shape[1])], axis=1)


@pytest.mark.parametrize("random_non_queries", [False, True])
def test_mqar_layout(random_non_queries):
    V, L, N = 512, 128, 16
    data = mqar(300, V, L, N, random_non_queries=random_non_queries, seed=7)
    x, y = data.inputs.numpy(), data.labels.numpy()
    assert x.shape == y.shape == (300, L)
    assert data.key_range == (1, 256) and data.value_range == (256, 512) and data.prefix_len == 2 * N
    keys, values = x[:, 0 : 2 * N : 2], x[:, 1 : 2 * N : 2]
    assert keys.min() >= 1 and keys.max() < V // 2 and values.min() >= V // 2 and values.max() < V
    assert all(len(set(r)) == N for r in keys.tolist()) and all(len(set(r)) == N for r in values.tolist())
    assert x.min() >= 0 and x.max() < V
    assert (y[:, : 2 * N] == IGNORE_INDEX).all()
    for row in range(len(x)):
        scored = np.flatnonzero(y[row] != IGNORE_INDEX)
        assert len(scored) == N and (scored >= 2 * N).all() and ((scored - 2 * N) % 2 == 0).all()
        pair = dict(zip(keys[row].tolist(), values[row].tolist()))
        assert sorted(x[row, scored].tolist()) == sorted(pair)  # each key is queried once
        for q in scored:  # the label at a query is the value paired with the key read there
            assert y[row, q] == pair[x[row, q]]
        if not random_non_queries:
            tail = x[row, 2 * N :]
            for k in pair:  # exactly once after the prefix; everything else is 0
                assert (tail == k).sum() == 1
            assert (np.delete(tail, scored - 2 * N) == 0).all()


def test_mqar_filler_does_not_move_the_task():
    a = mqar(50, 256, 64, 8, random_non_queries=False, seed=4)
    b = mqar(50, 256, 64, 8, random_non_queries=True, seed=4)
    assert torch.equal(a.labels, b.labels)
    keep = a.inputs != 0
    assert torch.equal(a.inputs[keep], b.inputs[keep])
    assert (b.inputs[~keep] != 0).float().mean() > 0.9  # filler drawn from [0, V)


def test_mqar_docstring_example():
    data = mqar(1, 20, 16, 2, random_non_queries=False, seed=0)
    assert data.inputs.tolist() == [[6, 10, 7, 19, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 6, 0]]
    expected = [IGNORE_INDEX] * 16
    expected[4], expected[14] = 19, 10
    assert data.labels.tolist() == [expected]


def test_mqar_gaps_follow_the_power_law():
    V, L, N, rows = 512, 128, 8, 20000
    space = (L - 2 * N) // 2  # 56 slots
    x = mqar(rows, V, L, N, random_non_queries=False, seed=1).inputs.numpy()
    offsets = _query_positions(x, x[:, 0 : 2 * N : 2], 2 * N)
    assert (offsets % 2 == 0).all()
    gaps = offsets // 2
    p = 0.01 * np.arange(1, space + 1) ** (0.01 - 1)
    p /= p.sum()
    # the first key's gap is the first draw, distributed as p: total variation 0.5 * sum|hist - p|
    # has expectation ~0.018 at 20000 samples (measured 0.015); 0.04 fails for any visible bias
    hist = np.bincount(gaps[:, 0], minlength=space) / rows
    assert 0.5 * np.abs(hist - p).sum() < 0.04
    # skewed short: the lowest quarter of the slots holds ~62% of all gaps (uniform: 25%)
    assert (gaps < space // 4).mean() > 0.55
    # later draws (without replacement) against numpy's own sequential sampler, slot by slot
    rng = np.random.default_rng(123)
    ref = np.array([rng.choice(space, N, replace=False, p=p) for _ in range(5000)])
    se = np.sqrt(gaps.var(axis=0) / rows + ref.var(axis=0) / len(ref))
    assert (np.abs(gaps.mean(axis=0) - ref.mean(axis=0)) < 5 * se).all()
    assert (np.diff(gaps.mean(axis=0)) > 0).all()  # later draws land further out
    # power_a = 1 is uniform over the slots
    u = mqar(rows, V, L, N, power_a=1.0, random_non_queries=False, seed=1).inputs.numpy()
    ugaps = _query_positions(u, u[:, 0 : 2 * N : 2], 2 * N) // 2
    assert abs((ugaps < space // 4).mean() - 0.25) < 0.01


def test_mqar_num_passes_repeats_the_prefix():
    V, L, N, P = 256, 128, 8, 3
    data = mqar(200, V, L, N, num_passes=P, seed=2)
    x, y = data.inputs.numpy(), data.labels.numpy()
    assert data.prefix_len == 2 * N * P == 48
    for p in range(1, P):
        assert np.array_equal(x[:, : 2 * N], x[:, 2 * N * p : 2 * N * (p + 1)])
    assert (y[:, : 2 * N * P] == IGNORE_INDEX).all()
    assert ((y != IGNORE_INDEX).sum(axis=1) == N).all()
    rows, cols = np.nonzero(y != IGNORE_INDEX)
    assert ((cols - 2 * N * P) % 2 == 0).all() and cols.max() < L
    for r, c in zip(rows.tolist(), cols.tolist()):
        k = int(x[r, c])
        j = x[r, 0 : 2 * N : 2].tolist().index(k)
        assert y[r, c] == x[r, 2 * j + 1]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(vocab_size=128, input_seq_len=128, num_kv_pairs=8), "vocab_size > input_seq_len"),
        (dict(vocab_size=100, input_seq_len=128, num_kv_pairs=8), "vocab_size > input_seq_len"),
        (dict(vocab_size=512, input_seq_len=64, num_kv_pairs=17), "input_seq_len >= .* = 68"),
        (dict(vocab_size=512, input_seq_len=64, num_kv_pairs=8, num_passes=4), "= 80"),
        (dict(vocab_size=512, input_seq_len=63, num_kv_pairs=8), "even input_seq_len"),
        (dict(vocab_size=512, input_seq_len=64, num_kv_pairs=0), "num_kv_pairs must be at least 1"),
        (dict(vocab_size=512, input_seq_len=64, num_kv_pairs=4, power_a=0.0), "power_a"),
        (dict(vocab_size=512, input_seq_len=64, num_kv_pairs=2.5), "must be an integer"),
    ],
)
def test_mqar_constraints(kwargs, match):
    with pytest.raises(InputError, match=match):
        mqar(4, **kwargs)


def test_mqar_limits_are_allowed():
    data = mqar(20, 65, 64, 16, seed=0)  # V = L + 1 and 4N = L: every slot after the prefix is a query
    assert ((data.labels != IGNORE_INDEX).sum(axis=1) == 16).all()
    assert (data.labels[:, 32::2] != IGNORE_INDEX).all()
    assert len(mqar(0, 65, 64, 16)) == 0


# ------------------------------------------------------------------------------------ word problems


def _compose(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    """(a o b)(i) = a(b(i)): apply b, then a."""
    return tuple(a[b[i]] for i in range(len(b)))


def _is_even(p: tuple[int, ...]) -> bool:
    """Even permutation: n minus the number of cycles is even (independent of an inversion count)."""
    seen, cycles = set(), 0
    for start in range(len(p)):
        if start not in seen:
            cycles += 1
            i = start
            while i not in seen:
                seen.add(i)
                i = p[i]
    return (len(p) - cycles) % 2 == 0


def test_group_enumeration():
    s5, a5 = group_elements("S5"), group_elements("A5")
    assert s5 == tuple(sorted(set(itertools.permutations(range(5))))) and len(s5) == 120
    assert a5 == tuple(p for p in s5 if _is_even(p)) and len(a5) == 60
    assert s5[0] == a5[0] == (0, 1, 2, 3, 4)  # the identity is element 0
    elements = set(a5)
    for a in a5:  # closed under composition and inverses: a group
        assert all(_compose(a, b) in elements for b in a5)
        assert tuple(sorted(range(5), key=lambda i: a[i])) in elements
    assert len(group_elements("S3")) == 6 and len(group_elements("A4")) == 12
    for bad in ("S7", "A2", "Z5", "s5", 5):
        with pytest.raises(InputError, match="unknown group"):
            group_elements(bad)


@pytest.mark.parametrize("group", ["S3", "S5", "A5"])
def test_multiplication_table(group):
    elements = group_elements(group)
    table = multiplication_table(group)
    assert table.shape == (len(elements),) * 2
    for a, b in itertools.product(range(len(elements)), repeat=2):
        assert elements[table[a, b]] == _compose(elements[a], elements[b])


def test_composition_order():
    s5 = group_elements("S5")
    swap01 = s5.index((1, 0, 2, 3, 4))  # 0 <-> 1
    cycle = s5.index((1, 2, 0, 3, 4))  # 0 -> 1 -> 2 -> 0
    labels = word_problem_labels(torch.tensor([[swap01, cycle, 0]]), "S5")
    # g1 o g0: i -> cycle[swap01[i]]; 0 -> 2, 1 -> 1, 2 -> 0 (not g0 o g1 = (0, 2, 1, 3, 4))
    assert [s5[i] for i in labels[0].tolist()] == [(1, 0, 2, 3, 4), (2, 1, 0, 3, 4), (2, 1, 0, 3, 4)]


@pytest.mark.parametrize("group", ["S5", "A5", "S3"])
def test_word_problem_labels_match_slow_composition(group):
    data = permutation_word_problem(40, 50, group, seed=11)
    elements = group_elements(group)
    assert data.group == group and data.num_elements == len(elements)
    x, y = data.inputs.tolist(), data.labels.tolist()
    assert min(map(min, x)) >= 0 and max(map(max, x)) < len(elements)
    for xs, ys in zip(x, y):
        state = tuple(range(len(elements[0])))
        for token, label in zip(xs, ys):
            state = _compose(elements[token], state)
            assert elements[label] == state
    # tokens are uniform over the group: every element shows up, none more than ~1.6x its share
    counts = np.bincount(data.inputs.flatten().numpy(), minlength=len(elements))
    assert counts.min() > 0 and counts.max() < 1.6 * data.inputs.numel() / len(elements)


def test_word_problem_errors():
    with pytest.raises(InputError, match="tokens must be in"):
        word_problem_labels(np.array([[0, 60]]), "A5")
    with pytest.raises(InputError, match=r"\[N, L\]"):
        word_problem_labels(np.array([0, 1]), "A5")
    with pytest.raises(InputError, match="seq_len"):
        permutation_word_problem(4, 0)


def test_parity():
    data = parity(50, 40, seed=3)
    assert data.group == "Z2" and data.num_elements == 2
    x, y = data.inputs.tolist(), data.labels.tolist()
    assert set(itertools.chain(*x)) == {0, 1}
    for xs, ys in zip(x, y):
        acc = 0
        for bit, label in zip(xs, ys):
            acc ^= bit
            assert label == acc
    s2 = permutation_word_problem(50, 40, "S2", seed=3)  # parity is the word problem of S2 = Z2
    assert torch.equal(s2.inputs, data.inputs) and torch.equal(s2.labels, data.labels)


# ----------------------------------------------------------------------------------------- kv recall


@pytest.mark.parametrize("num_pairs, distance", [(1, 0), (1, 100), (4, 37)])
def test_kv_recall(num_pairs, distance):
    V = 64
    data = kv_recall(500, distance, num_pairs=num_pairs, vocab_size=V, seed=9)
    x, y = data.inputs.numpy(), data.labels.numpy()
    L = 2 * num_pairs + distance + 1
    assert x.shape == y.shape == (500, L) and data.seq_len == L
    assert data.key_range == (0, 16) and data.value_range == (16, 32) and data.filler_range == (32, 64)
    keys, values = x[:, 0 : 2 * num_pairs : 2], x[:, 1 : 2 * num_pairs : 2]
    filler = x[:, 2 * num_pairs : 2 * num_pairs + distance]
    assert keys.min() >= 0 and keys.max() < 16 and values.min() >= 16 and values.max() < 32
    assert filler.size == 0 or (filler.min() >= 32 and filler.max() < 64)
    assert all(len(set(r)) == num_pairs for r in keys.tolist())
    assert (y[:, :-1] == IGNORE_INDEX).all()
    queried = []
    for row in range(len(x)):
        j = keys[row].tolist().index(x[row, -1])  # the query is one of this row's keys
        assert y[row, -1] == values[row, j]
        # distance respected: the queried value stands distance + 1 or more positions before the query
        assert (L - 1) - (2 * j + 1) >= distance + 1
        queried.append(j)
    assert set(queried) == set(range(num_pairs))


def test_kv_recall_errors():
    with pytest.raises(InputError, match="vocab_size >= 20"):
        kv_recall(4, 10, num_pairs=5, vocab_size=16)
    with pytest.raises(InputError, match="distance must be at least 0"):
        kv_recall(4, -1)
