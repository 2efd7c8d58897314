"""Sampling and text generation for recurrent RWKV models.

* :func:`generate`: text in, text out (or a streaming :class:`Generation`), with the official
  ``rwkv`` PIPELINE semantics for sampling, penalties and stop tokens, plus stop strings.
* :func:`generate_tokens`: the token-level loop (:class:`TokenStream`) for the CLI and engines.
* :mod:`rwkvkit.generation.sampling`: pure logit functions (:func:`sample`, :func:`sampling_probs`,
  :func:`apply_penalties`, :func:`ban_tokens`, :func:`penalty_weight`).

One deliberate difference from the official code: ``top_p=1.0`` means "no top-p truncation" here,
while the official ``sample_logits`` turns it into greedy decoding (its float32 running sum ends
below 1.0). See :mod:`rwkvkit.generation.sampling`.
"""

from __future__ import annotations

from rwkvkit.generation.engine import BatchEngine, RequestResult, StepEvent
from rwkvkit.generation.generate import Generation, TokenStream, generate, generate_tokens
from rwkvkit.generation.sampling import (
    apply_penalties,
    ban_tokens,
    penalty_weight,
    sample,
    sampling_probs,
)

__all__ = [
    "BatchEngine",
    "Generation",
    "RequestResult",
    "StepEvent",
    "TokenStream",
    "apply_penalties",
    "ban_tokens",
    "generate",
    "generate_tokens",
    "penalty_weight",
    "sample",
    "sampling_probs",
]
