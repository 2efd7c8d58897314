"""``rwkvkit generate``: continue a prompt with a model, optionally streaming, saving the state."""

from __future__ import annotations

import argparse
import sys

import rwkvkit
from rwkvkit.cli.model_options import add_model_options, fast_mode, load_model
from rwkvkit.generation import SamplingParams
from rwkvkit.tokenizer import pick_tokenizer, tokenizer_beside  # noqa: F401 (imported from here by others)

DEFAULTS = SamplingParams()  # the sampling defaults, declared once in SamplingParams


def add_parser(sub) -> None:
    p = sub.add_parser(
        "generate",
        help="generate text from a prompt",
        description="Continue a prompt: chunked prefill, then recurrent decoding.",
    )
    p.add_argument("--prompt", default="", help="text to continue (may be empty with --state-in)")
    p.add_argument("--max-tokens", type=int, default=100, help="most new tokens to generate (default 100)")
    d = DEFAULTS
    p.add_argument(
        "--temperature",
        type=float,
        default=d.temperature,
        help=f"sampling temperature; 0 = greedy (default {d.temperature:g})",
    )
    p.add_argument(
        "--top-p",
        type=float,
        default=d.top_p,
        help=f"nucleus mass in (0, 1]; 1 = no cut (default {d.top_p:g})",
    )
    p.add_argument(
        "--top-k", type=int, default=d.top_k, help="keep only the k most likely tokens; 0 = off (default)"
    )
    p.add_argument(
        "--presence-penalty",
        type=float,
        default=d.presence_penalty,
        help=f"official alpha_presence (default {d.presence_penalty:g})",
    )
    p.add_argument(
        "--frequency-penalty",
        type=float,
        default=d.frequency_penalty,
        help=f"official alpha_frequency (default {d.frequency_penalty:g})",
    )
    p.add_argument(
        "--penalty-decay",
        type=float,
        default=d.penalty_decay,
        help=f"penalty decay per token (default {d.penalty_decay:g})",
    )
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable); not printed")
    p.add_argument("--seed", type=int, default=None, help="random seed: the same seed gives the same text")
    p.add_argument(
        "--stream", action=argparse.BooleanOptionalAction, default=True, help="print text as it is generated"
    )
    p.add_argument("--state-in", default=None, help="continue from a state saved by --state-out")
    p.add_argument("--state-out", default=None, help="save the state after the generated text to this file")
    add_model_options(p)
    p.set_defaults(func=run)


def sampling_params(args: argparse.Namespace) -> SamplingParams:
    """The sampling options of the command line as one (validated) :class:`SamplingParams`."""
    return SamplingParams(
        max_new_tokens=args.max_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        presence_penalty=args.presence_penalty,
        frequency_penalty=args.frequency_penalty,
        penalty_decay=args.penalty_decay,
        stop=tuple(args.stop),
        seed=args.seed,
    )


def run(args: argparse.Namespace) -> int:
    params = sampling_params(args)  # a bad option fails here, before the model is loaded
    with fast_mode(args):
        model, tok = load_model(args)
        return _run(args, params, model, tok)


def _run(args: argparse.Namespace, params: SamplingParams, model, tok) -> int:
    state = rwkvkit.State.load(args.state_in) if args.state_in else None
    if state is not None:
        state.check_fits(model.config)
    # generate() checks the prompt ids against the model's vocabulary before running the model.
    gen = rwkvkit.generate(
        model,
        tok,
        args.prompt,
        params=params,
        state=state,
        logits=state.logits if state is not None and not args.prompt else None,
        stream=True,
    )
    if args.stream:
        sys.stdout.write(args.prompt)
        for piece in gen:
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
    else:
        text = "".join(gen)
        print(args.prompt + text)
    if args.state_out:
        gen.state.save(args.state_out)
        print(f"state saved to {args.state_out}", file=sys.stderr)
    return 0
