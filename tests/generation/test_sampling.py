"""Tests of rwkvkit.generation.sampling against the official ``rwkv`` package (PIPELINE.sample_logits)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rwkvkit.errors import ConfigError, RWKVKitError
from rwkvkit.generation.sampling import (
    apply_penalties,
    ban_tokens,
    penalty_weight,
    sample,
    sampling_probs,
)

rwkv_utils = pytest.importorskip("rwkv.utils")


def official_probs(monkeypatch: pytest.MonkeyPatch, logits: torch.Tensor, **kwargs) -> np.ndarray:
    """The ``p`` the official CPU sample_logits hands to numpy.random.choice (its final distribution)."""
    pipe = rwkv_utils.PIPELINE.__new__(rwkv_utils.PIPELINE)  # sample_logits uses no tokenizer/model
    captured: dict[str, np.ndarray] = {}

    def fake_choice(a, p=None, **_kw):
        captured["p"] = np.array(p, copy=True)
        return 0

    with monkeypatch.context() as m:
        m.setattr(rwkv_utils.np.random, "choice", fake_choice)
        pipe.sample_logits(logits.clone(), **kwargs)
    return captured["p"]


def assert_same_distribution(ours: torch.Tensor, theirs: np.ndarray, context: str) -> None:
    ours_np = ours.numpy()
    # The kept set must be identical; the values may differ by float32 rounding (pow/sum order).
    assert np.array_equal(ours_np > 0, theirs > 0), f"different kept tokens: {context}"
    np.testing.assert_allclose(ours_np, theirs, rtol=1e-5, atol=1e-12, err_msg=context)


# ---------------------------------------------------------------------------------------------
# (a) the truncated probability vector equals the official one


def test_sampling_probs_match_official_sample_logits(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(1234)
    gen = torch.Generator().manual_seed(1234)
    for case in range(400):
        vocab = int(rng.choice([2, 3, 17, 64, 300, 1000, 4096]))
        scale = float(rng.uniform(0.05, 8.0))
        logits = torch.randn(vocab, generator=gen) * scale
        temperature = float(rng.choice([0.0, 0.2, 0.5, 0.9, 1.0, 1.3, 2.5]))
        top_p = float(rng.uniform(1e-3, 0.999)) if case % 10 else 0.999
        top_k = int(rng.choice([0, 0, 1, 2, 5, 40, vocab, vocab + 3]))
        kwargs = dict(temperature=temperature, top_p=top_p, top_k=top_k)
        theirs = official_probs(monkeypatch, logits, **kwargs)
        ours = sampling_probs(logits, **kwargs)
        assert ours.dtype == torch.float32 and ours.shape == logits.shape
        assert_same_distribution(ours, theirs, f"case {case}: V={vocab} scale={scale} {kwargs}")


@pytest.mark.parametrize("scale", [3.0, 1.5, 0.5])
def test_sampling_probs_match_official_full_vocab(monkeypatch: pytest.MonkeyPatch, scale: float) -> None:
    # The real vocabulary size, where the float32 running sum is the least accurate. The scales put
    # the top-p cutoff inside the first candidate block (1024), the second (8192) and the full sort.
    gen = torch.Generator().manual_seed(7)
    for temperature, top_p, top_k in [(1.0, 0.85, 0), (0.7, 0.3, 0), (1.5, 0.999, 100), (0.0, 0.85, 0)]:
        logits = torch.randn(65536, generator=gen) * scale
        kwargs = dict(temperature=temperature, top_p=top_p, top_k=top_k)
        assert_same_distribution(
            sampling_probs(logits, **kwargs), official_probs(monkeypatch, logits, **kwargs), str(kwargs)
        )


def test_ties_at_the_top_p_cutoff_are_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    # Four equal tokens of 0.25 each: top_p=0.3 is reached at the 2nd one, but all four tie with it.
    logits = torch.tensor([1.0, 1.0, 1.0, 1.0, -30.0])
    ours = sampling_probs(logits, top_p=0.3)
    assert (ours[:4] > 0).all() and ours[4] == 0
    assert_same_distribution(ours, official_probs(monkeypatch, logits, top_p=0.3), "ties")


def test_batched_rows_equal_single_rows() -> None:
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(5, 500, generator=gen) * 2
    for kwargs in [dict(top_p=0.5), dict(top_p=0.9, top_k=10, temperature=0.6), dict(temperature=0.0)]:
        batched = sampling_probs(logits, **kwargs)
        for row in range(5):
            single = sampling_probs(logits[row], **kwargs)
            # Same kept set; values equal up to the order of the vectorized float32 sums.
            assert torch.equal(batched[row] > 0, single > 0)
            torch.testing.assert_close(batched[row], single, rtol=1e-6, atol=0)


def test_temperature_is_applied_after_truncation() -> None:
    logits = torch.tensor([3.0, 2.0, 1.0, 0.0, -1.0])
    base = sampling_probs(logits, top_p=0.8)
    hot = sampling_probs(logits, top_p=0.8, temperature=10.0)
    # Same kept set whatever the temperature; a high temperature only flattens inside it.
    assert torch.equal(base > 0, hot > 0)
    kept = hot[hot > 0]
    assert kept.max() / kept.min() < base[base > 0].max() / base[base > 0].min()


# ---------------------------------------------------------------------------------------------
# (b) top_p = 1.0: no truncation here; the official code becomes greedy


def test_top_p_one_does_not_truncate_unlike_official(monkeypatch: pytest.MonkeyPatch) -> None:
    gen = torch.Generator().manual_seed(0)
    checked = 0
    for _ in range(20):
        logits = torch.randn(65536, generator=gen) * 2
        probs = torch.softmax(logits, dim=-1)
        total = np.cumsum(np.sort(probs.numpy())[::-1])[-1]
        ours = sampling_probs(logits, top_p=1.0)
        torch.testing.assert_close(ours, probs / probs.sum(), rtol=1e-6, atol=0)
        assert bool((ours > 0).all())
        if total < 1.0:
            # The official quirk: argmax over an all-False (cum >= 1.0) is 0, so cutoff = max prob
            # and only the most probable token survives: top_p=1.0 silently means greedy.
            theirs = official_probs(monkeypatch, logits, top_p=1.0)
            assert (theirs > 0).sum() == 1 and int(np.argmax(theirs)) == int(probs.argmax())
            checked += 1
    assert checked > 0, "the float32 running sum always reached 1.0; the quirk was not exercised"


def test_top_p_above_the_float32_total_keeps_everything() -> None:
    logits = torch.randn(65536, generator=torch.Generator().manual_seed(1)) * 2
    total = float(np.cumsum(np.sort(torch.softmax(logits, -1).numpy())[::-1])[-1])
    top_p = min(1.0 - 1e-12, total + (1.0 - total) / 2)  # above the running sum, below 1.0
    assert total < top_p < 1.0
    assert bool((sampling_probs(logits, top_p=top_p) > 0).all())


def test_top_k_ties_keep_the_lowest_ids() -> None:
    probs = sampling_probs(torch.tensor([1.0, 3.0, 2.0, 3.0, 3.0, 0.0]), top_p=1.0, top_k=2)
    assert probs.tolist() == [0.0, 0.5, 0.0, 0.5, 0.0, 0.0]
    probs = sampling_probs(torch.tensor([1.0, 3.0, 2.0, 2.0, 0.0]), top_p=1.0, top_k=2)
    assert (probs > 0).tolist() == [False, True, True, False, False]


def test_top_p_one_with_top_k_keeps_exactly_k() -> None:
    logits = torch.randn(1000, generator=torch.Generator().manual_seed(2))
    probs = sampling_probs(logits, top_p=1.0, top_k=7)
    assert int((probs > 0).sum()) == 7
    assert set(torch.nonzero(probs).flatten().tolist()) == set(torch.topk(logits, 7).indices.tolist())


# ---------------------------------------------------------------------------------------------
# greedy, bans, sampling


def test_temperature_zero_is_greedy() -> None:
    logits = torch.randn(4, 300, generator=torch.Generator().manual_seed(5))
    assert torch.equal(sample(logits, temperature=0.0), logits.argmax(dim=-1))
    out = sample(logits[0], temperature=0.0)
    assert out.ndim == 0 and out.dtype == torch.int64 and int(out) == int(logits[0].argmax())
    # Exact ties at the max are all kept (official: top_p = 0 keeps everything equal to the cutoff).
    tied = sampling_probs(torch.tensor([2.0, 5.0, 5.0, 1.0]), temperature=0.0)
    assert tied.tolist() == [0.0, 0.5, 0.5, 0.0]


def test_sample_is_reproducible_with_a_generator() -> None:
    logits = torch.randn(8, 2000, generator=torch.Generator().manual_seed(9))

    def draw(seed: int) -> list[int]:
        g = torch.Generator().manual_seed(seed)
        return [tok for _ in range(10) for tok in sample(logits, 1.0, 0.95, 0, generator=g).tolist()]

    assert draw(0) == draw(0)
    assert draw(0) != draw(1)


def test_samples_stay_inside_the_kept_set_and_follow_probs() -> None:
    logits = torch.tensor([2.0, 1.5, 1.0, 0.5, 0.0, -1.0])
    probs = sampling_probs(logits, temperature=0.8, top_p=0.7)
    g = torch.Generator().manual_seed(0)
    draws = sample(logits.expand(20000, -1), 0.8, 0.7, 0, generator=g)
    counts = torch.bincount(draws, minlength=6).double() / 20000
    assert bool((counts[probs == 0] == 0).all())
    assert torch.allclose(counts, probs.double(), atol=0.02)


def test_ban_tokens() -> None:
    logits = torch.zeros(2, 10)
    banned = ban_tokens(logits, [0, 3])
    assert torch.isinf(banned[:, [0, 3]]).all() and bool((banned[:, [1, 2, 4]] == 0).all())
    assert bool((logits == 0).all()), "ban_tokens must not modify its input"
    g = torch.Generator().manual_seed(0)
    draws = sample(ban_tokens(torch.zeros(10), range(9)).expand(100, -1), top_p=1.0, generator=g)
    assert set(draws.tolist()) == {9}
    with pytest.raises(ConfigError, match="outside the vocabulary"):
        ban_tokens(logits, [10])
    with pytest.raises(ConfigError, match="outside the vocabulary"):
        ban_tokens(logits, [-1])
    with pytest.raises(ConfigError, match="banned"):
        sample(ban_tokens(torch.zeros(4), range(4)))


def test_tiny_temperature_does_not_underflow() -> None:
    # probs ** 100 underflows to 0 for every token of a flat 65536-way distribution (the official
    # code would divide 0 by 0); ours renormalizes by the max first.
    logits = torch.randn(65536, generator=torch.Generator().manual_seed(4)) * 0.01
    probs = sampling_probs(logits, temperature=0.01, top_p=1.0)
    assert bool(torch.isfinite(probs).all()) and abs(float(probs.sum()) - 1.0) < 1e-5
    assert int(probs.argmax()) == int(logits.argmax())


# ---------------------------------------------------------------------------------------------
# penalties


@pytest.mark.parametrize(
    ("text", "weight"),
    [(" ", 0.0), ("\t", 0.0), ("7", 0.0), ("12", 0.0), (" \t", 0.0), ("", 0.0), ("0123456789", 0.0)]
    + [("21", 1.0), ("a", 1.0), (" a", 1.0), ("\n", 1.0), ("  ", 1.0), ("1 ", 1.0), ("\ufffd", 1.0)],
)
def test_penalty_weight_is_the_official_substring_rule(text: str, weight: float) -> None:
    assert penalty_weight(text) == weight
    assert weight == (0.0 if text in " \t0123456789" else 1.0)


def test_apply_penalties_matches_the_official_inplace_arithmetic() -> None:
    gen = torch.Generator().manual_seed(11)
    rng = np.random.default_rng(11)
    for _ in range(50):
        vocab = 200
        logits = torch.randn(vocab, generator=gen) * 5
        logits[3] = float("-inf")  # a banned token stays banned
        occurrence: dict[int, float] = {}
        for step in range(30):  # realistic decayed weights, including weight-0 keys
            for key in occurrence:
                occurrence[key] *= 0.996
            tok = int(rng.integers(0, 20))
            occurrence[tok] = occurrence.get(tok, 0.0) + float(rng.choice([0.0, 1.0]))
            if step == 0:
                occurrence[3] = 1.0
        presence, frequency = float(rng.uniform(0, 1)), float(rng.uniform(0, 1))

        expected = logits.clone()
        for n in occurrence:  # the official loop, verbatim semantics
            expected[n] -= presence + occurrence[n] * frequency

        got = apply_penalties(logits, occurrence, presence, frequency)
        assert torch.equal(got, expected)

        dense = torch.zeros(vocab, dtype=torch.float64)
        seen = torch.zeros(vocab, dtype=torch.bool)
        for n, w in occurrence.items():
            dense[n] = w
            seen[n] = True
        assert torch.equal(apply_penalties(logits, dense, presence, frequency, seen=seen), expected)
        assert torch.equal(
            apply_penalties(logits.expand(3, -1), occurrence, presence, frequency)[2], expected
        )


def test_weight_zero_tokens_still_pay_the_presence_penalty() -> None:
    logits = torch.zeros(5)
    out = apply_penalties(logits, {1: 0.0, 2: 2.0}, presence=0.5, frequency=0.25)
    assert out.tolist() == [0.0, -0.5, -1.0, 0.0, 0.0]
    # Dense form without `seen`: only occurrence > 0 is penalized (documented).
    dense = torch.tensor([0.0, 0.0, 2.0, 0.0, 0.0], dtype=torch.float64)
    assert apply_penalties(logits, dense, 0.5, 0.25).tolist() == [0.0, 0.0, -1.0, 0.0, 0.0]


# ---------------------------------------------------------------------------------------------
# (h) errors


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(temperature=-0.1), "temperature"),
        (dict(temperature=math.nan), "temperature"),
        (dict(temperature=math.inf), "temperature"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(top_p=math.nan), "top_p"),
        (dict(top_k=-1), "top_k"),
        (dict(top_k=2.5), "top_k"),
    ],
)
def test_bad_sampling_options_raise_config_error(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        sample(torch.zeros(10), **kwargs)
    assert isinstance(info.value, RWKVKitError)
    with pytest.raises(ConfigError, match=match):
        sampling_probs(torch.zeros(10), **kwargs)


def test_bad_logits_shape() -> None:
    with pytest.raises(ValueError, match=r"\[V\] or \[B, V\]"):
        sample(torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match=r"\[V\] or \[B, V\]"):
        sample(torch.zeros(0))


def test_running_sum_is_float32_like_the_official_numpy_code(monkeypatch: pytest.MonkeyPatch) -> None:
    # torch.cumsum on CPU accumulates in float64; numpy (the official CPU path) in float32. Pick a
    # top_p that lies between the two running sums at some index: only the float32 sum gives the
    # official cutoff.
    logits = torch.randn(65536, generator=torch.Generator().manual_seed(21)) * 2
    sorted_probs = torch.softmax(logits, -1).sort(descending=True).values
    ours32 = np.cumsum(sorted_probs.numpy())
    acc64 = torch.cumsum(sorted_probs, -1).numpy()
    differing = np.nonzero((ours32 != acc64) & (ours32 < 0.999))[0]
    assert differing.size > 0
    i = int(differing[len(differing) // 2])
    top_p = float(max(ours32[i], acc64[i]))
    assert_same_distribution(
        sampling_probs(logits, top_p=top_p), official_probs(monkeypatch, logits, top_p=top_p), "float32 sum"
    )
