"""``rwkvkit info PATH``: what a checkpoint holds (format, version, sizes, parameter count, dtype)."""

from __future__ import annotations

import argparse
import math

from rwkvkit.formats import describe, native, verify


def add_parser(sub) -> None:
    p = sub.add_parser(
        "info",
        help="show a checkpoint's format, version, sizes, parameter count and dtype",
        description="Read a checkpoint of any supported format, check it and describe it (builds no model).",
    )
    p.add_argument(
        "path",
        help="an official (BlinkDL) .pth, an rwkvkit .safetensors (RWKV or ARWKV), or an HF model "
        "directory (transformers RWKV-4, RWKV hub RWKV-5.2/6, fla RWKV-6/7)",
    )
    p.add_argument(
        "--verify",
        action="store_true",
        help="also check the file's bytes against its checksums (rwkvkit's files: a digest per tensor; "
        "the official .pth zip: CRC32 per record) and say what was checked; a corrupt file is an error",
    )
    p.set_defaults(func=run)


def format_info(d: dict) -> str:
    cfg = d["config"]
    spec = cfg.spec
    if not spec.has_heads:
        width = f"{cfg.n_embd} (no heads; attention width {cfg.dim_att})"
    else:
        width = f"{cfg.n_embd} (heads {cfg.n_head} x head size {cfg.head_size})"
        if cfg.dim_att != cfg.n_embd:
            width += f", attention width {cfg.dim_att}"
    lines = [
        f"path:        {d['path']}",
        f"format:      {d['format']}",
        f"version:     RWKV-{cfg.version}",
        f"layers:      {cfg.n_layer}",
        f"embedding:   {width}",
        f"ffn:         {cfg.dim_ffn}",
        f"vocabulary:  {cfg.vocab_size}",
    ]
    if spec.lora_fields:
        ranks = ", ".join(
            f"{label} {getattr(cfg, f)}" for f, label in zip(spec.lora_fields, spec.lora_labels)
        )
        lines.append(f"LoRA ranks:  {ranks}")
    if spec.log_bonus:
        lines.append(f"bonus:       {'time_first (log u)' if cfg.v5_log_bonus else 'time_faaaa (u)'}")
    lines += [
        f"parameters:  {d['parameters']:,} ({d['parameters'] / 1e6:.1f} M)",
        f"dtype:       {d['dtype']}" + (f" (also {', '.join(d['dtypes'])})" if len(d["dtypes"]) > 1 else ""),
        f"file size:   {d['file_bytes'] / 2**20:.1f} MiB",
    ]
    if d.get("source"):
        lines.append(f"key map:     {d['source']}")
    return "\n".join(lines)


def family_info(path) -> str | None:
    """The description of an rwkvkit file of another model family (ARWKV), from its header only;
    None for anything else."""
    from pathlib import Path

    from safetensors import safe_open

    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0 or not native.looks_like_safetensors(path):
        return None
    meta = native.read_metadata(path)
    family = native.family_of(meta, path)
    if family is None:
        return None
    cfg = native.family_config(meta, path)
    with safe_open(str(path), "pt") as f:
        shapes = {k: f.get_slice(k).get_shape() for k in f.keys()}
        dtypes = sorted({str(f.get_slice(k).get_dtype()) for k in f.keys()})
    n = sum(math.prod(s) for s in shapes.values())
    tied = " (head tied to the embedding)" if cfg.get("tie_embeddings") else ""
    parts = [f"gate {'on' if cfg.get('gate', True) else 'off'}",
             f"group norm {'on' if cfg.get('group_norm', True) else 'off'}"]  # fmt: skip
    return "\n".join([
        f"path:        {path}",
        "format:      rwkvkit safetensors",
        f"model:       {family.upper()} (a transformer with RWKV-7 time mixing; RMSNorm, SwiGLU MLP)",
        f"layers:      {cfg['n_layer']}",
        f"embedding:   {cfg['n_embd']} (RWKV-7 heads {cfg['n_embd'] // cfg['head_size']} x head size "
        f"{cfg['head_size']}; {', '.join(parts)})",
        f"mlp:         {cfg['intermediate_size']} (SwiGLU)",
        f"vocabulary:  {cfg['vocab_size']}{tied}",
        f"parameters:  {n:,} ({n / 1e6:.1f} M)",
        f"dtype:       {', '.join(dtypes)}",
        f"file size:   {path.stat().st_size / 2**20:.1f} MiB",
    ])  # fmt: skip


def integrity_lines(path) -> list[str]:
    """``integrity:`` lines for every file of a checkpoint (raises CheckpointError if one is corrupt)."""

    results = verify(path)
    prefix = ["integrity:   "] + ["             "] * (len(results) - 1)
    return [p + r.describe() for p, r in zip(prefix, results)]


def run(args: argparse.Namespace) -> int:

    text = family_info(args.path)
    print(text if text is not None else format_info(describe(args.path, verify=False)))
    if args.verify:
        print("\n".join(integrity_lines(args.path)))
    return 0
