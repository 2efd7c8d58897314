"""Evaluating language models: LAMBADA, perplexity and bits per byte, and lm-evaluation-harness.

::

    import rwkvkit
    from rwkvkit.eval import lambada, perplexity_files, perplexity_tokens

    model, tok = rwkvkit.load("default"), rwkvkit.load_tokenizer("default")
    r = lambada(model, tok, "lambada_test.jsonl")       # accuracy, perplexity (official RWKV procedure)
    r = perplexity_files(model, tok, ["a.txt"])         # each file one document: ppl, bits per byte
    r = perplexity_tokens(model, "data/stdlib")         # a prepared val split, as the trainer scores it

* :mod:`rwkvkit.eval.lambada`: the OpenAI LAMBADA test, scored as the official RWKV script.
* :mod:`rwkvkit.eval.perplexity`: documents and prepared token splits.
* :mod:`rwkvkit.eval.scoring`: the batched scoring both use (right padding, chunks with the state
  carried, the head on scored positions only, the fast CPU path) and the exact states after
  contexts of different lengths.
* :mod:`rwkvkit.eval.harness`: the ``rwkvkit`` model of lm-evaluation-harness (needs ``lm-eval``:
  ``pip install 'rwkvkit[eval]'``; imported only when used). ``rwkvkit eval lm-eval`` runs it, and
  ``python -m rwkvkit.eval`` is lm-eval's own command line with the model registered.
"""

from __future__ import annotations

from rwkvkit.eval.lambada import LambadaResult, lambada, read_lambada, split_passage
from rwkvkit.eval.perplexity import (
    PerplexityResult,
    perplexity,
    perplexity_files,
    perplexity_tokens,
    read_documents,
)
from rwkvkit.eval.scoring import DOC_START, Score, score, states_after

__all__ = [
    "DOC_START",
    "LambadaResult",
    "PerplexityResult",
    "Score",
    "lambada",
    "perplexity",
    "perplexity_files",
    "perplexity_tokens",
    "read_documents",
    "read_lambada",
    "score",
    "split_passage",
    "states_after",
]
