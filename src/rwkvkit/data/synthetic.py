"""Synthetic sequence tasks: associative recall (MQAR, key-value recall) and state tracking (word problems).

Every generator is a pure function of its arguments: it draws from ``numpy.random.default_rng(seed)``
only (never the global numpy or torch generators), so the same arguments give identical tensors on
every call and machine. Each returns a small frozen dataclass with

- ``inputs``: LongTensor [N, L], the token ids fed to the model;
- ``labels``: LongTensor [N, L], the target for the model's output at each position, and
  :data:`IGNORE_INDEX` (-100, the default ``ignore_index`` of ``torch.nn.functional.cross_entropy``)
  where nothing is scored;
- the task's parameters, ``len(data)`` and ``data.batch(indices)`` -> :class:`SyntheticBatch`.

Alignment (all tasks): ``labels[:, t]`` is the target for the output the model produces after reading
``inputs[:, : t + 1]``, so the loss is ``cross_entropy(logits.flatten(0, 1), labels.flatten())`` with
no further shift. ::

    from rwkvkit.data.synthetic import mqar

    data = mqar(10_000, vocab_size=512, input_seq_len=128, num_kv_pairs=8, seed=0)
    x, y = data.batch(torch.arange(64))          # LongTensor [64, 128] each
    logits = model(x)                            # [64, 128, vocab]
    loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())   # -100 positions are ignored
    scored = y != -100; acc = (logits.argmax(-1) == y)[scored].float().mean()

Tasks:

- :func:`mqar`: multi-query associative recall, the distribution of zoology's ``multiquery_ar``
  (Arora, Eyuboglu et al., "Zoology"; used by BASED).
- :func:`permutation_word_problem`: the word problem of S_n / A_n (S5, A5 by default: not solvable by
  constant-depth circuits, the standard hard state-tracking probe); :func:`parity`: the word problem of Z2.
- :func:`kv_recall`: one or a few key-value pairs, ``distance`` filler tokens, then a query key.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import NamedTuple

import numpy as np
import torch

from rwkvkit.errors import InputError

IGNORE_INDEX = -100

__all__ = [
    "IGNORE_INDEX",
    "KVRecallData",
    "MQARData",
    "SyntheticBatch",
    "WordProblemData",
    "group_elements",
    "kv_recall",
    "mqar",
    "multiplication_table",
    "parity",
    "permutation_word_problem",
    "word_problem_labels",
]


class SyntheticBatch(NamedTuple):
    """Rows of a synthetic data set (unpacks as ``x, y``): LongTensors [B, L]."""

    inputs: torch.Tensor
    labels: torch.Tensor


@dataclass(frozen=True, eq=False)
class _Synthetic:
    inputs: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return self.inputs.shape[0]

    @property
    def seq_len(self) -> int:
        """L, the length of every sequence."""
        return self.inputs.shape[1]

    def batch(self, indices: Sequence[int] | np.ndarray | torch.Tensor | slice) -> SyntheticBatch:
        """The rows ``indices`` (a sequence / array / tensor of ints, or a slice) as (inputs, labels)."""
        if not isinstance(indices, slice):
            indices = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        return SyntheticBatch(self.inputs[indices], self.labels[indices])


def _check_int(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InputError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise InputError(f"{name} must be at least {minimum}, got {value}")


def _ordered_sample(
    rng: np.random.Generator, rows: int, population: int, k: int, weights: np.ndarray | None = None
) -> np.ndarray:
    """int64 [rows, k]: per row, k distinct items of range(population) drawn one after another.

    Each draw picks among the items not drawn yet with probability proportional to ``weights``
    (uniformly when None): the distribution of ``np.random.choice(population, k, replace=False, p=p)``,
    for all rows at once. Weighted (or k not small against the population): the exponential race,
    item i finishes at time E_i / w_i with E_i ~ Exp(1), and the k first to finish, in finishing order,
    have exactly that distribution. Uniform with k * k < 4 * population: Floyd's algorithm (a uniform
    k-subset in O(k^2) per row instead of O(population)), then a uniform shuffle of each row.
    """
    out = np.empty((rows, k), dtype=np.int64)
    if weights is None and k * k < 4 * population:
        for c, j in enumerate(range(population - k, population)):
            t = rng.integers(0, j + 1, size=rows)
            taken = (out[:, :c] == t[:, None]).any(axis=1)
            out[:, c] = np.where(taken, j, t)
        return np.take_along_axis(out, np.argsort(rng.random((rows, k)), axis=1), axis=1)
    chunk = max(1, (1 << 22) // max(population, 1))  # bound the [chunk, population] scratch array
    for start in range(0, rows, chunk):
        n = min(chunk, rows - start)
        if weights is None:
            t = rng.random((n, population))
        else:
            t = rng.standard_exponential((n, population)) / weights
        if k < population:
            top = np.argpartition(t, k - 1, axis=1)[:, :k]
        else:
            top = np.broadcast_to(np.arange(k), (n, k))
        order = np.argsort(np.take_along_axis(t, top, axis=1), axis=1)
        out[start : start + n] = np.take_along_axis(top, order, axis=1)
    return out


# ---------------------------------------------------------------------------------------------- MQAR


@dataclass(frozen=True, eq=False)
class MQARData(_Synthetic):
    """Multi-query associative recall examples (see :func:`mqar` for the layout)."""

    vocab_size: int
    num_kv_pairs: int
    power_a: float
    random_non_queries: bool
    num_passes: int
    seed: int

    @property
    def key_range(self) -> tuple[int, int]:
        """Keys are ids in ``[1, vocab_size // 2)``."""
        return 1, self.vocab_size // 2

    @property
    def value_range(self) -> tuple[int, int]:
        """Values are ids in ``[vocab_size // 2, vocab_size)``."""
        return self.vocab_size // 2, self.vocab_size

    @property
    def input_seq_len(self) -> int:
        """L (the same as ``seq_len``)."""
        return self.seq_len

    @property
    def prefix_len(self) -> int:
        """Length of the key-value prefix, all passes: ``2 * num_kv_pairs * num_passes``."""
        return 2 * self.num_kv_pairs * self.num_passes


def mqar(
    num_examples: int,
    vocab_size: int,
    input_seq_len: int,
    num_kv_pairs: int,
    power_a: float = 0.01,
    random_non_queries: bool = True,
    num_passes: int = 1,
    seed: int = 0,
) -> MQARData:
    """Multi-query associative recall, sampled as zoology's ``multiquery_ar`` (V = vocab_size,
    L = input_seq_len, N = num_kv_pairs, P = num_passes).

    Per example:

    1. N distinct keys, drawn without replacement from ``[1, V // 2)``, and N distinct values, drawn
       without replacement from ``[V // 2, V)`` (both in random order); key i goes with value i.
    2. The prefix ``k1 v1 k2 v2 ... kN vN`` (2N tokens), repeated P times (JRT: the model reads the
       pairs P times before the queries), fills positions ``[0, C)``, C = 2NP.
    3. ``space = (L - C) // 2`` query slots; N distinct gaps ``g_i`` in ``[0, space)`` drawn without
       replacement, one after another, with probability proportional to ``a * (g + 1) ** (a - 1)``
       (``a = power_a``; 0.01 puts most queries close to the prefix, 1.0 is uniform). Key i reappears
       once, at position ``q_i = C + 2 * g_i``.
    4. ``labels[q_i] = v_i``: the output at the query key is scored on predicting its value (the next
       token in next-token terms; the input at ``q_i + 1`` is *not* the value, it is filler). Every other
       label is -100, the prefix included.
    5. Every other position (after the prefix and not a query) is 0, or with ``random_non_queries`` a
       token drawn uniformly from ``[0, V)``, as zoology does: such filler may equal a key or a value.

    Example (``mqar(1, 20, 16, 2, random_non_queries=False)``)::

        position: 0    1    2    3    4    5    6    7    8    9    10   11   12   13   14   15
        inputs:   6    10   7    19   7    0    0    0    0    0    0    0    0    0    6    0
        labels:   -100 -100 -100 -100 19   -100 -100 -100 -100 -100 -100 -100 -100 -100 10   -100

    (keys 6, 7 with values 10, 19; gaps 5, 0 put the queries at positions 4 + 10 = 14 and 4 + 0 = 4.)

    Constraints (:class:`~rwkvkit.errors.InputError` otherwise): V > L, L even, and
    ``2NP + 2N <= L`` (``4N <= L`` for one pass), zoology's checks. The distribution is zoology's; the
    random stream is not (zoology uses the global numpy and torch generators), so the tensors differ
    from zoology's. For P > 1 zoology's own code fails (it sizes the array of the first pass for all
    P); here the 2N-token prefix is simply repeated P times, as JRT describes.
    """
    _check_int("num_examples", num_examples, 0)
    _check_int("vocab_size", vocab_size, 1)
    _check_int("input_seq_len", input_seq_len, 2)
    _check_int("num_kv_pairs", num_kv_pairs, 1)
    _check_int("num_passes", num_passes, 1)
    if not (power_a > 0 and np.isfinite(power_a)):
        raise InputError(f"power_a must be a positive number, got {power_a!r}")
    if vocab_size <= input_seq_len:
        raise InputError(
            f"MQAR needs vocab_size > input_seq_len, got vocab_size={vocab_size}, "
            f"input_seq_len={input_seq_len}; raise vocab_size or shorten the sequences"
        )
    if input_seq_len % 2:
        raise InputError(f"MQAR needs an even input_seq_len (queries sit on even slots), got {input_seq_len}")
    context = 2 * num_kv_pairs * num_passes
    if context + 2 * num_kv_pairs > input_seq_len:
        raise InputError(
            f"MQAR with {num_kv_pairs} key-value pairs and {num_passes} pass(es) needs input_seq_len >= "
            f"2*N*num_passes + 2*N = {context + 2 * num_kv_pairs} (4*N for one pass), got {input_seq_len}; "
            "use fewer pairs or longer sequences"
        )

    rng = np.random.default_rng(seed)
    n, half = num_examples, vocab_size // 2
    keys = _ordered_sample(rng, n, half - 1, num_kv_pairs) + 1
    values = _ordered_sample(rng, n, vocab_size - half, num_kv_pairs) + half
    prefix = np.empty((n, 2 * num_kv_pairs), dtype=np.int64)
    prefix[:, 0::2], prefix[:, 1::2] = keys, values

    space = (input_seq_len - context) // 2
    weights = power_a * np.arange(1, space + 1, dtype=np.float64) ** (power_a - 1)
    gaps = _ordered_sample(rng, n, space, num_kv_pairs, weights / weights.sum())
    query_pos = context + 2 * gaps

    inputs = np.zeros((n, input_seq_len), dtype=np.int64)
    inputs[:, :context] = np.tile(prefix, (1, num_passes))
    np.put_along_axis(inputs, query_pos, keys, axis=1)
    labels = np.full((n, input_seq_len), IGNORE_INDEX, dtype=np.int64)
    np.put_along_axis(labels, query_pos, values, axis=1)
    if random_non_queries:
        filler = inputs == 0  # keys and values are never 0, so exactly the free positions
        inputs[filler] = rng.integers(0, vocab_size, size=int(filler.sum()))
    return MQARData(
        torch.from_numpy(inputs), torch.from_numpy(labels), vocab_size=vocab_size,
        num_kv_pairs=num_kv_pairs, power_a=float(power_a), random_non_queries=bool(random_non_queries),
        num_passes=num_passes, seed=seed,
    )  # fmt: skip


# ----------------------------------------------------------------------------------- word problems

_GROUP_RE = re.compile(r"([SA])([2-6])")


@cache
def group_elements(group: str) -> tuple[tuple[int, ...], ...]:
    """The elements of ``group`` in token order: permutations ``p`` of ``range(n)``, ``p[i]`` the image of i.

    ``"S<n>"`` (n = 2..6): all n! permutations in lexicographic order (``itertools.permutations``);
    ``"A<n>"`` (n = 3..6): the even ones among them, in the same order. The identity is element 0.
    S5 has 120 elements, A5 60.
    """
    m = _GROUP_RE.fullmatch(group) if isinstance(group, str) else None
    if m is None or (m[1] == "A" and m[2] == "2"):
        raise InputError(f"unknown group {group!r}; use 'S2'..'S6' or 'A3'..'A6' (e.g. 'S5', 'A5')")
    perms = itertools.permutations(range(int(m[2])))
    if m[1] == "S":
        return tuple(perms)
    return tuple(p for p in perms if _inversions(p) % 2 == 0)


def _inversions(p: Sequence[int]) -> int:
    return sum(p[i] > p[j] for i in range(len(p)) for j in range(i + 1, len(p)))


@cache
def _table(group: str) -> np.ndarray:
    p = np.asarray(group_elements(group), dtype=np.int64)  # [G, n]
    n = p.shape[1]
    composed = p[:, p]  # [G, G, n]: composed[a, b, i] = p[a][p[b][i]] = (a o b)(i)
    # a permutation's digits in base n are increasing in lexicographic order, so the index is a search
    radix = n ** np.arange(n - 1, -1, -1, dtype=np.int64)
    table = np.searchsorted(p @ radix, composed @ radix)
    table.flags.writeable = False
    return table


def multiplication_table(group: str) -> np.ndarray:
    """int64 [G, G], read-only: ``table[a, b]`` = index of ``a o b`` (apply ``b`` first, then ``a``)."""
    return _table(group)


def word_problem_labels(inputs: torch.Tensor | np.ndarray, group: str) -> torch.Tensor:
    """LongTensor [N, L]: the running products of the element indices ``inputs`` [N, L].

    ``labels[:, t] = index(g_t o ... o g_0)``, the convention of :func:`permutation_word_problem`.
    """
    table = _table(group)
    x = np.asarray(inputs, dtype=np.int64)
    if x.ndim != 2:
        raise InputError(f"inputs must be [N, L], got shape {x.shape}")
    if x.size and (x.min() < 0 or x.max() >= len(table)):
        raise InputError(
            f"{group} word-problem tokens must be in [0, {len(table)}), got {x.min()}..{x.max()}"
        )
    labels = np.empty_like(x)
    state = np.zeros(x.shape[0], dtype=np.int64)  # the identity
    for t in range(x.shape[1]):
        state = table[x[:, t], state]
        labels[:, t] = state
    return torch.from_numpy(labels)


@dataclass(frozen=True, eq=False)
class WordProblemData(_Synthetic):
    """State tracking: tokens and labels are indices into :func:`group_elements` (``"Z2"``: bits)."""

    group: str
    num_elements: int
    seed: int


def permutation_word_problem(
    num_examples: int, seq_len: int, group: str = "S5", seed: int = 0
) -> WordProblemData:
    """The word problem of a permutation group: track the product of a stream of group elements.

    ``inputs[:, t]`` are element indices into :func:`group_elements` ``(group)``, drawn uniformly
    from ``[0, G)``. The label at *every* position is the index of the running product

        ``labels[:, t] = index(g_t o g_{t-1} o ... o g_0)``,  with ``(a o b)(i) = a[b[i]]``,

    i.e. the permutation that results from applying ``g_0`` first, then ``g_1``, ..., then ``g_t``
    (``labels[:, t] = table[inputs[:, t], labels[:, t - 1]]`` with :func:`multiplication_table`).
    Vocabulary and number of classes: G (120 for S5, 60 for A5). ``group`` also takes S2..S6, A3..A6.
    """
    _check_int("num_examples", num_examples, 0)
    _check_int("seq_len", seq_len, 1)
    size = len(group_elements(group))
    rng = np.random.default_rng(seed)
    inputs = rng.integers(0, size, size=(num_examples, seq_len), dtype=np.int64)
    labels = word_problem_labels(inputs, group)
    return WordProblemData(torch.from_numpy(inputs), labels, group=group, num_elements=size, seed=seed)


def parity(num_examples: int, seq_len: int, seed: int = 0) -> WordProblemData:
    """Running parity: ``inputs`` uniform bits, ``labels[:, t] = (inputs[:, 0] + ... + inputs[:, t]) % 2``.

    The word problem of Z2 (group ``"Z2"``, 2 elements); it draws the same bits as
    ``permutation_word_problem(..., group="S2", seed=seed)`` and gives the same labels.
    """
    _check_int("num_examples", num_examples, 0)
    _check_int("seq_len", seq_len, 1)
    rng = np.random.default_rng(seed)
    bits = rng.integers(0, 2, size=(num_examples, seq_len), dtype=np.int64)
    labels = np.cumsum(bits, axis=1) % 2
    return WordProblemData(
        torch.from_numpy(bits), torch.from_numpy(labels), group="Z2", num_elements=2, seed=seed
    )


# ------------------------------------------------------------------------------------------ kv recall


@dataclass(frozen=True, eq=False)
class KVRecallData(_Synthetic):
    """Long-distance key-value recall examples (see :func:`kv_recall` for the layout and token ranges)."""

    distance: int
    num_pairs: int
    vocab_size: int
    seed: int

    @property
    def key_range(self) -> tuple[int, int]:
        """Keys are ids in ``[0, vocab_size // 4)``."""
        return 0, self.vocab_size // 4

    @property
    def value_range(self) -> tuple[int, int]:
        """Values are ids in ``[vocab_size // 4, vocab_size // 2)``."""
        return self.vocab_size // 4, self.vocab_size // 2

    @property
    def filler_range(self) -> tuple[int, int]:
        """Filler tokens are ids in ``[vocab_size // 2, vocab_size)``."""
        return self.vocab_size // 2, self.vocab_size


def kv_recall(
    num_examples: int, distance: int, num_pairs: int = 1, vocab_size: int = 128, seed: int = 0
) -> KVRecallData:
    """Key-value recall across ``distance`` filler tokens. Sequences have length ``L = 2P + distance + 1``
    (P = num_pairs):

    - positions ``[0, 2P)``: ``k1 v1 ... kP vP``, P distinct keys from ``[0, V // 4)`` and P distinct
      values from ``[V // 4, V // 2)`` (V = vocab_size), both drawn without replacement;
    - positions ``[2P, 2P + distance)``: filler, uniform from ``[V // 2, V)`` (never a key or a value);
    - position ``L - 1``: the query, one of the P keys chosen uniformly.

    Only the last position is scored: ``labels[:, -1]`` is the value paired with the query key (the
    output after reading the query predicts its value); every other label is -100. The queried pair's
    value stands at least ``distance + 1`` positions before the query. Needs ``P <= V // 4``.
    """
    _check_int("num_examples", num_examples, 0)
    _check_int("distance", distance, 0)
    _check_int("num_pairs", num_pairs, 1)
    _check_int("vocab_size", vocab_size, 4)
    quarter = vocab_size // 4
    if num_pairs > quarter:
        raise InputError(
            f"kv_recall draws {num_pairs} distinct keys from [0, vocab_size // 4) = [0, {quarter}); "
            f"use vocab_size >= {4 * num_pairs} or fewer pairs"
        )
    rng = np.random.default_rng(seed)
    n, p = num_examples, num_pairs
    keys = _ordered_sample(rng, n, quarter, p)
    values = _ordered_sample(rng, n, quarter, p) + quarter
    which = rng.integers(0, p, size=n)
    inputs = np.empty((n, 2 * p + distance + 1), dtype=np.int64)
    inputs[:, 0 : 2 * p : 2], inputs[:, 1 : 2 * p : 2] = keys, values
    inputs[:, 2 * p : 2 * p + distance] = rng.integers(vocab_size // 2, vocab_size, size=(n, distance))
    rows = np.arange(n)
    inputs[:, -1] = keys[rows, which]
    labels = np.full_like(inputs, IGNORE_INDEX)
    labels[:, -1] = values[rows, which]
    return KVRecallData(
        torch.from_numpy(inputs), torch.from_numpy(labels), distance=distance, num_pairs=num_pairs,
        vocab_size=vocab_size, seed=seed,
    )  # fmt: skip
