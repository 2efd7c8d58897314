"""Scoring token sequences with a recurrent model: the log-probability of chosen tokens, batched.

Every evaluation in :mod:`rwkvkit.eval` reduces to two operations on lists of token sequences of
different lengths:

* :func:`score`: for each sequence, the sum of ``log p(tokens[t] | tokens[:t])`` over the positions
  ``t >= start``, whether each of those tokens is the argmax (greedy) prediction, and how many there
  are. Sequences of different lengths share a forward with **right** padding: a recurrent model's
  output at a position depends only on the tokens before it, so the padding after a sequence's end
  changes nothing that is read (the final state of such a row is never used; left padding would
  change the state, and so every output). Long sequences are fed in chunks of ``chunk_len`` tokens,
  the state carried from chunk to chunk, so a whole book is one document; a row leaves the batch
  when its last chunk is done.
* :func:`states_after`: the exact state after each sequence (prefix sharing for multiple-choice
  tasks: the state after a context is computed once and each continuation is scored from a copy).
  Rows of different lengths are never padded here: the batch advances together to the shortest
  remaining length, the rows that end there leave with their state, and the others go on.

The head is applied only where a token is scored: rwkvkit's RWKV models return the hidden states
(``return_hidden=True``) and the head runs on the gathered rows, in blocks that bound the
``[rows, V]`` logits memory; other models give full logits, of which the scored rows are taken.

Speed: an :class:`~rwkvkit.models.rwkv.model.RWKV` model in eval mode on the CPU is run through its
inference twin :func:`rwkvkit.inference.auto.fast_view` (the compiled WKV kernel and the shared
weights; the same switch as generation: ``RWKVKIT_FAST=0`` runs the model as given).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from rwkvkit.errors import TokenizerError
from rwkvkit.generation.model import forward_last, model_device, model_vocab_size
from rwkvkit.inference.auto import fast_view
from rwkvkit.models.rwkv.model import RWKV

__all__ = ["DOC_START", "Score", "check_tokenizer", "score", "states_after"]

# The token before every document: id 0 is the end-of-document separator of the World, GPT-NeoX 20B
# and rwkvkit-trained vocabularies, which precedes each document in RWKV training data (and in
# `rwkvkit data prepare` output); the official LAMBADA script starts every passage with it.
DOC_START = 0

# At most this many logits (rows x vocabulary) are materialised at once: 256 MB in fp32.
_LOGITS_BUDGET = 2**26


@dataclass(frozen=True)
class Score:
    """The scored tokens of one sequence: ``logprob`` (natural log, summed), ``greedy`` (every one
    was the argmax prediction; True when there is none) and ``tokens`` (how many)."""

    logprob: float
    greedy: bool
    tokens: int


def check_tokenizer(tokenizer: Any, model: Any) -> None:
    """Raise TokenizerError when ``tokenizer`` has more ids than the model's vocabulary."""
    vocab = model_vocab_size(model)
    size = getattr(tokenizer, "vocab_size", None)
    if vocab is not None and size is not None and size > vocab:
        raise TokenizerError(
            f"the tokenizer has {size} ids but the model's vocabulary has only {vocab}: pass the tokenizer "
            "the model was trained with"
        )


def runner(model: Any) -> Any:
    """The model to run: the fast inference twin where one applies (see the module docstring)."""
    return fast_view(model)


def forward_hidden(model: Any, tokens: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any, Callable]:
    """``(h [B, T, D], new_state, head)``: ``head(h rows) -> logits`` (identity for logits models)."""
    if isinstance(model, RWKV):  # and its OptimizedRWKV subclass
        h, state = model(tokens, state, return_hidden=True)
        return h, state, model.head
    logits, state = model(tokens, state)
    return logits, state, lambda x: x


def score_positions(
    h: torch.Tensor, head: Callable, rows: torch.Tensor, cols: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities (float64) and greedy flags of ``targets`` after ``h[rows, cols]``."""
    x = h[rows, cols]  # [N, D]
    logp, greedy = [], []
    i, step = 0, 256  # the first block tells V; later blocks hold _LOGITS_BUDGET logits
    while i < len(x):
        logits = head(x[i : i + step]).float()  # [rows, V]
        t = targets[i : i + step]
        logp.append(F.log_softmax(logits, dim=-1).gather(1, t[:, None])[:, 0].double())
        greedy.append(logits.argmax(-1) == t)
        i, step = i + step, max(1, _LOGITS_BUDGET // logits.shape[-1])
    return torch.cat(logp), torch.cat(greedy)


def _batch_state(model: Any, states: Sequence[Any] | None, index: Sequence[int]) -> Any:
    """The batch state of the rows ``index`` (None: every row starts fresh)."""
    if states is None or all(states[i] is None for i in index):
        return None
    rows = [states[i] if states[i] is not None else model.initial_state(1) for i in index]
    return type(rows[0]).cat(rows)


@torch.inference_mode()
def score(
    model: Any,
    sequences: Sequence[Sequence[int]],
    starts: Sequence[int] | int = 1,
    *,
    states: Sequence[Any] | None = None,
    batch_size: int = 16,
    chunk_len: int = 1024,
    progress: Callable[[int], None] | None = None,
) -> list[Score]:
    """Score the tokens ``seq[start:]`` of every sequence, each predicted from the tokens before it.

    Args:
        model: ``logits, state = model(tokens [B, T], state)``; an rwkvkit RWKV model runs through its
            fast twin (:func:`runner`) and applies its head to the scored positions only.
        sequences: token ids; a sequence's tokens before ``start`` are context only.
        starts: the first scored position of each sequence (or one for all), at least 1.
        states: per sequence, the batch-1 state before its first token (None: a fresh start); rwkvkit
            models never modify a state they are given, so one state may start several sequences.
        batch_size: the most sequences per forward (sorted by length, so a batch pads little).
        chunk_len: the most tokens per sequence and forward; the state carries across chunks.
        progress: called with the number of sequences finished after each batch.

    Returns:
        One :class:`Score` per sequence, in the input order.
    """
    n = len(sequences)
    starts = [starts] * n if isinstance(starts, int) else list(starts)
    if len(starts) != n or (states is not None and len(states) != n):
        raise ValueError("score: sequences, starts and states must have the same length")
    if any(s < 1 for s in starts):
        raise ValueError("score: a sequence's first scored position must be at least 1")
    run = runner(model)
    device = model_device(run)
    logp = [0.0] * n
    greedy = [True] * n
    count = [max(0, len(seq) - s) for seq, s in zip(sequences, starts)]
    # Longest first: similar lengths share a batch, and the largest batch shows its memory first.
    order = sorted((i for i in range(n) if count[i] > 0), key=lambda i: -len(sequences[i]))
    if progress is not None and len(order) < n:
        progress(n - len(order))  # nothing to score in these
    for b0 in range(0, len(order), batch_size):
        rows = order[b0 : b0 + batch_size]
        width = len(sequences[rows[0]]) - 1  # the last token of a sequence is never fed
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        for r, i in enumerate(rows):
            seq = sequences[i]
            ids[r, : len(seq) - 1] = torch.as_tensor(seq[:-1], dtype=torch.long)
        state = _batch_state(run, states, rows)
        live = list(range(len(rows)))  # the rows still in the batch (indices into `rows`)
        for c0 in range(0, width, chunk_len):
            c1 = min(width, c0 + chunk_len)
            h, state, head = forward_hidden(run, ids[live, c0:c1].to(device), state)
            # the scored positions of this chunk: t in [start - 1, len - 2], predicting token t + 1
            where_r, where_t, target = [], [], []
            for j, r in enumerate(live):
                seq, start = sequences[rows[r]], starts[rows[r]]
                a, b = max(start - 1, c0), min(len(seq) - 1, c1)
                if a < b:
                    where_r += [j] * (b - a)
                    where_t += range(a - c0, b - c0)
                    target += seq[a + 1 : b + 1]
            if target:
                row = torch.tensor(where_r)
                lp, gr = score_positions(
                    h,
                    head,
                    row.to(device),
                    torch.tensor(where_t, device=device),
                    torch.tensor(target, dtype=torch.long, device=device),
                )
                lp_row = torch.zeros(len(live), dtype=torch.float64).index_add_(0, row, lp.cpu())
                miss_row = torch.zeros(len(live), dtype=torch.long).index_add_(0, row, (~gr).long().cpu())
                for j, r in enumerate(live):
                    logp[rows[r]] += float(lp_row[j])
                    greedy[rows[r]] &= int(miss_row[j]) == 0
            keep = [j for j, r in enumerate(live) if len(sequences[rows[r]]) - 1 > c1]
            if not keep:
                break
            if len(keep) < len(live):  # rows that are done leave the batch
                state = state.select(keep)
                live = [live[j] for j in keep]
        if progress is not None:
            progress(len(rows))
    return [Score(logp[i], greedy[i], count[i]) for i in range(n)]


@torch.inference_mode()
def states_after(
    model: Any, sequences: Sequence[Sequence[int]], *, batch_size: int = 16, chunk_len: int = 1024
) -> list[Any]:
    """The batch-1 state after each sequence (None for an empty one: the fresh state), exactly.

    Sequences are batched by length; within a batch the rows advance together to the shortest
    remaining length, where the rows that end leave with their state (no padding is ever fed).
    """
    run = runner(model)
    device = model_device(run)
    out: list[Any] = [None] * len(sequences)
    order = sorted((i for i in range(len(sequences)) if sequences[i]), key=lambda i: len(sequences[i]))
    for b0 in range(0, len(order), batch_size):
        rows = order[b0 : b0 + batch_size]  # ascending length
        state, pos = None, 0
        while rows:
            end = len(sequences[rows[0]])
            ids = torch.tensor([list(sequences[i][pos:end]) for i in rows], dtype=torch.long)
            for c0 in range(0, end - pos, chunk_len):
                _, state = forward_last(run, ids[:, c0 : c0 + chunk_len].to(device), state)
            done = sum(1 for i in rows if len(sequences[i]) == end)
            for j in range(done):
                out[rows[j]] = state.select([j])
            rows, pos = rows[done:], end
            if rows:
                state = state.select(list(range(done, done + len(rows))))
    return out
