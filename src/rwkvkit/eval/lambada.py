"""LAMBADA (the OpenAI version): predict the last word of a passage, scored as the official RWKV script.

::

    import rwkvkit
    from rwkvkit.eval import lambada

    model, tok = rwkvkit.load("model.pth"), rwkvkit.load_tokenizer("world")
    r = lambada(model, tok, "lambada_test.jsonl")      # or a list of passages
    print(f"{r.accuracy:.2%} ppl {r.perplexity:.2f}")

The data is a JSONL file with one ``{"text": ...}`` object per line (the OpenAI LAMBADA test set has
5153 passages; it is not shipped with rwkvkit). Per passage, as ``RWKV-v7/rwkv_v7_demo.py`` does:

* ``context, word = text.rsplit(" ", 1)``; the target is ``" " + word``;
* the model reads ``[0] + encode(context) + encode(" " + word)`` (0: the document separator);
* the passage's log-probability is the sum over the target's tokens, each predicted from all
  the tokens before it;
* it counts as correct when every target token is the argmax prediction;
* perplexity is ``exp(-mean over passages of the target log-probability)``.

lm-evaluation-harness's ``lambada_openai`` task splits the passage the same way but encodes
``context + " " + word`` as a whole and takes the target tokens after those of the context, with no
separator before the context (its HF models); on a byte-level BPE the two encodings agree on nearly
every passage, so the numbers are close but not identical.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from rwkvkit.data import DataError
from rwkvkit.eval.scoring import DOC_START, check_tokenizer, score

__all__ = ["LambadaResult", "lambada", "read_lambada", "split_passage"]


@dataclass(frozen=True)
class LambadaResult:
    """The outcome of :func:`lambada`.

    Attributes:
        accuracy: the fraction of passages whose last word is predicted exactly (0..1).
        perplexity: ``exp(-mean target log-probability)`` over the passages.
        documents: passages scored.
        tokens: tokens the model read (separator, context and target, less each passage's last token).
        target_tokens: tokens scored (the targets' tokens).
        seconds: wall time of the scoring (tokenisation included).
        logprobs: per passage, the target's log-probability (natural log).
        correct: per passage, whether the target was the greedy prediction.
    """

    accuracy: float
    perplexity: float
    documents: int
    tokens: int
    target_tokens: int
    seconds: float
    logprobs: list[float] = field(repr=False)
    correct: list[bool] = field(repr=False)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else math.inf

    def summary(self) -> dict[str, Any]:
        """The figures without the per-passage lists (what ``rwkvkit eval lambada --json`` writes)."""
        return {
            "accuracy": self.accuracy,
            "perplexity": self.perplexity,
            "documents": self.documents,
            "tokens": self.tokens,
            "target_tokens": self.target_tokens,
            "seconds": self.seconds,
            "tokens_per_second": self.tokens_per_second,
        }


def read_lambada(path: str | os.PathLike[str]) -> list[str]:
    """The passages of a LAMBADA JSONL file (one ``{"text": ...}`` per line; blank lines skipped).

    Raises DataError for a missing file or a line that is not a JSON object with a string ``text``.
    """
    p = Path(path).expanduser()
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError(f"LAMBADA file {path} not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read LAMBADA file {path}: {e}") from None
    texts = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as e:
            raise DataError(f"{path}:{n}: not a JSON line ({e})") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
            raise DataError(f'{path}:{n}: expected an object with a string "text" field')
        texts.append(obj["text"])
    if not texts:
        raise DataError(f"LAMBADA file {path} has no passages")
    return texts


def split_passage(text: str, where: str = "passage") -> tuple[str, str]:
    """``(context, " " + last word)`` of a passage, as ``text.rsplit(" ", 1)`` (DataError if it has no
    space, or an empty context or last word)."""
    if not text.strip():
        raise DataError(f"{where} is empty")
    if " " not in text:
        raise DataError(f"{where} has no space to split off a last word: {text[:60]!r}")
    context, word = text.rsplit(" ", 1)
    if not context.strip() or not word:
        raise DataError(f"{where} has an empty context or last word: {text[:60]!r}")
    return context, " " + word


def lambada(
    model: Any,
    tokenizer: Any,
    data: str | os.PathLike[str] | Sequence[str],
    *,
    batch_size: int = 8,
    limit: int | None = None,
    progress: bool = True,
) -> LambadaResult:
    """Score a model on LAMBADA passages (see the module docstring for the procedure).

    Args:
        model: an rwkvkit recurrent model (in eval mode: ``rwkvkit.load`` gives one); on the CPU an
            RWKV model runs through its fast inference twin (``RWKVKIT_FAST=0``: the model as given).
        tokenizer: the model's tokenizer.
        data: a JSONL path, or the passages themselves (a list of strings).
        batch_size: passages per forward (right-padded; sorted by length so little is padding). On a
            CPU 8 is about the fastest (the default model, 200 passages: 1.3x batch 1; batch 128 is
            3x slower than 8, its activations fall out of the cache); a GPU wants more.
        limit: score only the first ``limit`` passages.
        progress: show a progress bar (tqdm, on stderr).

    Raises:
        DataError: a missing or malformed file, a passage without a last word to split off.
        TokenizerError: a tokenizer with more ids than the model's vocabulary.
    """
    check_tokenizer(tokenizer, model)
    texts = read_lambada(data) if isinstance(data, (str, os.PathLike)) else list(data)
    if limit is not None:
        texts = texts[: max(0, int(limit))]
    if not texts:
        raise DataError("no LAMBADA passages to score")
    where = f"{data}" if isinstance(data, (str, os.PathLike)) else "data"
    t0 = time.perf_counter()
    sequences, starts = [], []
    for n, text in enumerate(texts, 1):
        context, target = split_passage(text, f"{where}: passage {n}")
        src, dst = [DOC_START, *tokenizer.encode(context)], tokenizer.encode(target)
        sequences.append(src + dst)
        starts.append(len(src))
    bar = tqdm(total=len(texts), desc="LAMBADA", unit="passage", disable=not progress, leave=False)
    try:
        scores = score(model, sequences, starts, batch_size=batch_size, progress=bar.update)
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    logprobs = [s.logprob for s in scores]
    correct = [s.greedy for s in scores]
    mean = sum(logprobs) / len(logprobs)
    return LambadaResult(
        accuracy=sum(correct) / len(correct),
        perplexity=math.exp(-mean) if -mean < 700 else math.inf,
        documents=len(texts),
        tokens=sum(len(s) - 1 for s in sequences),
        target_tokens=sum(s.tokens for s in scores),
        seconds=seconds,
        logprobs=logprobs,
        correct=correct,
    )
