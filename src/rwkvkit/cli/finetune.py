"""``rwkvkit finetune``: LoRA, PiSSA, state tuning or full fine-tuning of a checkpoint, on the trainer;
``rwkvkit finetune merge BASE ADAPTER OUT``: a plain checkpoint with a LoRA adapter merged in.

Every :class:`~rwkvkit.training.config.TrainConfig` field is an option, as for ``rwkvkit train``;
``--base`` is ``--init-from`` and ``--method`` is ``--finetune``. Where a run does not say, the
learning rate, steps and output folder default to the method's (:data:`METHOD_DEFAULTS`).
"""

from __future__ import annotations

import argparse
import logging
import sys

from rwkvkit.errors import ConfigError

# What a fine-tuning run uses where neither the TOML file nor the options say (TrainConfig's own
# defaults are for training from scratch). State tuning moves one small tensor: a large step size.
METHOD_DEFAULTS = {
    "full": {"lr": 1e-4, "lr_final": 1e-5, "warmup_steps": 20, "max_steps": 300, "weight_decay": 0.0},
    "lora": {"lr": 1e-3, "lr_final": 1e-4, "warmup_steps": 20, "max_steps": 300, "weight_decay": 0.0},
    "pissa": {"lr": 3e-4, "lr_final": 3e-5, "warmup_steps": 20, "max_steps": 300, "weight_decay": 0.0},
    "state": {"lr": 3e-2, "lr_final": 3e-3, "warmup_steps": 20, "max_steps": 300, "weight_decay": 0.0},
}


def add_parser(sub) -> None:
    from rwkvkit.cli.train import add_field_options  # deferred: keeps `rwkvkit --help` light
    from rwkvkit.training.config import TrainConfig  # deferred: keeps `rwkvkit --help` light

    p = sub.add_parser(
        "finetune",
        help="fine-tune a checkpoint: LoRA, PiSSA, state tuning or every weight; merge an adapter",
        description="Fine-tune BASE (--base: any checkpoint rwkvkit reads, or 'default') on a prepared "
        "dataset (`rwkvkit data prepare`; chat/prompt-answer JSONL trains on the answers only) with "
        "--method lora|pissa|state|full, on rwkvkit's trainer (checkpoints, --resume, bf16, torchrun, "
        "loss plot). LoRA/PiSSA write adapter.safetensors, state tuning state.safetensors, full "
        "fine-tuning model.safetensors. `rwkvkit finetune merge BASE ADAPTER OUT` writes a plain "
        "checkpoint with an adapter merged in.",
    )
    p.add_argument("--config", default=None, help="a TOML file of TrainConfig fields (optional)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue exactly from OUT_DIR/last.pt with the run's saved configuration",
    )
    p.add_argument(
        "--base", dest="opt_init_from", default=None, help="the checkpoint to fine-tune (--init-from)"
    )
    p.add_argument(
        "--method",
        dest="opt_finetune",
        default=None,
        choices=sorted(METHOD_DEFAULTS),
        help="lora, pissa (LoRA from the principal singular vectors), state (only the initial WKV state) "
        "or full (every weight); the same as --finetune",
    )
    group = p.add_argument_group("training options (as for `rwkvkit train`)")
    add_field_options(group, TrainConfig, choices={"finetune": ["full", "lora", "pissa", "state"]})
    p.set_defaults(func=run, finetune_command=None)

    inner = p.add_subparsers(dest="finetune_command", metavar="merge")
    m = inner.add_parser(
        "merge",
        help="merge a LoRA adapter into its base: a plain checkpoint",
        description="Load BASE, apply ADAPTER (adapter.safetensors of a LoRA/PiSSA run; checked against "
        "BASE's shapes and weights), merge it into the weights and write OUT in any format rwkvkit "
        "writes. Its logits equal BASE + ADAPTER within 1e-5 in fp32.",
    )
    m.add_argument(
        "base", metavar="BASE", help="the base checkpoint the adapter was trained on (or 'default')"
    )
    m.add_argument("adapter", metavar="ADAPTER", help="the adapter file (adapter.safetensors)")
    m.add_argument("out", metavar="OUT", help="where to write the merged model")
    m.add_argument(
        "--to",
        default="rwkvkit",
        choices=("rwkvkit", "blinkdl", "hf", "gguf"),
        help="format of OUT (default rwkvkit: one .safetensors), as `rwkvkit convert --to`",
    )
    m.add_argument(
        "--dtype", default=None, choices=("fp32", "bf16", "fp16"), help="cast the weights (default: fp32)"
    )
    m.set_defaults(func=run_merge)


def resolve(args: argparse.Namespace):
    """The run's TrainConfig: the method's defaults, then the TOML file, then the options."""
    from rwkvkit.cli.train import given_options  # deferred: keeps `rwkvkit --help` light
    from rwkvkit.training.config import TrainConfig  # deferred: keeps `rwkvkit --help` light

    given = given_options(args, TrainConfig)
    if args.resume:
        return TrainConfig.for_resume(given)
    method = given.get("finetune")
    if not method:
        raise ConfigError("choose a fine-tuning method: --method lora, pissa, state or full")
    if method not in METHOD_DEFAULTS:
        raise ConfigError(f"unknown fine-tuning method {method!r}: lora, pissa, state or full")
    if not given.get("init_from"):
        raise ConfigError("which checkpoint? pass --base PATH (or --base default, the shipped model)")
    base = {"out_dir": f"runs/finetune-{method}", **METHOD_DEFAULTS[method]}
    if "warmup_steps" not in given:  # a short run: a warm-up of at most a fifth of it
        steps = int(given.get("max_steps", base["max_steps"]))
        base["warmup_steps"] = min(base["warmup_steps"], steps // 5)
    return TrainConfig.from_dict({**base, **given})


def run(args: argparse.Namespace) -> int:
    from rwkvkit.cli.train import done_line  # deferred: keeps `rwkvkit --help` light
    from rwkvkit.finetune.workflow import ADAPTER_FILE, STATE_FILE, finetune  # deferred: loads torch

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    cfg = resolve(args)
    result = finetune(cfg, resume=args.resume)
    out = {"lora": ADAPTER_FILE, "pissa": ADAPTER_FILE, "state": STATE_FILE}.get(
        cfg.finetune, "model.safetensors"
    )
    print(done_line(result, f"{cfg.finetune} result in {result.out_dir / out}"))
    return 0


def run_merge(args: argparse.Namespace) -> int:
    from rwkvkit.finetune.workflow import merge  # deferred: loads torch

    merge(args.base, args.adapter, args.out, format=args.to, dtype=args.dtype)
    print(f"merged {args.adapter} into {args.base}: {args.out}")
    return 0
