"""The options that choose a model for inference, shared by ``rwkvkit generate``, ``serve`` and ``eval``:
``--model``, ``--tokenizer``, ``--dtype``, ``--fast``; and the one way they load it."""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Iterator
from unittest import mock

from rwkvkit.errors import ConfigError

FAST_CHOICES = ["auto", "off", "fp32", "bf16", "int8", "q4"]
MODEL_HELP = (
    "checkpoint (.pth, .safetensors, .gguf or HF directory), or 'default', the model shipped with rwkvkit "
    "(RWKV-7 trained on Python's standard library; the default)"
)


def add_model_options(p: argparse.ArgumentParser, model_help: str = MODEL_HELP) -> None:
    """``--model``, ``--tokenizer``, ``--dtype`` and ``--fast``, each with its help text."""
    p.add_argument("--model", default="default", help=model_help)
    p.add_argument(
        "--tokenizer",
        default=None,
        help="'world', 'bytes', 'default' or a tokenizer file (default: the tokenizer saved beside the "
        "model, else chosen from the model's vocabulary size)",
    )
    p.add_argument(
        "--dtype",
        default=None,
        choices=["fp32", "bf16", "fp16"],
        help="weight dtype (default: the checkpoint's)",
    )
    p.add_argument(
        "--fast",
        default="auto",
        choices=FAST_CHOICES,
        help="CPU inference path. auto (default): the compiled fast path at the weights' own precision "
        "(fp32 or bf16; the same as RWKVKIT_FAST unset). fp32/bf16/int8/q4: load straight into the fast "
        "path with projection weights in this precision (int8: per-channel scales, a quarter of the "
        "bytes; q4: 4-bit groups of 32, an eighth), lean in memory. off: the reference model as loaded "
        "(the same as RWKVKIT_FAST=0). State and WKV stay fp32 in every mode",
    )


@contextlib.contextmanager
def fast_mode(args: argparse.Namespace) -> Iterator[None]:
    """``--fast off``: inside, generation and scoring run the model as loaded (``RWKVKIT_FAST=0``); the
    environment is restored on exit."""
    if args.fast != "off":
        yield
        return
    from rwkvkit.inference.auto import ENV_FAST  # deferred: loads torch (`rwkvkit --help` stays light)

    with mock.patch.dict(os.environ, {ENV_FAST: "0"}):
        yield


def load_model(args: argparse.Namespace):
    """``(model, tokenizer)`` as ``--model``, ``--dtype``, ``--fast`` and ``--tokenizer`` say (the model
    in eval mode; the tokenizer checked to fit it)."""
    import rwkvkit  # deferred: loads torch (`rwkvkit --help` stays light)
    from rwkvkit.tokenizer import pick_tokenizer  # deferred: loads torch

    if args.fast in ("auto", "off"):
        model = rwkvkit.load(args.model, dtype=args.dtype)
    elif args.dtype is not None:
        raise ConfigError(
            f"--dtype {args.dtype} and --fast {args.fast} both choose the weights' precision; pass one"
        )
    else:
        model = rwkvkit.load(args.model, weights=args.fast)
    model.eval()
    return model, pick_tokenizer(args.tokenizer, model.config.vocab_size, args.model)
