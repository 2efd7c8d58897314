"""``rwkvkit data prepare`` (text -> token files) and ``rwkvkit data info`` (describe prepared tokens)."""

from __future__ import annotations

import argparse
import sys
import warnings
from typing import Any

from rwkvkit.errors import ConfigError


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "data",
        help="prepare token files for training (text, directories, JSONL, the Python stdlib)",
        description="Turn text into memory-mapped token files with a train/validation split.",
    )
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    pp = dsub.add_parser(
        "prepare",
        help="tokenize files, directories or JSONL into train.bin / val.bin + meta.json",
        description=(
            "Tokenize documents (a file, each file of a directory, or each line of a .jsonl file) into "
            "OUT/train.bin and OUT/val.bin (every document followed by the end-of-document token 0) and "
            'OUT/meta.json. A JSONL line is plain text ({"text": ...}) or a fine-tuning example '
            "(prompt/answer, question/answer, instruction[/input]/output, or messages), rendered in the "
            "RWKV World chat format; a split with examples also gets OUT/<split>.mask, the loss mask "
            "(1 on the answers' tokens). Examples: `rwkvkit data prepare docs/ --out data/docs`; "
            "`rwkvkit data prepare --stdlib data/stdlib --tokenizer bpe:4096`; "
            "`rwkvkit data prepare sft.jsonl --out data/sft`."
        ),
    )
    pp.add_argument(
        "sources",
        nargs="*",
        metavar="SOURCE",
        help="text files, directories (searched recursively for --ext files) or .jsonl files "
        "(one document per line); with --stdlib and no --out, a single SOURCE is the output folder",
    )
    pp.add_argument("--out", "-o", metavar="DIR", help="output folder (created; earlier outputs replaced)")
    pp.add_argument(
        "--tokenizer",
        default="world",
        metavar="SPEC",
        help="world (default), bytes, a tokenizer file (a tokenizer.json such as 20B_tokenizer.json, or a "
        "World-format .txt), or bpe:N to train a byte-level BPE of N ids on the training documents "
        "(saved as OUT/tokenizer.json)",
    )
    pp.add_argument(
        "--val-fraction",
        type=float,
        default=None,
        metavar="F",
        help="share of documents held out for validation, chosen by a stable hash of each document's "
        "name and the seed (default 0.01)",
    )
    pp.add_argument(
        "--val-files",
        nargs="+",
        action="extend",
        metavar="NAME",
        help="hold out exactly these documents instead (paths, or keys such as corpus/a.txt, "
        "stdlib/json/decoder.py, data.jsonl:12)",
    )
    pp.add_argument("--seed", type=int, default=0, help="seed of the validation hash (default 0)")
    pp.add_argument(
        "--format",
        choices=("bin", "binidx"),
        default="bin",
        help="bin: flat token arrays (default); binidx: the same .bin plus the .idx index of RWKV-LM's "
        "trainer (--data_file OUT/train --data_type binidx)",
    )
    pp.add_argument(
        "--dtype",
        choices=("auto", "uint16", "uint32"),
        default="auto",
        help="token dtype: auto (uint16 when the vocabulary has at most 65536 ids, else uint32), or forced",
    )
    pp.add_argument(
        "--ext",
        nargs="+",
        action="extend",
        metavar="EXT",
        help="file extensions taken from directories (default: .txt .md .rst .py; add .jsonl to read "
        "JSONL files found in directories)",
    )
    pp.add_argument(
        "--jsonl-field",
        default="text",
        metavar="NAME",
        help="the JSONL field holding plain text (default text)",
    )
    pp.add_argument(
        "--jsonl-format",
        choices=("auto", "text", "chat"),
        default="auto",
        help="what a JSONL line holds: text (plain text in --jsonl-field; every token is trained on), "
        'chat (a fine-tuning example: {"prompt","answer"}, {"question","answer"}, '
        '{"instruction"[,"input"],"output"} or {"messages":[{"role","content"},...]}, trained on the '
        "answers only), or auto (default: chat when a line has one of those keys, else text)",
    )
    pp.add_argument(
        "--stdlib",
        action="store_true",
        help="add the Python standard library's own sources (test folders excluded) as a corpus",
    )
    pp.add_argument("--quiet", "-q", action="store_true", help="no progress bars, warnings or summary")
    pp.set_defaults(func=run_prepare)

    pi = dsub.add_parser(
        "info",
        help="describe a prepared token folder (tokenizer, dtype, tokens, documents, bytes per split)",
        description="Print the summary of a folder written by `rwkvkit data prepare`.",
    )
    pi.add_argument("path", help="the folder holding meta.json")
    pi.set_defaults(func=run_info)


def format_summary(meta: dict[str, Any], out_dir: str) -> str:
    """Lines describing a prepared folder: tokenizer, dtype, and tokens/documents/bytes per split."""
    tk = meta["tokenizer"]
    lines = [
        f"{out_dir}: {meta['storage']}, tokenizer {tk['spec']} (vocabulary {meta['vocab_size']}), "
        f"{meta['dtype']}" + (f", {meta['seconds']:.1f} s" if meta.get("seconds") is not None else "")
    ]
    for name, s in meta["splits"].items():
        per = f", {s['bytes'] / s['tokens']:.2f} bytes/token" if s["tokens"] else ""
        lines.append(
            f"  {name + ':':6} {s['tokens']:>12,} tokens {s['documents']:>9,} documents "
            f"{s['bytes']:>14,} bytes{per}"
        )
        if s.get("mask"):  # fine-tuning data (folders of older rwkvkit have no such key)
            lines.append(
                f"  {'':6} {s['target_tokens']:>12,} targets {s['chat_documents']:>8,} chat examples "
                f"(loss mask {s['mask']})"
            )
    altered = sum(s["altered_documents"] for s in meta["splits"].values())
    if altered:
        lines.append(f"  {altered} documents decode to different text (the tokenizer normalizes)")
    if meta.get("skipped"):
        lines.append("  skipped: " + ", ".join(f"{v['count']} {k}" for k, v in meta["skipped"].items()))
    return "\n".join(lines)


def run_prepare(args: argparse.Namespace) -> int:
    from rwkvkit.data import DEFAULT_EXTENSIONS, prepare

    sources, out = list(args.sources), args.out
    if out is None and args.stdlib and len(sources) == 1:
        out, sources = sources[0], []  # `rwkvkit data prepare --stdlib OUT_DIR`
    if out is None:
        raise ConfigError("name the output folder with --out DIR")
    if not sources and not args.stdlib:
        raise ConfigError("give at least one SOURCE (file, directory or .jsonl), or --stdlib")
    if args.val_fraction is not None and args.val_files:
        raise ConfigError("--val-fraction and --val-files exclude each other: choose one rule")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        meta = prepare(
            sources,
            out,
            args.tokenizer,
            val_fraction=0.01 if args.val_fraction is None else args.val_fraction,
            val_files=args.val_files,
            seed=args.seed,
            format=args.format,
            dtype=args.dtype,
            extensions=args.ext or DEFAULT_EXTENSIONS,
            jsonl_field=args.jsonl_field,
            jsonl_format=args.jsonl_format,
            stdlib=args.stdlib,
            quiet=args.quiet,
        )
    if not args.quiet:
        for w in caught:
            print(f"warning: {w.message}", file=sys.stderr)
        print(format_summary(meta, out))
    return 0


def run_info(args: argparse.Namespace) -> int:
    from rwkvkit.data import read_meta

    print(format_summary(read_meta(args.path), args.path))
    return 0
