"""Data: corpora -> token files (rwkvkit ``bin`` or RWKV-LM ``binidx``), and the windows models train on.

* :func:`prepare` tokenizes files, directories, JSONL and the Python stdlib corpus into ``train.bin`` /
  ``val.bin`` + ``meta.json`` (``rwkvkit data prepare`` on the command line).
* :func:`open_tokens` maps a split back (:class:`TokenFile`: ``len``, slices, ``tokenizer``,
  ``token_bytes_table()`` for exact bits per byte, ``documents()``).
* :class:`WindowSampler` hands out training windows in a seeded order per epoch and resumes exactly;
  :func:`iter_eval_windows` covers a validation split once.
* Fine-tuning data: JSONL prompt/answer pairs or messages lists become RWKV World chat text
  (:mod:`rwkvkit.data.chat`, shared with ``rwkvkit serve``) and a loss mask beside the tokens
  (``TokenFile.loss_mask``, ``WindowSampler.next_batch_with_mask``, ``iter_eval_windows(loss_mask=)``).
* :func:`read_binidx` / :func:`write_binidx`: the ``.bin``/``.idx`` format of RWKV-LM's trainer.
* :func:`stdlib_sources` / :func:`stdlib_split`: the standard library corpus of the default model.
* :mod:`rwkvkit.data.synthetic`: deterministic recall and state-tracking tasks (:func:`mqar`,
  :func:`permutation_word_problem` over S5 / A5, :func:`parity`, :func:`kv_recall`).
"""

from __future__ import annotations

from rwkvkit.data.binidx import BinIdx, BinIdxWriter, DataError, read_binidx, write_binidx
from rwkvkit.data.corpus import (
    DEFAULT_EXTENSIONS,
    list_sources,
    split_score,
    stdlib_root,
    stdlib_sources,
    stdlib_split,
)
from rwkvkit.data.prepare import prepare, train_bpe
from rwkvkit.data.synthetic import kv_recall, mqar, parity, permutation_word_problem
from rwkvkit.data.tokens import (
    EvalBatch,
    TokenFile,
    WindowSampler,
    iter_eval_windows,
    open_tokens,
    read_meta,
    token_bytes_table,
)

__all__ = [
    "DEFAULT_EXTENSIONS",
    "BinIdx",
    "BinIdxWriter",
    "DataError",
    "EvalBatch",
    "TokenFile",
    "WindowSampler",
    "iter_eval_windows",
    "list_sources",
    "open_tokens",
    "prepare",
    "read_binidx",
    "read_meta",
    "split_score",
    "stdlib_root",
    "stdlib_sources",
    "stdlib_split",
    "token_bytes_table",
    "train_bpe",
    "write_binidx",
    "kv_recall",
    "mqar",
    "parity",
    "permutation_word_problem",
]
