"""Perplexity and bits per byte of documents, or of a prepared token split.

::

    from rwkvkit.eval import perplexity, perplexity_files, perplexity_tokens

    r = perplexity(model, tok, ["first document ...", "second ..."])
    r = perplexity_files(model, tok, ["a.txt", "b.py"])       # each file one document (UTF-8)
    r = perplexity_tokens(model, "data/stdlib", split="val")  # like the trainer's validation figure
    print(r.perplexity, r.bits_per_byte)

Documents (texts or files): each is ``[0] + encode(text)`` (0: the document separator, which stands
before every document in RWKV training data), and every token of ``encode(text)`` is predicted from
all those before it: the model runs through the whole document in chunks with its state carried,
so this is the document's full likelihood, however long. Bits per byte divide the nats by
``ln 2`` and by the document's UTF-8 length, so models with different tokenizers compare.

A prepared split (``rwkvkit data prepare``) is scored as ``rwkvkit train`` scores its validation
split (:func:`rwkvkit.training.loop.evaluate`): non-overlapping windows of ``ctx_len`` tokens, each
from a fresh state, the separator 0 before the first; the bytes are those of the targets' tokens.
With the training run's ``ctx_len`` the figure is its ``val_bpb`` (the trainer computes in its
training precision: bf16 autocast differs in the last digits).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from rwkvkit.data import DataError, TokenFile, iter_eval_windows, open_tokens
from rwkvkit.errors import TokenizerError
from rwkvkit.eval.scoring import DOC_START, check_tokenizer, forward_hidden, runner, score, score_positions
from rwkvkit.generation.model import model_device, model_vocab_size

__all__ = ["PerplexityResult", "perplexity", "perplexity_files", "perplexity_tokens", "read_documents"]


@dataclass(frozen=True)
class PerplexityResult:
    """Likelihood figures of a set of documents (or of a token split).

    Attributes:
        nats: the summed negative log-likelihood of every scored token (natural log).
        tokens: tokens scored.
        bytes: UTF-8 bytes of the scored text.
        documents: documents scored (windows, for a token split).
        seconds: wall time (tokenisation included).
        doc_nats, doc_tokens, doc_bytes: the same per document (empty for a token split).
    """

    nats: float
    tokens: int
    bytes: int
    documents: int
    seconds: float
    doc_nats: list[float] = field(default_factory=list, repr=False)
    doc_tokens: list[int] = field(default_factory=list, repr=False)
    doc_bytes: list[int] = field(default_factory=list, repr=False)

    @property
    def loss(self) -> float:
        """Mean nats per token."""
        return self.nats / self.tokens if self.tokens else math.nan

    @property
    def perplexity(self) -> float:
        """``exp(loss)``: perplexity per token (depends on the tokenizer)."""
        loss = self.loss
        return math.nan if math.isnan(loss) else (math.exp(loss) if loss < 700 else math.inf)

    @property
    def bits_per_byte(self) -> float:
        """``nats / ln 2 / bytes``: independent of the tokenizer."""
        return self.nats / math.log(2) / self.bytes if self.bytes else math.nan

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else math.inf

    def summary(self) -> dict[str, Any]:
        """The figures without the per-document lists (what ``rwkvkit eval ppl --json`` writes)."""
        return {
            "loss": self.loss,
            "perplexity": self.perplexity,
            "bits_per_byte": self.bits_per_byte,
            "nats": self.nats,
            "tokens": self.tokens,
            "bytes": self.bytes,
            "documents": self.documents,
            "seconds": self.seconds,
            "tokens_per_second": self.tokens_per_second,
        }


def read_documents(paths: Sequence[str | os.PathLike[str]]) -> list[str]:
    """The text of each file (UTF-8); DataError for a missing, unreadable or non-UTF-8 file."""
    texts = []
    for path in paths:
        p = Path(path).expanduser()
        try:
            texts.append(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DataError(f"{path} not found") from None
        except IsADirectoryError:
            raise DataError(f"{path} is a directory: pass files, or a prepared folder with --data") from None
        except UnicodeDecodeError as e:
            raise DataError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
        except OSError as e:
            raise DataError(f"cannot read {path}: {e}") from None
    return texts


def perplexity(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    batch_size: int = 8,
    chunk_len: int = 1024,
    progress: bool = True,
) -> PerplexityResult:
    """The likelihood of each text as one document (see the module docstring).

    Args:
        model: an rwkvkit recurrent model in eval mode (an RWKV model on the CPU runs through its fast
            inference twin; ``RWKVKIT_FAST=0``: as given).
        tokenizer: the model's tokenizer.
        texts: the documents.
        batch_size: documents per forward (right-padded; a document leaves the batch when it ends).
        chunk_len: tokens per document and forward; the state carries from chunk to chunk.
        progress: show a progress bar (tqdm, on stderr).
    """
    if isinstance(texts, str):
        raise TypeError("perplexity() takes a list of texts; for one text pass [text]")
    check_tokenizer(tokenizer, model)
    t0 = time.perf_counter()
    sequences = [[DOC_START, *tokenizer.encode(t)] for t in texts]
    bar = tqdm(total=len(texts), desc="perplexity", unit="doc", disable=not progress, leave=False)
    try:
        scores = score(model, sequences, 1, batch_size=batch_size, chunk_len=chunk_len, progress=bar.update)
    finally:
        bar.close()
    doc_bytes = [len(t.encode("utf-8")) for t in texts]
    return PerplexityResult(
        nats=-sum(s.logprob for s in scores),
        tokens=sum(s.tokens for s in scores),
        bytes=sum(doc_bytes),
        documents=len(texts),
        seconds=time.perf_counter() - t0,
        doc_nats=[-s.logprob for s in scores],
        doc_tokens=[s.tokens for s in scores],
        doc_bytes=doc_bytes,
    )


def perplexity_files(
    model: Any, tokenizer: Any, paths: Sequence[str | os.PathLike[str]], **options: Any
) -> PerplexityResult:
    """:func:`perplexity` of files, each one document (UTF-8 text); ``options`` as there."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if not paths:
        raise DataError("no files to score")
    return perplexity(model, tokenizer, read_documents(paths), **options)


@torch.inference_mode()
def perplexity_tokens(
    model: Any,
    data: str | os.PathLike[str] | TokenFile,
    *,
    split: str = "val",
    ctx_len: int = 512,
    batch_size: int = 8,
    limit: int | None = None,
    progress: bool = True,
) -> PerplexityResult:
    """The likelihood of a prepared token split, scored as the trainer's validation (module docstring).

    Args:
        model: an rwkvkit recurrent model in eval mode.
        data: a folder written by ``rwkvkit data prepare`` (or a binidx dataset), or an open TokenFile.
        split: ``"val"`` (default) or ``"train"``.
        ctx_len: the window length; each window starts from a fresh state.
        batch_size: windows per forward.
        limit: score only the first ``limit`` tokens of the split.
        progress: show a progress bar (tqdm, on stderr).
    """
    tf = data if isinstance(data, TokenFile) else open_tokens(data, split=split)
    vocab = model_vocab_size(model)
    if vocab is not None and tf.vocab_size > vocab:
        raise TokenizerError(
            f"{tf.path} was prepared with a tokenizer of {tf.vocab_size} ids but the model's vocabulary "
            f"has only {vocab}: score data prepared with the model's tokenizer"
        )
    if len(tf) == 0:
        raise DataError(f"{tf.path}: the {tf.split} split has no tokens")
    table = torch.from_numpy(np.ascontiguousarray(tf.token_bytes_table()))
    run = runner(model)
    device = model_device(run)
    t0 = time.perf_counter()
    nats, tokens, nbytes, windows = 0.0, 0, 0, 0
    total = len(tf) if limit is None else min(len(tf), max(0, int(limit)))
    bar = tqdm(total=total, desc="perplexity", unit="tok", unit_scale=True, disable=not progress, leave=False)
    try:
        for x, y, mask in iter_eval_windows(tf, ctx_len, batch_size, limit=limit):
            h, _, head = forward_hidden(run, x.to(device), None)
            rows, cols = mask.nonzero(as_tuple=True)
            target = y[rows, cols]
            lp, _ = score_positions(h, head, rows.to(device), cols.to(device), target.to(device))
            nats -= float(lp.sum())
            tokens += len(target)
            nbytes += int(table[target].sum())
            windows += len(x)
            bar.update(len(target))
    finally:
        bar.close()
    return PerplexityResult(nats, tokens, nbytes, windows, time.perf_counter() - t0)
