"""``rwkvkit eval``: LAMBADA, perplexity / bits per byte, and lm-evaluation-harness tasks."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from rwkvkit.cli.model_options import add_model_options, fast_mode, load_model
from rwkvkit.errors import ConfigError


def add_parser(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate a model: LAMBADA, perplexity and bits per byte, lm-evaluation-harness tasks",
        description="Evaluate a language model. 'lambada': the OpenAI LAMBADA test as the official RWKV "
        "script scores it; 'ppl': perplexity and bits per byte of text files or of a prepared split; "
        "'lm-eval': tasks of EleutherAI's lm-evaluation-harness (pip install 'rwkvkit[eval]').",
    )
    esub = p.add_subparsers(dest="eval_command", metavar="BENCHMARK", required=True)

    pl = esub.add_parser(
        "lambada",
        help="LAMBADA last-word accuracy and perplexity",
        description='Score the last word of each passage of a LAMBADA JSONL file ({"text": ...} per '
        "line, e.g. the OpenAI test set lambada_test.jsonl): [0] + context, then ' ' + last word; "
        "accuracy = every target token is the argmax; perplexity = exp(-mean log-probability).",
    )
    pl.add_argument("--data", required=True, help='the LAMBADA JSONL file (one {"text": ...} per line)')
    _model_options(pl)
    pl.add_argument("--limit", type=int, default=None, help="score only the first N passages")
    pl.add_argument(
        "--batch-size",
        type=int,
        default=8,
        help="passages per forward, right-padded (default 8: on a CPU larger batches fall out of the "
        "cache and run slower; more on a GPU)",
    )
    _output_options(pl)
    pl.set_defaults(func=run_lambada)

    pp = esub.add_parser(
        "ppl",
        help="perplexity and bits per byte of text files or of a prepared split",
        description="Perplexity (per token) and bits per byte. FILES: each file is one document (UTF-8), "
        "its whole likelihood from the separator token 0 on, the model's state carried through it. "
        "--data DIR: a folder from 'rwkvkit data prepare', scored as 'rwkvkit train' scores its "
        "validation split (windows of --ctx-len tokens, each from a fresh state).",
    )
    pp.add_argument("files", nargs="*", metavar="FILE", help="text files, each scored as one document")
    pp.add_argument("--data", default=None, help="a prepared token folder (instead of FILES)")
    pp.add_argument("--split", default="val", choices=["val", "train"], help="split of --data (default val)")
    pp.add_argument(
        "--ctx-len",
        type=int,
        default=512,
        help="window length for --data, each window from a fresh state (default 512; the training "
        "run's ctx_len reproduces its val_bpb)",
    )
    pp.add_argument("--limit", type=int, default=None, help="with --data: score only the first N tokens")
    _model_options(pp)
    pp.add_argument(
        "--batch-size", type=int, default=8, help="documents (or windows) per forward (default 8)"
    )
    pp.add_argument(
        "--chunk-len",
        type=int,
        default=1024,
        help="FILES: tokens per document and forward, the state carried between chunks (default 1024)",
    )
    _output_options(pp)
    pp.set_defaults(func=run_ppl)

    ph = esub.add_parser(
        "lm-eval",
        help="run lm-evaluation-harness tasks with the rwkvkit model",
        description="Run tasks of lm-evaluation-harness (pip install 'rwkvkit[eval]') on an rwkvkit "
        "model: the harness's 'rwkvkit' model (rwkvkit.eval.harness), its task definitions, its "
        "metrics. Prints the harness's results table. For every option of the harness's own command "
        "line: 'python -m rwkvkit.eval run --model rwkvkit --model_args pretrained=PATH --batch_size 16 "
        "...'.",
    )
    ph.add_argument(
        "--tasks",
        nargs="+",
        required=True,
        help="task or group names (space or comma separated), e.g. lambada_openai hellaswag",
    )
    ph.add_argument(
        "--include-path",
        default=None,
        help="a folder of extra task YAML files (e.g. local tasks on your own data)",
    )
    _model_options(ph, progress=False)
    ph.add_argument(
        "--model-args",
        default="",
        help="more arguments of the rwkvkit model, key=value,... (batch_size, max_gen_toks, prefix "
        "(always|empty: where the separator 0 goes), chunk_len, device); they override the options above",
    )
    ph.add_argument("--batch-size", type=int, default=16, help="sequences per forward (default 16)")
    ph.add_argument(
        "--limit",
        type=float,
        default=None,
        help="at most N documents per task (a value below 1: that fraction of each task)",
    )
    ph.add_argument(
        "--num-fewshot", type=int, default=None, help="few-shot examples per prompt (default: the task's)"
    )
    ph.add_argument("--seed", type=int, default=0, help="seed of the harness's sampling of examples")
    ph.add_argument(
        "--output",
        default=None,
        help="write the harness's results (and every request's inputs and outputs) to this JSON file",
    )
    ph.set_defaults(func=run_lm_eval)


def _model_options(p: argparse.ArgumentParser, progress: bool = True) -> None:
    add_model_options(p)
    if progress:
        p.add_argument(
            "--progress",
            action=argparse.BooleanOptionalAction,
            default=True,
            help="show a progress bar on stderr (default: on)",
        )


def _output_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", default=None, metavar="OUT", help="also write the figures to this JSON file")


def _positive(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise ConfigError(f"{name} must be at least 1, got {value}")


def _write_json(path: str | None, payload: dict[str, Any], default=str) -> None:
    if path:
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(payload, indent=2, default=default) + "\n")
        print(f"results written to {out}", file=sys.stderr)


def _speed(tokens: int, seconds: float) -> str:
    rate = tokens / seconds if seconds > 0 else math.inf
    return f"{tokens:,} in {seconds:.1f} s ({rate:,.0f} tokens/s)"


def run_lambada(args: argparse.Namespace) -> int:
    from rwkvkit.eval import lambada, read_lambada  # deferred: loads torch

    _positive("--batch-size", args.batch_size)
    _positive("--limit", args.limit)
    texts = read_lambada(args.data)  # a bad file fails before the model is loaded
    model, tok = load_model(args)
    with fast_mode(args):
        r = lambada(model, tok, texts, batch_size=args.batch_size, limit=args.limit, progress=args.progress)
    print(f"LAMBADA  {args.data}  model {args.model}")
    print(f"  accuracy    {100 * r.accuracy:.2f} %")
    print(f"  perplexity  {r.perplexity:.4g}")
    print(f"  documents   {r.documents}")
    print(f"  tokens      {_speed(r.tokens, r.seconds)}")
    _write_json(
        args.json, {"benchmark": "lambada", "data": str(args.data), "model": args.model, **r.summary()}
    )
    return 0


def run_ppl(args: argparse.Namespace) -> int:
    from rwkvkit.data import open_tokens  # deferred: loads torch
    from rwkvkit.eval import perplexity, perplexity_tokens, read_documents

    if bool(args.files) == bool(args.data):
        raise ConfigError("give text FILES or --data DIR (a prepared folder), not both and not neither")
    _positive("--batch-size", args.batch_size)
    _positive("--chunk-len", args.chunk_len)
    _positive("--ctx-len", args.ctx_len)
    _positive("--limit", args.limit)
    if args.limit is not None and args.files:
        raise ConfigError("--limit applies to --data (the first N tokens of the split); score fewer files")
    # bad files or folders fail before the model is loaded
    texts = read_documents(args.files) if args.files else None
    split = open_tokens(args.data, split=args.split) if args.data else None
    model, tok = load_model(args)
    with fast_mode(args):
        if texts is not None:
            r = perplexity(
                model,
                tok,
                texts,
                batch_size=args.batch_size,
                chunk_len=args.chunk_len,
                progress=args.progress,
            )
            source = f"{len(texts)} file{'s' if len(texts) != 1 else ''}"
        else:
            r = perplexity_tokens(
                model,
                split,
                ctx_len=args.ctx_len,
                batch_size=args.batch_size,
                limit=args.limit,
                progress=args.progress,
            )
            source = f"{args.data} ({args.split}, windows of {args.ctx_len})"
    print(f"perplexity  {source}  model {args.model}")
    if texts is not None and len(texts) > 1:
        width = max(len(f) for f in args.files)
        print(f"  {'file':<{width}}  {'tokens':>9}  {'bytes':>10}  {'ppl':>10}  {'bits/byte':>9}")
        for f, nats, n, b in zip(args.files, r.doc_nats, r.doc_tokens, r.doc_bytes):
            ppl = math.exp(nats / n) if n and nats / n < 700 else math.inf if n else math.nan
            bpb = nats / math.log(2) / b if b else math.nan
            print(f"  {f:<{width}}  {n:>9,}  {b:>10,}  {ppl:>10.4g}  {bpb:>9.4f}")
    print(f"  loss        {r.loss:.4f} nats/token")
    print(f"  perplexity  {r.perplexity:.4g}")
    print(f"  bits/byte   {r.bits_per_byte:.4f}  ({r.bytes:,} bytes)")
    print(f"  documents   {r.documents}")
    print(f"  tokens      {_speed(r.tokens, r.seconds)}")
    payload = {"benchmark": "perplexity", "model": args.model, **r.summary()}
    payload["data"] = str(args.data) if args.data else list(args.files)
    _write_json(args.json, payload)
    return 0


def run_lm_eval(args: argparse.Namespace) -> int:
    try:
        import lm_eval  # deferred: the optional eval extra
        from lm_eval.tasks import TaskManager
        from lm_eval.utils import handle_non_serializable, make_table, simple_parse_args_string
    except ImportError:
        raise ConfigError(
            "lm-evaluation-harness is not installed: pip install 'rwkvkit[eval]' (or pip install lm-eval)"
        ) from None
    import inspect

    from rwkvkit.eval.harness import RWKVKitLM

    _positive("--batch-size", args.batch_size)
    tasks = [t for item in args.tasks for t in item.split(",") if t]
    if args.include_path is not None and not Path(args.include_path).is_dir():
        raise ConfigError(f"--include-path {args.include_path} is not a folder")
    model_args: dict[str, Any] = {
        "pretrained": args.model,
        "tokenizer": args.tokenizer,
        "dtype": args.dtype,
        "fast": args.fast,
        "batch_size": args.batch_size,
    }
    extra = simple_parse_args_string(args.model_args)
    known = set(inspect.signature(RWKVKitLM.__init__).parameters) - {"self"}
    unknown = sorted(set(extra) - known)
    if unknown:
        raise ConfigError(f"unknown --model-args {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    if "pretrained" in extra:
        extra["pretrained"] = str(extra["pretrained"])  # a path of digits stays a path
    model_args.update(extra)
    manager = TaskManager(include_path=args.include_path)
    missing = [t for t in tasks if t not in manager.all_tasks]
    if missing:
        raise ConfigError(
            f"unknown lm-eval task{'s' if len(missing) > 1 else ''} {', '.join(missing)}: see "
            "'python -m rwkvkit.eval ls tasks', or pass --include-path with your task files"
        )
    lm = RWKVKitLM(**model_args)
    results = lm_eval.simple_evaluate(
        model=lm,
        tasks=tasks,
        num_fewshot=args.num_fewshot,
        limit=int(args.limit) if args.limit is not None and args.limit >= 1 else args.limit,
        task_manager=manager,
        log_samples=args.output is not None,
        random_seed=args.seed,
        numpy_random_seed=args.seed,
        torch_random_seed=args.seed,
        fewshot_random_seed=args.seed,
    )
    if results is None:  # only on a non-zero rank of a distributed run
        return 0
    print(make_table(results))
    if results.get("groups"):
        print(make_table(results, "groups"))
    results.setdefault("config", {}).update(
        model_args=model_args, batch_size=lm.batch_size
    )  # lm-eval leaves them None
    _write_json(args.output, results, default=handle_non_serializable)
    return 0
