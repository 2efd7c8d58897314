"""``rwkvkit serve``: an OpenAI-compatible HTTP server and a chat page for one model."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from rwkvkit.cli.model_options import add_model_options, fast_mode, load_model
from rwkvkit.errors import ConfigError

DEFAULT_PORT = 8000


def add_parser(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a model over an OpenAI-compatible HTTP API, with a chat page",
        description="Serve a model: /v1/completions and /v1/chat/completions (OpenAI's format, streamed "
        "or not), /v1/models, and a chat page at /. Every request is decoded by one engine with "
        "continuous batching; the state after each served prompt is cached so a conversation's next "
        "turn only prefills its new tokens.",
    )
    add_model_options(
        p,
        model_help="checkpoint (.pth, .safetensors, .gguf or HF directory), or 'default', the model shipped "
        "with rwkvkit (the default; it writes Python, so it is served with --chat-format plain)",
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)"
    )
    p.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0 picks a free one)"
    )
    p.add_argument(
        "--model-id",
        default=None,
        help="the id clients pass as 'model' (default: 'default' for the shipped model, else the file "
        "name without its extension)",
    )
    p.add_argument(
        "--chat-format",
        default="auto",
        choices=["auto", "world", "plain"],
        help="how chat messages become a prompt: world ('User: ...\\n\\nAssistant:', stop at '\\n\\nUser:'; "
        "RWKV World chat models), plain (the contents joined, continued as text); auto (default): plain "
        "for the shipped model, world otherwise",
    )
    p.add_argument(
        "--state",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="also serve the model from a saved state (a state-tuned or prompt state, written by "
        "'rwkvkit generate --state-out' or State.save) as the model id '<model-id>:NAME'; repeatable",
    )
    p.add_argument(
        "--api-key",
        default=os.environ.get("RWKVKIT_API_KEY"),
        help="require 'Authorization: Bearer <key>' on /v1 routes (default: $RWKVKIT_API_KEY; none: open)",
    )
    p.add_argument("--max-batch", type=int, default=32, help="requests decoded together (default 32)")
    p.add_argument(
        "--max-queue",
        type=int,
        default=64,
        help="requests waiting beyond --max-batch before 429 (default 64)",
    )
    p.add_argument(
        "--prefill-budget",
        type=int,
        default=512,
        help="prompt tokens prefilled per engine step, between decoding steps, so a long prompt does not "
        "stall the other clients (default 512; 0: whole prompts at once)",
    )
    p.add_argument(
        "--cache-mb", type=float, default=512, help="state cache bound in MiB; 0 turns it off (default 512)"
    )
    p.add_argument(
        "--max-prompt-tokens", type=int, default=16384, help="longest prompt in tokens (default 16384)"
    )
    p.add_argument(
        "--max-tokens", type=int, default=4096, help="largest max_tokens a request may ask (default 4096)"
    )
    p.add_argument(
        "--default-max-tokens",
        type=int,
        default=256,
        help="max_tokens when a request gives none (default 256)",
    )
    p.add_argument("--max-body-kb", type=int, default=1024, help="largest request body in KiB (default 1024)")
    p.add_argument(
        "--shutdown-timeout",
        type=float,
        default=10.0,
        help="on Ctrl-C/SIGTERM, seconds to let running requests finish before cancelling them (default 10)",
    )
    p.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="server log level (default info: one line per request)",
    )
    p.set_defaults(func=run)


def _positive(name: str, value: float, minimum: float = 1) -> None:
    if value < minimum:
        raise ConfigError(f"--{name} must be >= {minimum:g}, got {value:g}")


def _states(specs: list[str], config) -> dict:
    import rwkvkit  # deferred: the CLI parser builds without torch

    states = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise ConfigError(
                f"--state takes NAME=PATH, got {spec!r}: e.g. --state assistant=assistant.state"
            )
        if ":" in name or "/" in name or name in states:
            raise ConfigError(f"--state name {name!r} must be unique and may not contain ':' or '/'")
        state = rwkvkit.State.load(path)
        state.check_fits(config)
        if state.batch_size != 1:
            raise ConfigError(
                f"--state {name}: {path} holds {state.batch_size} sequences; save one (batch 1)"
            )
        states[name] = state
    return states


def run(args: argparse.Namespace) -> int:
    try:
        import starlette  # noqa: F401  # deferred: the serve extra is optional
        import uvicorn  # noqa: F401  # deferred: the serve extra is optional
    except ImportError:
        raise ConfigError("rwkvkit serve needs the serve extra: pip install 'rwkvkit[serve]'") from None

    for name in ("max_batch", "max_tokens", "max_prompt_tokens", "max_body_kb"):
        _positive(name.replace("_", "-"), getattr(args, name))
    _positive("max-queue", args.max_queue, 0)
    _positive("prefill-budget", args.prefill_budget, 0)
    _positive("cache-mb", args.cache_mb, 0)
    _positive("default-max-tokens", args.default_max_tokens, 0)
    if args.default_max_tokens > args.max_tokens:
        raise ConfigError("--default-max-tokens is larger than --max-tokens; lower it or raise --max-tokens")
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be in [0, 65535], got {args.port}")

    with fast_mode(args):  # --fast off: the model runs as loaded until the server stops
        return _serve(args)


def _serve(args: argparse.Namespace) -> int:
    from rwkvkit.serve import Limits, ServerConfig, create_app  # deferred: needs the serve extra
    from rwkvkit.serve.run import make_server, serve_on_main_thread  # deferred: needs the serve extra

    model, tokenizer = load_model(args)
    shipped = args.model == "default" and not Path(args.model).exists()
    model_id = args.model_id or ("default" if shipped else Path(args.model.rstrip("/")).stem)
    chat = args.chat_format if args.chat_format != "auto" else ("plain" if shipped else "world")
    limits = Limits(
        max_body_bytes=args.max_body_kb * 1024,
        max_prompt_tokens=args.max_prompt_tokens,
        max_tokens=args.max_tokens,
        default_max_tokens=args.default_max_tokens,
    )
    config = ServerConfig(
        model_id=model_id,
        chat_format=chat,
        states=_states(args.state, model.config),
        api_key=args.api_key or None,
        limits=limits,
        max_batch=args.max_batch,
        max_queue=args.max_queue,
        cache_mb=args.cache_mb,
        prefill_budget=args.prefill_budget or None,
        engine_thread=False,  # the engine runs on this (the main) thread: serve_on_main_thread
    )
    app = create_app(model, tokenizer, config)
    if args.host not in ("127.0.0.1", "localhost", "::1") and not config.api_key:
        print(
            f"warning: serving on {args.host} without --api-key: anyone who can reach this port can use it",
            file=sys.stderr,
        )
    ids = ", ".join(app.state.server.models)
    print(f"rwkvkit serve: model ids {ids}; chat format {chat}", file=sys.stderr)
    if args.port:
        host = f"[{args.host}]" if ":" in args.host else args.host
        print(f"rwkvkit serve: chat page on http://{host}:{args.port}/, API under /v1", file=sys.stderr)
    server = make_server(
        app, args.host, args.port, log_level=args.log_level, shutdown_timeout=args.shutdown_timeout
    )
    if not serve_on_main_thread(server):
        raise ConfigError(f"could not listen on {args.host}:{args.port} (is the port in use? try --port)")
    print("rwkvkit serve: stopped", file=sys.stderr)
    return 0
