"""The from-scratch baseline: an RWKV-7 of the student's size (4 layers, width 256, feed-forward 1152:
5.84 M parameters, as the ARWKV student) trained by rwkvkit's trainer on the same data, windows and
token budget as the distilled students.

    python experiments/distill/scratch.py --steps 300 --threads 1

One JSON line per evaluation to experiments/distill/results/scratch.jsonl.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "vision"))
sys.path.insert(0, str(HERE.parent / "recall"))

from _common import command_line  # noqa: E402
from _train import log_command  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="runs/data/stdlib-bpe4096", help="prepared token data")
    ap.add_argument("--out", default="", help="output directory (default runs/distill/scratch[-STEPS])")
    ap.add_argument("--steps", type=int, default=300, help="optimiser steps (8 x 512 tokens each)")
    ap.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (cosine to lr/10)")
    ap.add_argument("--eval-every", type=int, default=25, help="steps between validation passes")
    ap.add_argument("--eval-tokens", type=int, default=65536, help="validation tokens per pass")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    ap.add_argument("--seed", type=int, default=0, help="initialisation and data order")
    args = ap.parse_args()

    import logging

    import rwkvkit
    from rwkvkit.training.config import TrainConfig
    from rwkvkit.training.loop import train

    suffix = ("" if args.steps == 300 else f"-{args.steps}") + (f"-s{args.seed}" if args.seed else "")
    args.out = args.out or f"runs/distill/scratch{suffix}"
    cfg = TrainConfig(data=args.data, out_dir=args.out, version="7", n_layer=4, n_embd=256, dim_ffn=1152,
                      ctx_len=512, batch_size=8, max_steps=args.steps, lr=args.lr, lr_final=args.lr / 10,
                      warmup_steps=30, eval_every=args.eval_every, eval_tokens=args.eval_tokens,
                      save_every=args.steps, threads=args.threads, seed=args.seed, progress=False)  # fmt: skip
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    log_command(HERE / "results" / "commands.txt", command_line())
    train(cfg)
    params = rwkvkit.load(Path(args.out) / "model.safetensors").num_params()
    rows = [r for r in csv.DictReader(open(Path(args.out) / "loss.csv")) if r["val_loss"]]
    name = f"scratch{suffix}"
    with (HERE / "results" / f"{name}.jsonl").open("w") as f:
        for r in rows:
            f.write(json.dumps({"model": name, "step": int(r["step"]), "tokens": int(r["tokens"]),
                                "train_loss": float(r["train_loss"]), "val_loss": float(r["val_loss"]),
                                "val_bpb": float(r["val_bpb"]), "params": params,
                                "seconds": float(r["elapsed_s"])}) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
