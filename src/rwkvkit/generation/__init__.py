"""Sampling and text generation for recurrent models.

* :func:`generate`: text in, text out (or a streaming :class:`Generation`), with the official
  ``rwkv`` PIPELINE semantics for sampling, penalties and stop tokens, plus stop strings.
* :func:`generate_tokens`: the token-level loop (:class:`TokenStream`).
* :class:`BatchEngine`: many requests decoded together (continuous batching); each request gives
  what :func:`generate` gives alone.
* :class:`SamplingParams` (:mod:`~rwkvkit.generation.params`): the sampling options, declared and
  validated once; every entry point takes them as keyword arguments or as ``params=``.
* :class:`TokenSampler` (one sequence's bans, penalties, generator, stop tokens) and
  :class:`TextTracker` (:mod:`~rwkvkit.generation.text`: streaming detokenisation with stop strings):
  the one implementation of a decoding step, shared by :func:`generate` and :class:`BatchEngine`.
* :mod:`rwkvkit.generation.cuda_graph`: on CUDA, :func:`generate` and :class:`BatchEngine` replay
  each one-token decoding step from a captured CUDA graph (:class:`CudaGraphStep`; off with
  ``cuda_graphs=False`` or ``RWKVKIT_CUDA_GRAPHS=0``).
* :mod:`rwkvkit.generation.sampling`: pure logit functions (:func:`sample`, :func:`sampling_probs`,
  :func:`apply_penalties`, :func:`ban_tokens`, :func:`penalty_weight`).

One deliberate difference from the official code: ``top_p=1.0`` means "no top-p truncation" here,
while the official ``sample_logits`` turns it into greedy decoding (its float32 running sum ends
below 1.0). See :mod:`rwkvkit.generation.sampling`.

The model contract (:mod:`rwkvkit.generation.model`). Generation calls a model only as
``logits, state = model(tokens, state=state)``: ``tokens`` a LongTensor ``[B, T]`` whose ids were
checked against the vocabulary before the call, ``state=None`` for fresh sequences, ``logits`` float
``[B, T, V]`` (``[B, 1, V]`` when the model has ``accepts_full_output`` and is asked for the last
position only); the given state is left unchanged and the returned one is passed back as it is.

* :func:`generate` / :class:`TokenStream` (one sequence, ``B = 1``) treat the state as opaque: any
  recurrent model that honours the call above works. They read ``model.config.vocab_size`` (to check
  prompt and option ids before running the model; without it the ids are checked against the first
  logits, and an out-of-range prompt id reaches the model) and ``model.device`` (else the first
  parameter's device). ``state.logits`` is not needed: pass ``logits=`` to continue with an empty
  prompt.
* :class:`BatchEngine` also needs the state to be batchable: ``state.select(indices)`` keeps rows and
  ``type(state).cat(states)`` stacks them (:class:`~rwkvkit.generation.model.BatchableState`), every
  row must be computed independently of the others, and ``model.initial_state(batch_size)`` must
  exist to prefill a fresh prompt together with one continuing a given state. ``state.logits`` (if
  present) is the default ``logits`` of a request with an empty prompt.

Which models satisfy it: ``RWKV`` (v4-v7), its ``optimize``-d copy, ``ARWKV`` and
``MultiPerspectiveRWKV`` return a :class:`rwkvkit.State` and satisfy all of it. The BASED LM
(``models/based``) satisfies the single-sequence contract (its state is a list of per-layer mixer
states), not the batched one: its list has no ``select``/``cat``, the model has no
``initial_state``, and its sliding-window cache keeps one position counter for the whole batch, so
rows at different positions cannot share it. Rimer (``timeseries``) is a forecaster of real-valued
series, not a token model: it has no vocabulary and nothing to sample, so it is outside generation.
"""

from __future__ import annotations

from rwkvkit.generation.cuda_graph import CudaGraphStep
from rwkvkit.generation.engine import BatchEngine, RequestResult, StepEvent
from rwkvkit.generation.generate import Generation, TokenSampler, TokenStream, generate, generate_tokens
from rwkvkit.generation.params import SamplingParams
from rwkvkit.generation.sampling import (
    apply_penalties,
    ban_tokens,
    penalty_weight,
    sample,
    sampling_probs,
)
from rwkvkit.generation.text import TextTracker

__all__ = [
    "BatchEngine",
    "CudaGraphStep",
    "Generation",
    "RequestResult",
    "SamplingParams",
    "StepEvent",
    "TextTracker",
    "TokenSampler",
    "TokenStream",
    "apply_penalties",
    "ban_tokens",
    "generate",
    "generate_tokens",
    "penalty_weight",
    "sample",
    "sampling_probs",
]
