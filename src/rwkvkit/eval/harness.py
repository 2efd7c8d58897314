"""The ``rwkvkit`` model of lm-evaluation-harness (``lm-eval`` >= 0.4; ``pip install 'rwkvkit[eval]'``).

Importing this module registers :class:`RWKVKitLM` under the name ``rwkvkit``. lm-eval finds models
only in its own table and in modules that were imported (it reads no plugin entry points), so run
it through one of::

    rwkvkit eval lm-eval --tasks lambada_openai --model default          # a short table, --output JSON
    python -m rwkvkit.eval run --model rwkvkit --model_args pretrained=model.pth \\
        --batch_size 16 --tasks hellaswag --device cpu                   # lm-eval's own CLI

or from Python::

    import lm_eval
    from rwkvkit.eval.harness import RWKVKitLM
    lm = RWKVKitLM(pretrained="model.pth")          # or pretrained=<a loaded model>, tokenizer=<tok>
    results = lm_eval.simple_evaluate(model=lm, tasks=["lambada_openai"])

Model arguments (``--model_args key=value,...``): ``pretrained`` (``default`` or a checkpoint path),
``tokenizer`` (as ``rwkvkit generate --tokenizer``; default: the one beside the model, else from
its vocabulary), ``batch_size`` (sequences per forward, default 16; on lm-eval's command line pass
``--batch_size N`` instead, which it always sends and which defaults to 1), ``dtype`` (fp32, bf16, fp16;
default the checkpoint's), ``fast`` (auto, off, fp32, bf16, int8, q4: as ``rwkvkit generate
--fast``), ``device`` (cpu, cuda; a CUDA device without CUDA falls back to the CPU, as lm-eval's HF
model does), ``max_gen_toks`` (default 256), ``prefix`` (below), ``chunk_len`` (tokens per
forward and sequence, default 1024).

How requests are computed:

* **The document separator.** RWKV models are trained on documents that each follow the separator
  token 0, and the official RWKV evaluations (LAMBADA: ``[0] + encode(context)``) put it before the
  context. ``prefix=always`` (the default) does the same for every request; ``prefix=empty`` puts it
  only before an empty context, as lm-eval's HF models do with their EOT token (use it to compare
  with numbers measured that way). ``loglikelihood_rolling`` always starts from it.
* **Tokenisation** follows lm-eval's own models: whitespace at the end of a context moves to the
  continuation, and the continuation's tokens are those of ``encode(context + continuation)`` after
  the context's ``len(encode(context))`` tokens.
* ``loglikelihood``: requests with the same context share it. The exact state after each context
  (less its last token) is computed once (:func:`rwkvkit.eval.scoring.states_after`); then every
  continuation is scored from a copy of it, feeding the context's last token and the continuation,
  with right padding in batches. Multiple-choice tasks (4 continuations of one context) read each
  context once instead of four times. ``is_greedy`` is True when every continuation token is the
  argmax prediction.
* ``loglikelihood_rolling``: ``[0] + encode(text)``, every token scored, the whole text in chunks with
  the state carried (a recurrent model needs no sliding windows).
* ``generate_until``: :class:`rwkvkit.generation.BatchEngine` (continuous batching; each request
  gives what :func:`rwkvkit.generate` gives alone), prompt ``[0] + encode(context)`` under
  ``prefix=always``, stopping at the ``until`` strings (cut from the text) or the tokenizer's end
  token, at most ``max_gen_toks`` tokens (a task's ``max_gen_toks`` overrides). Greedy unless the task
  sets ``do_sample: true`` (then its ``temperature``, ``top_p``, ``top_k``).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from unittest import mock

import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from tqdm import tqdm

from rwkvkit.errors import ConfigError
from rwkvkit.eval.scoring import DOC_START, check_tokenizer, score, states_after
from rwkvkit.formats import load
from rwkvkit.generation import BatchEngine
from rwkvkit.inference.auto import ENV_FAST
from rwkvkit.tokenizer import pick_tokenizer

__all__ = ["RWKVKitLM", "main"]

log = logging.getLogger("rwkvkit.eval")

FAST_MODES = ("auto", "off", "fp32", "bf16", "int8", "q4")
PREFIX_MODES = ("always", "empty")
GEN_KWARGS = ("until", "max_gen_toks", "do_sample", "temperature", "top_p", "top_k")


@register_model("rwkvkit")
class RWKVKitLM(LM):
    """An rwkvkit recurrent model as an lm-eval ``LM`` (see the module docstring)."""

    def __init__(
        self,
        pretrained: Any = "default",
        tokenizer: Any = None,
        batch_size: int | str | None = 16,
        max_batch_size: int | None = None,
        device: str | None = None,
        dtype: str | None = None,
        fast: str = "auto",
        max_gen_toks: int = 256,
        prefix: str = "always",
        chunk_len: int = 1024,
    ) -> None:
        super().__init__()
        if fast not in FAST_MODES:
            raise ConfigError(f"fast must be one of {', '.join(FAST_MODES)}, got {fast!r}")
        if prefix not in PREFIX_MODES:
            raise ConfigError(f"prefix must be one of {', '.join(PREFIX_MODES)}, got {prefix!r}")
        self.batch_size = _batch_size(batch_size, max_batch_size)
        self.max_gen_toks = _positive("max_gen_toks", max_gen_toks)
        self.chunk_len = _positive("chunk_len", chunk_len)
        self.prefix, self.fast = prefix, fast
        if isinstance(pretrained, (str, os.PathLike)):
            self.name = str(pretrained)
            device = _device(device)
            if fast in ("auto", "off"):
                model = load(pretrained, dtype=dtype, device=device)
            elif dtype is not None:
                raise ConfigError(
                    f"dtype={dtype} and fast={fast} both choose the weights' precision; pass one"
                )
            else:
                model = load(pretrained, weights=fast, device=device)
        else:  # an already loaded model; it is used as it is (call model.eval() yourself)
            self.name, model = type(pretrained).__name__, pretrained
        vocab = model.config.vocab_size
        if tokenizer is None or isinstance(tokenizer, (str, os.PathLike)):
            path = self.name if isinstance(pretrained, (str, os.PathLike)) else None
            tokenizer = pick_tokenizer(None if tokenizer is None else str(tokenizer), vocab, path)
        check_tokenizer(tokenizer, model)
        self.model, self.tokenizer = model, tokenizer
        self._device = getattr(model, "device", torch.device("cpu"))

    # ---- lm-eval's interface ---------------------------------------------------------------------

    def loglikelihood(self, requests: list, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """``(log p(continuation | context), is_greedy)`` per request (see the module docstring)."""
        pairs = [self._encode_pair(*req.args) for req in requests]
        out: list[tuple[float, bool] | None] = [None] * len(requests)
        by_context: dict[tuple[int, ...], list[int]] = {}
        for i, (ctx, cont) in enumerate(pairs):
            if cont:
                by_context.setdefault(tuple(ctx), []).append(i)
            else:  # nothing to score (an empty continuation)
                out[i] = (0.0, True)
        contexts = sorted(by_context, key=len)  # similar lengths together: few steps in states_after
        bar = tqdm(total=len(requests), desc="loglikelihood", disable=disable_tqdm, leave=False)
        bar.update(len(requests) - sum(len(v) for v in by_context.values()))
        with self._fast_mode():
            for b0 in range(0, len(contexts), self.batch_size):
                block = contexts[b0 : b0 + self.batch_size]
                states = states_after(
                    self.model, [c[:-1] for c in block], batch_size=self.batch_size, chunk_len=self.chunk_len
                )
                index, sequences, starts_from = [], [], []
                for ctx, state in zip(block, states):
                    for i in by_context[ctx]:
                        index.append(i)
                        sequences.append([ctx[-1], *pairs[i][1]])
                        starts_from.append(state)
                scores = score(
                    self.model,
                    sequences,
                    1,
                    states=starts_from,
                    batch_size=self.batch_size,
                    chunk_len=self.chunk_len,
                )
                for i, s in zip(index, scores):
                    out[i] = (s.logprob, s.greedy)
                    self.cache_hook.add_partial("loglikelihood", requests[i].args, out[i])
                bar.update(len(index))
        bar.close()
        return out  # type: ignore[return-value]

    def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list[float]:
        """``log p(text)`` per request: ``[0] + encode(text)``, every token of the text scored."""
        sequences = [[DOC_START, *self.tokenizer.encode(req.args[0])] for req in requests]
        bar = tqdm(total=len(requests), desc="loglikelihood_rolling", disable=disable_tqdm, leave=False)
        with self._fast_mode():
            scores = score(
                self.model,
                sequences,
                1,
                batch_size=self.batch_size,
                chunk_len=self.chunk_len,
                progress=bar.update,
            )
        bar.close()
        out = [s.logprob for s in scores]
        for req, lp in zip(requests, out):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, lp)
        return out

    def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
        """The text generated after each context, cut before the first ``until`` string."""
        texts: list[str] = []
        with self._fast_mode():
            engine = BatchEngine(self.model, self.tokenizer, max_batch=self.batch_size)
            ids = [
                engine.add(self._context_ids(context), return_state=False, **self._gen_options(kwargs))
                for context, kwargs in (req.args for req in requests)
            ]
            bar = tqdm(total=len(requests), desc="generate_until", disable=disable_tqdm, leave=False)
            while engine.has_work:
                bar.update(sum(1 for e in engine.step() if e.finished))
            bar.close()
            results = engine.run()  # the finished results, by id
        for req, i in zip(requests, ids):
            texts.append(results[i].text)
            self.cache_hook.add_partial("generate_until", req.args, texts[-1])
        return texts

    def get_model_info(self) -> dict[str, Any]:
        """Shown in lm-eval's results under ``config``."""
        c = self.model.config
        return {
            "model": self.name,
            "version": getattr(c, "version", None),
            "n_layer": getattr(c, "n_layer", None),
            "n_embd": getattr(c, "n_embd", None),
            "vocab_size": c.vocab_size,
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "dtype": str(getattr(self.model, "dtype", "")).removeprefix("torch."),
            "fast": self.fast,
            "prefix": self.prefix,
        }

    # ---- helpers ---------------------------------------------------------------------------------

    @contextmanager
    def _fast_mode(self) -> Iterator[None]:
        """``fast=off``: the model runs as given (``RWKVKIT_FAST=0`` for the duration)."""
        if self.fast == "off":
            with mock.patch.dict(os.environ, {ENV_FAST: "0"}):
                yield
        else:
            yield

    def _context_ids(self, context: str) -> list[int]:
        ids = self.tokenizer.encode(context) if context else []
        if self.prefix == "always" or not ids:
            ids = [DOC_START, *ids]
        return ids

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """``(context ids, continuation ids)``, the context ids never empty (module docstring)."""
        n_space = len(context) - len(context.rstrip())
        if n_space:
            context, continuation = context[:-n_space], context[-n_space:] + continuation
        if not context:
            return self._context_ids(""), self.tokenizer.encode(continuation)
        context_ids = self.tokenizer.encode(context)
        whole = self.tokenizer.encode(context + continuation)
        return self._context_ids(context), whole[len(context_ids) :]

    def _gen_options(self, kwargs: dict[str, Any] | None) -> dict[str, Any]:
        """A task's generation arguments as :class:`rwkvkit.generation.SamplingParams` fields."""
        kwargs = dict(kwargs or {})
        unknown = sorted(set(kwargs) - set(GEN_KWARGS))
        if unknown:
            raise ConfigError(
                f"generation arguments {', '.join(unknown)} are not supported by the rwkvkit model "
                f"(it takes {', '.join(GEN_KWARGS)})"
            )
        until = kwargs.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        opts: dict[str, Any] = {
            "max_new_tokens": _positive("max_gen_toks", kwargs.get("max_gen_toks", self.max_gen_toks)),
            "stop": tuple(u for u in until if u),
        }
        if kwargs.get("do_sample") and float(kwargs.get("temperature", 1.0)) > 0:
            opts["temperature"] = float(kwargs.get("temperature", 1.0))
            opts["top_p"] = float(kwargs.get("top_p", 1.0))
            opts["top_k"] = int(kwargs.get("top_k", 0) or 0)
        else:
            opts["temperature"] = 0.0
        return opts


def _positive(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return value


def _batch_size(batch_size: int | str | None, max_batch_size: int | None) -> int:
    """lm-eval passes ``batch_size`` as given on its command line (an int, or ``auto``/``auto:N``):
    ``auto`` means ``max_batch_size``, else 16 (the recurrent state makes a batch's memory small and
    predictable, so no search is needed)."""
    if batch_size is None:
        return 16
    if isinstance(batch_size, str):
        if batch_size.startswith("auto"):
            return _positive("max_batch_size", max_batch_size) if max_batch_size else 16
        try:
            batch_size = int(batch_size)
        except ValueError:
            raise ConfigError(
                f"batch_size must be a positive integer or 'auto', got {batch_size!r}"
            ) from None
    return _positive("batch_size", batch_size)


def _device(device: str | None) -> str:
    """The device to load on: lm-eval's command line defaults to ``cuda:0``; without CUDA, the CPU."""
    if device is None:
        return "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        log.warning("rwkvkit: device %s requested but CUDA is not available; using the CPU", device)
        return "cpu"
    return str(device)


def main(argv: Sequence[str] | None = None) -> None:
    """lm-eval's own command line, with the ``rwkvkit`` model registered (``python -m rwkvkit.eval``)."""
    from lm_eval.__main__ import cli_evaluate  # deferred: lm-eval's CLI pulls in its task machinery

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()
