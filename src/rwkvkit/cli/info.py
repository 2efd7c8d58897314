"""``rwkvkit info PATH``: what a checkpoint holds (version, sizes, parameter count, dtype)."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser("info", help="show a checkpoint's version, sizes, parameter count and dtype")
    p.add_argument("path", help="checkpoint file (official BlinkDL .pth)")
    p.set_defaults(func=run)


def format_info(d: dict) -> str:
    cfg = d["config"]
    lines = [
        f"path:        {d['path']}",
        f"format:      {d['format']}",
        f"version:     RWKV-{cfg.version}",
        f"layers:      {cfg.n_layer}",
        f"embedding:   {cfg.n_embd} (heads {cfg.n_head} x head size {cfg.head_size})",
        f"ffn:         {cfg.dim_ffn}",
        f"vocabulary:  {cfg.vocab_size}",
    ]
    if cfg.version == "7":
        lines.append(
            f"LoRA ranks:  decay {cfg.lora_w}, iclr {cfg.lora_a}, value {cfg.lora_v}, gate {cfg.lora_g}"
        )
    lines += [
        f"parameters:  {d['parameters']:,} ({d['parameters'] / 1e6:.1f} M)",
        f"dtype:       {d['dtype']}" + (f" (also {', '.join(d['dtypes'])})" if len(d["dtypes"]) > 1 else ""),
        f"file size:   {d['file_bytes'] / 2**20:.1f} MiB",
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from rwkvkit.formats import describe

    print(format_info(describe(args.path)))
    return 0
