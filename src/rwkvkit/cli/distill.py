"""``rwkvkit distill --teacher DIR --data DIR --stages 1,2,3 [CONFIG.toml] [--resume] [--FIELD VALUE ...]``.

Turns a transformers causal LM (Qwen2 or Llama) into an ARWKV student: every attention becomes an
RWKV-7 time mix, then stage 1 aligns each time mix with the teacher's attention output, stage 2
distils the teacher's logits, stage 3 fine-tunes on instruction data. Every field of
:class:`rwkvkit.distill.DistillConfig` is an option; its help text is the field's documentation.
The student is ``OUT_DIR/model.safetensors``: ``rwkvkit.load`` and ``rwkvkit generate --model`` read
it. Under ``torchrun`` the same command trains with DDP.
"""

from __future__ import annotations

import argparse
import logging
import sys

from rwkvkit.cli.train import add_field_options
from rwkvkit.cli.train import resolve_config as resolve
from rwkvkit.distill.recipe import DistillConfig, distill


def add_parser(sub) -> None:
    p = sub.add_parser(
        "distill",
        help="distil a transformers Qwen2/Llama model into an RWKV-7 hybrid (ARWKV)",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    p.add_argument("config", nargs="?", default=None, help="a TOML file of DistillConfig fields (optional)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue exactly from OUT_DIR/last.pt, with the configuration saved in OUT_DIR/config.toml "
        "(only the stage steps, eval/save/log intervals and the device settings may be given again "
        "with new values)",
    )
    group = p.add_argument_group("distillation options (override the TOML file)")
    add_field_options(group, DistillConfig)
    p.set_defaults(func=run)


def resolve_config(args: argparse.Namespace):
    return resolve(args, DistillConfig)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    cfg = resolve_config(args)
    result = distill(cfg, resume=args.resume)
    teacher = f" (teacher {result.teacher_val_loss:.4f})" if result.teacher_val_loss is not None else ""
    val = (
        f"validation loss {result.val_loss:.4f}{teacher}"
        if result.val_loss is not None
        else "no validation data (the validation split is empty)"
    )
    print(
        f"done: {result.step} steps, {result.tokens:,} tokens in {result.seconds / 60:.1f} min; "
        f"{val}; student in {result.out_dir}/model.safetensors"
    )
    return 0
