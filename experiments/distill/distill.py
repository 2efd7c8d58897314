"""Distil the demonstration teacher into ARWKV students with rwkvkit.distill, at the token budget of
the from-scratch baseline (300 steps of 8 x 512 tokens = 1.23 M tokens):

    python experiments/distill/distill.py --arm stage12 --threads 1   # stage 1 (75 steps) + stage 2 (225)
    python experiments/distill/distill.py --arm stage2 --threads 1    # stage 2 only (300 steps)

Equivalent to `rwkvkit distill --teacher runs/distill/teacher --data runs/data/stdlib-bpe4096 ...` with
the fields below. One JSON line per evaluation to experiments/distill/results/<arm>.jsonl.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "vision"))
sys.path.insert(0, str(HERE.parent / "recall"))

from _common import command_line  # noqa: E402
from _train import log_command  # noqa: E402

STEPS = 300  # the budget of every student, as the from-scratch baseline (scratch.py)
ARMS = {
    "stage12": dict(stages="1,2", stage1_steps=75, stage2_steps=STEPS - 75),
    "stage2": dict(stages="2", stage2_steps=STEPS),
    "stage12-frozen-mlp": dict(stages="1,2", stage1_steps=75, stage2_steps=STEPS - 75, train_mlp=False),
}
COMMON = dict(ctx_len=512, batch_size=8, stage1_lr=1e-3, stage2_lr=5e-4, warmup_steps=20, eval_every=25,
              eval_tokens=65536, save_every=STEPS, precision="bf16", progress=False)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arm", required=True, choices=sorted(ARMS), help="which stage mix to run")
    ap.add_argument("--teacher", default="runs/distill/teacher", help="the teacher (teacher.py)")
    ap.add_argument("--data", default="runs/data/stdlib-bpe4096", help="prepared token data")
    ap.add_argument("--out-root", default="runs/distill", help="the student goes to OUT_ROOT/ARM")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    args = ap.parse_args()

    from rwkvkit.distill import DistillConfig, distill

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = DistillConfig(teacher=args.teacher, data=args.data, out_dir=f"{args.out_root}/{args.arm}",
                        threads=args.threads, **COMMON, **ARMS[args.arm])  # fmt: skip
    log_command(HERE / "results" / "commands.txt", command_line())
    result = distill(cfg)
    params = sum(
        p.numel() for p in __import__("rwkvkit").load(Path(cfg.out_dir) / "model.safetensors").parameters()
    )
    with (HERE / "results" / f"{args.arm}.jsonl").open("w") as f:
        for r in result.rows:
            if r.get("val_loss") is not None:
                f.write(json.dumps({"model": args.arm, "step": r["step"], "stage": r["stage"], "tokens": r["tokens"],
                                    "train_loss": r["train_loss"], "val_loss": r["val_loss"], "val_bpb": r["val_bpb"],
                                    "params": params, "seconds": r["elapsed_s"],
                                    "teacher_val_loss": result.teacher_val_loss}) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
