"""Train the demonstration teacher: a small Qwen2 (transformers' Qwen2ForCausalLM, random init) on the
standard-library corpus of rwkvkit's default model (`runs/data/stdlib-bpe4096`, BPE-4096).

    python experiments/distill/teacher.py --out runs/distill/teacher --steps 800 --threads 1

Uses rwkvkit's data pipeline, optimiser groups, schedule and evaluation (the same validation windows
as every other model in experiments/distill). Writes the teacher with save_pretrained (safetensors),
and one JSON line per evaluation to experiments/distill/results/teacher.jsonl.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "vision"))
sys.path.insert(0, str(HERE.parent / "recall"))

from _common import command_line, machine  # noqa: E402
from _train import log_command  # noqa: E402

# the teacher: 4 layers of width 256, 4 query heads of 64 sharing 2 key/value heads (Qwen2's GQA),
# SwiGLU 768, untied head. 5.25 M parameters.
TEACHER = dict(vocab_size=4096, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
               tie_word_embeddings=False, rms_norm_eps=1e-6, rope_theta=10000.0)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--data", default="runs/data/stdlib-bpe4096", help="prepared token data (rwkvkit data prepare)"
    )
    ap.add_argument("--out", default="runs/distill/teacher", help="output directory of the teacher")
    ap.add_argument("--steps", type=int, default=800, help="optimiser steps (8 x 512 tokens each)")
    ap.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (cosine to lr/10)")
    ap.add_argument("--eval-every", type=int, default=100, help="steps between validation passes")
    ap.add_argument("--eval-tokens", type=int, default=65536, help="validation tokens per pass")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    ap.add_argument("--seed", type=int, default=0, help="initialisation and data order")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from transformers import Qwen2Config, Qwen2ForCausalLM

    from rwkvkit.data import WindowSampler, open_tokens
    from rwkvkit.distill.teacher import TeacherLM
    from rwkvkit.training.config import TrainConfig
    from rwkvkit.training.loop import evaluate
    from rwkvkit.training.optim import build_optimizer, lr_schedule, set_lr

    cfg = TrainConfig(data=args.data, ctx_len=512, batch_size=8, max_steps=args.steps, lr=args.lr,
                      lr_final=args.lr / 10, warmup_steps=50, eval_tokens=args.eval_tokens)  # fmt: skip
    train, val = open_tokens(args.data, split="train"), open_tokens(args.data, split="val")
    bytes_table = torch.as_tensor(train.token_bytes_table(), dtype=torch.long)
    torch.manual_seed(args.seed)
    hf = Qwen2ForCausalLM(Qwen2Config(**TEACHER, attn_implementation="sdpa"))
    model = TeacherLM(hf).train()
    n_params = sum(p.numel() for p in hf.parameters())
    opt = build_optimizer(hf, lr=cfg.lr, weight_decay=0.01, betas=(0.9, 0.99))
    sampler = WindowSampler(train.tokens, cfg.ctx_len, seed=args.seed)
    results = HERE / "results" / "teacher.jsonl"
    results.parent.mkdir(exist_ok=True)
    results.write_text("")
    log_command(HERE / "results" / "commands.txt", command_line())
    t0 = time.perf_counter()
    for step in range(1, args.steps + 1):
        set_lr(opt, lr_schedule(step - 1, lr=cfg.lr, lr_final=cfg.lr_final, warmup_steps=cfg.warmup_steps,
                                total_steps=cfg.max_steps))  # fmt: skip
        batch = sampler.next_batch(cfg.batch_size)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits, _ = model(batch[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % 10 == 0:
            print(
                f"step {step}/{args.steps} loss {loss.item():.4f} {time.perf_counter() - t0:.0f}s", flush=True
            )
        if step % args.eval_every == 0 or step == args.steps:
            val_loss, val_bpb = evaluate(model, val, cfg, bytes_table, "cpu")
            row = {"model": "teacher", "step": step, "tokens": step * 8 * 512, "train_loss": loss.item(),
                   "val_loss": val_loss, "val_bpb": val_bpb, "params": n_params,
                   "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip
            with results.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"  val loss {val_loss:.4f} ({val_bpb:.4f} bits/byte)", flush=True)
            hf.save_pretrained(args.out, safe_serialization=True)
    (Path(args.out) / "machine.txt").write_text(machine() + "\n")


if __name__ == "__main__":
    main()
