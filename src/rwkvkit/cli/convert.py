"""``rwkvkit convert SRC DST --to FORMAT``: rewrite a checkpoint in another format, losslessly
(GGUF also quantised, for llama.cpp)."""

from __future__ import annotations

import argparse

from rwkvkit.errors import ConfigError

DTYPES = ("fp32", "bf16", "fp16")
GGUF_DTYPES = ("f32", "f16", "q8_0", "q4_0")  # bf16 and the fp* spellings are accepted too


def add_parser(sub) -> None:
    p = sub.add_parser(
        "convert",
        help="convert a checkpoint between the official .pth, rwkvkit .safetensors, HF directories and "
        "llama.cpp's GGUF",
        description=(
            "Read SRC (any supported format; version and sizes from the tensors), check it, and write it "
            "to DST. Without --dtype every tensor keeps its bits. The write is atomic."
        ),
    )
    p.add_argument(
        "src",
        metavar="SRC",
        help="an official (BlinkDL) .pth, an rwkvkit .safetensors, an HF model directory, or an "
        "RWKV-6/7 .gguf",
    )
    p.add_argument(
        "dst",
        metavar="DST",
        help="where to write: a file for --to rwkvkit (.safetensors), blinkdl (.pth) or gguf (.gguf), "
        "a directory for --to hf",
    )
    p.add_argument(
        "--to",
        required=True,
        choices=("rwkvkit", "blinkdl", "hf", "gguf"),
        help="target format: rwkvkit (one .safetensors with the config in its metadata), blinkdl "
        "(the official .pth), hf (a model directory: transformers for RWKV-4, the RWKV hub's layout "
        "for RWKV-5.2, fla for RWKV-6 and 7), gguf (llama.cpp's file, RWKV-6 and 7 only, in the "
        "layout of llama.cpp's own converter)",
    )
    p.add_argument(
        "--dtype",
        choices=DTYPES + GGUF_DTYPES,
        default=None,
        help="cast the weights to this dtype (default: keep each tensor's dtype and bits). --to gguf "
        "also takes q8_0 and q4_0 (llama.cpp's 8- and 4-bit blocks of 32) and applies the dtype to the "
        "large matrices only: norms, lerps, decay and LoRAs stay f32 as llama.cpp keeps them",
    )
    p.add_argument(
        "--tokenizer",
        default="auto",
        metavar="VOCAB",
        help="--to gguf only: the vocabulary the file carries for llama.cpp: auto (default: the RWKV "
        "World vocabulary of the `rwkv` package when the model has its size, 65536 ids; none "
        "otherwise), world, none (llama.cpp then takes token ids only), or the path of a World-format "
        ".txt vocabulary",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rwkvkit.formats import convert, describe, gguf

    if args.to != "gguf":
        if args.dtype in GGUF_DTYPES and args.dtype not in ("f32", "f16"):
            raise ConfigError(f"--dtype {args.dtype} is a GGUF type; use it with --to gguf")
        if args.tokenizer != "auto":
            raise ConfigError(
                f"--tokenizer applies to --to gguf only; the {args.to} format stores no vocabulary"
            )
    dtype = {"f32": "fp32", "f16": "fp16"}.get(args.dtype, args.dtype) if args.to != "gguf" else args.dtype
    tokenizer = None if args.tokenizer == "none" else args.tokenizer
    ckpt = convert(args.src, args.dst, args.to, dtype=dtype, tokenizer=tokenizer)
    written = describe(args.dst)
    cfg = ckpt.config
    stored = written["dtype"]
    if args.to == "gguf":
        vocab = gguf.read_vocab(args.dst)
        words = f"the World vocabulary ({len(vocab)} tokens)" if vocab else "no vocabulary (token ids only)"
        stored = f"{', '.join(written['dtypes'])}, {words}"
    print(
        f"wrote {args.dst}: {written['format']}, RWKV-{cfg.version}, {cfg.n_layer} layers, "
        f"{written['parameters']:,} parameters, {stored} (from {ckpt.description})"
    )
    return 0
