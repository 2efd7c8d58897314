"""``rwkvkit`` command line: a thin layer that parses options and calls one library function.

Errors a user can cause print one line (``error: ...``) and exit with status 2; anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys

from rwkvkit import __version__
from rwkvkit.errors import Interrupted, RWKVKitError


def build_parser() -> argparse.ArgumentParser:
    from rwkvkit.cli import (
        convert,
        data,
        distill,
        eval,
        finetune,
        forecast,
        generate,
        info,
        serve,
        train,
        vision,
    )

    parser = argparse.ArgumentParser(
        prog="rwkvkit",
        description="RWKV models: prepare data, train, convert, inspect, generate text and serve it over "
        "HTTP; distil a transformer into RWKV-7 (ARWKV); vision models; time-series forecasting.",
    )
    parser.add_argument("--version", action="version", version=f"rwkvkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (info, generate, serve, convert, data, train, finetune, eval, distill, vision, forecast):
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except Interrupted as e:  # a clean stop on SIGTERM/SIGINT: the checkpoint is written
        print(str(e), file=sys.stderr)
        return e.exit_code
    except RWKVKitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
