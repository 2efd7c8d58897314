"""``rwkvkit convert SRC DST --to FORMAT``: rewrite a checkpoint in another format, losslessly."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser(
        "convert",
        help="convert a checkpoint between the official .pth, rwkvkit .safetensors and HF directories",
        description=(
            "Read SRC (any supported format; version and sizes from the tensors), check it, and write it "
            "to DST. Without --dtype every tensor keeps its bits. The write is atomic."
        ),
    )
    p.add_argument(
        "src",
        metavar="SRC",
        help="an official (BlinkDL) .pth, an rwkvkit .safetensors, or an HF model directory",
    )
    p.add_argument(
        "dst",
        metavar="DST",
        help="where to write: a file for --to rwkvkit (.safetensors) or blinkdl (.pth), "
        "a directory for --to hf",
    )
    p.add_argument(
        "--to",
        required=True,
        choices=("rwkvkit", "blinkdl", "hf"),
        help="target format: rwkvkit (one .safetensors with the config in its metadata), blinkdl "
        "(the official .pth), hf (a model directory: transformers for RWKV-4, the RWKV hub's layout "
        "for RWKV-5.2, fla for RWKV-6 and 7)",
    )
    p.add_argument(
        "--dtype",
        choices=("fp32", "bf16", "fp16"),
        default=None,
        help="cast the weights to this dtype (default: keep each tensor's dtype and bits)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rwkvkit.formats import convert, describe

    ckpt = convert(args.src, args.dst, args.to, dtype=args.dtype)
    written = describe(args.dst)
    cfg = ckpt.config
    print(
        f"wrote {args.dst}: {written['format']}, RWKV-{cfg.version}, {cfg.n_layer} layers, "
        f"{written['parameters']:,} parameters, {written['dtype']} (from {ckpt.description})"
    )
    return 0
