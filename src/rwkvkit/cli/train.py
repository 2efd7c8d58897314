"""``rwkvkit train [CONFIG.toml] [--preset NAME] [--resume] [--FIELD VALUE ...]``.

Every field of :class:`rwkvkit.training.config.TrainConfig` is a command-line option (``--n-layer
8``, ``--lr 3e-4``, ``--l2wrap false``); its help text is the field's documentation. Precedence:
preset, then the TOML file, then the options. Under ``torchrun`` the same command trains with DDP
or FSDP2 (``--parallel fsdp``).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import logging
import sys
from collections.abc import Sequence
from functools import lru_cache

from rwkvkit import registry
from rwkvkit.training.config import PRESETS, TrainConfig, preset
from rwkvkit.training.loop import train


@lru_cache(maxsize=4)
def field_docs(cls: type | None = None) -> dict[str, str]:
    """The attribute docstrings of a config dataclass (string literals after each field; default
    TrainConfig), by field name."""
    docs: dict[str, str] = {}
    try:
        tree = ast.parse(inspect.getsource(cls or TrainConfig))
    except (OSError, TypeError):  # no source available: options still work, without help texts
        return docs
    body = tree.body[0].body
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if isinstance(nxt, ast.Expr) and isinstance(getattr(nxt, "value", None), ast.Constant):
                docs[node.target.id] = " ".join(str(nxt.value.value).split())
    return docs


def add_parser(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train or fine-tune a model (every config field is an option)",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    p.add_argument("config", nargs="?", default=None, help="a TOML file of TrainConfig fields (optional)")
    p.add_argument("--preset", default=None, help=f"start from a named preset: {', '.join(sorted(PRESETS))}")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue exactly from OUT_DIR/last.pt, with the configuration saved in OUT_DIR/config.toml "
        "(only the steps, lr_final, eval/save/log intervals and the device settings may be given again "
        "with new values)",
    )
    group = p.add_argument_group("training options (override the preset and the TOML file)")
    add_field_options(group, TrainConfig, choices={"arch": registry.names("language")})
    p.set_defaults(func=run)


def add_field_options(group, cls, choices: dict[str, Sequence[str]] | None = None) -> None:
    """One ``--field-name VALUE`` option per dataclass field, its docstring as the help text;
    ``choices``: the allowed values of some fields (an other value is a one-line usage error)."""
    docs = field_docs(cls)
    choices = choices or {}
    for f in dataclasses.fields(cls):
        default = f.default
        help_text = docs.get(f.name, "")
        group.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f"opt_{f.name}",
            default=None,
            choices=choices.get(f.name),
            metavar=type(default).__name__.upper(),
            help=f"{help_text} (default {default!r})" if help_text else f"default {default!r}",
        )


def given_options(args: argparse.Namespace, cls, base=None) -> dict:
    """The fields the user set: those of ``base`` (a preset) that differ from the defaults, then the
    TOML file's, then the command-line options (later ones win)."""
    given: dict = {}
    if base is not None:
        defaults = cls().to_dict()
        given |= {k: v for k, v in base.to_dict().items() if v != defaults[k]}
    if args.config:
        given |= cls.read_toml(args.config)
    given |= {k[4:]: v for k, v in vars(args).items() if k.startswith("opt_") and v is not None}
    return given


def resolve_config(args: argparse.Namespace, cls=None):
    """The run's config from the preset, TOML file and options; with ``--resume``, the resumed run's
    own saved config, with the options that may change applied (others must match it)."""
    cls = cls or TrainConfig
    base = preset(args.preset) if getattr(args, "preset", None) else None
    given = given_options(args, cls, base)
    if args.resume:
        return cls.for_resume(given)
    return cls.from_dict(given)


def done_line(result, what: str) -> str:
    """The last line of a finished run (``what``: where its weights are)."""
    val = (
        f"validation loss {result.val_loss:.4f}, {result.val_bpb:.4f} bits/byte"
        if result.val_loss is not None
        else "no validation data (the validation split is empty)"
    )
    return f"done: {result.step} steps in {result.seconds / 60:.1f} min; {val}; {what}"


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    cfg = resolve_config(args)
    result = train(cfg, resume=args.resume)
    print(done_line(result, f"weights in {result.out_dir}"))
    return 0
