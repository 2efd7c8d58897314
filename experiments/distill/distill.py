"""Distil the demonstration teacher into ARWKV students with rwkvkit.distill, at the token budget of
the from-scratch baseline (300 steps of 8 x 512 tokens = 1.23 M tokens):

    python experiments/distill/distill.py --arm stage12 --threads 1   # stage 1 (75 steps) + stage 2 (225)
    python experiments/distill/distill.py --arm stage2 --threads 1    # stage 2 only (300 steps)
    python experiments/distill/distill.py --arm stage12 --steps 100   # a smaller budget (25 + 75)

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

STEPS = 300  # the budget of every student, as the from-scratch baseline (scratch.py); --steps changes it


def arms(steps: int) -> dict[str, dict]:
    """The stage mixes at a budget of ``steps`` optimiser steps (stage 1 takes a quarter)."""
    return {
        "stage12": dict(stages="1,2", stage1_steps=steps // 4, stage2_steps=steps - steps // 4),
        "stage2": dict(stages="2", stage2_steps=steps),
        "stage12-frozen-mlp": dict(stages="1,2", stage1_steps=steps // 4, stage2_steps=steps - steps // 4,
                                   train_mlp=False),
        **ARMS,
    }  # fmt: skip


ARMS = {
    # stage 3 on the finished stages 1+2 student: SFT on instruction data made by sft_data.py
    "stage3": dict(
        stages="3",
        student="runs/distill/stage12/model.safetensors",
        sft_data="runs/distill/sft.jsonl",
        stage3_steps=60,
        stage3_lr=3e-4,
        warmup_steps=5,
        eval_every=20,
    ),
}
COMMON = dict(ctx_len=512, batch_size=8, stage1_lr=1e-3, stage2_lr=5e-4, warmup_steps=20, eval_every=25,
              eval_tokens=65536, save_every=STEPS, precision="bf16", progress=False)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arm", required=True, choices=sorted(arms(STEPS)), help="which stage mix to run")
    ap.add_argument("--steps", type=int, default=STEPS, help="the token budget in steps of 8 x 512 tokens")
    ap.add_argument("--teacher", default="runs/distill/teacher", help="the teacher (teacher.py)")
    ap.add_argument("--data", default="runs/data/stdlib-bpe4096", help="prepared token data")
    ap.add_argument("--out-root", default="runs/distill", help="the student goes to OUT_ROOT/ARM")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    ap.add_argument("--seed", type=int, default=0, help="the student's time-mix init and data order")
    args = ap.parse_args()

    from rwkvkit.distill import DistillConfig, distill

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    name = (args.arm if args.steps == STEPS else f"{args.arm}-{args.steps}") + (
        f"-s{args.seed}" if args.seed else ""
    )
    cfg = DistillConfig(teacher=args.teacher, data=args.data, out_dir=f"{args.out_root}/{name}",
                        threads=args.threads, seed=args.seed, **{**COMMON, "save_every": args.steps,
                                                 **arms(args.steps)[args.arm]})  # fmt: skip
    log_command(HERE / "results" / "commands.txt", command_line())
    start = []
    if cfg.stage_list == [3]:  # the answer loss of the student before stage 3, on the held-out examples
        import rwkvkit
        from rwkvkit.data import open_tokens
        from rwkvkit.distill.recipe import SFTData, answer_loss

        if args.threads:
            __import__("torch").set_num_threads(args.threads)
        sft = SFTData(
            cfg.sft_data, open_tokens(cfg.data, split="train").tokenizer, cfg.ctx_len, seed=cfg.seed
        )
        before = answer_loss(rwkvkit.load(cfg.student, dtype=__import__("torch").float32), sft, cfg, "cpu")
        start = [
            {
                "model": args.arm,
                "step": 0,
                "stage": 3,
                "stage_step": 0,
                "tokens": 0,
                "val_answer_loss": before,
            }
        ]
    result = distill(cfg)
    params = sum(
        p.numel() for p in __import__("rwkvkit").load(Path(cfg.out_dir) / "model.safetensors").parameters()
    )
    with (HERE / "results" / f"{name}.jsonl").open("w") as f:
        for r in start:
            f.write(json.dumps(r) + "\n")
        for r in result.rows:
            if r.get("val_loss") is not None:
                keep = (
                    "step",
                    "stage",
                    "stage_step",
                    "tokens",
                    "train_loss",
                    "val_loss",
                    "val_bpb",
                    "val_answer_loss",
                )
                f.write(json.dumps({"model": name, **{k: r[k] for k in keep if k in r}, "params": params,
                                    "seconds": r["elapsed_s"], "teacher_val_loss": result.teacher_val_loss}) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
