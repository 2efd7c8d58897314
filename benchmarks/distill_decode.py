"""Decoding cost against context length: a transformers teacher (KV cache) and its ARWKV student
(RWKV-7 state), in one script.

    python benchmarks/distill_decode.py --teacher runs/distill/teacher \
        --student runs/distill/stage12/model.safetensors --json experiments/distill/results/decode.json
    python benchmarks/distill_decode.py          # a random Qwen2 teacher of the demo's size and its student

For every context length L, each model runs in its own process: it reads a random L-token prompt
(the teacher in one call, building its KV cache; the student in chunks of 256 tokens carrying its
state, as ``rwkvkit.generate`` prefills), then decodes ``--decode`` tokens one at a time (greedy,
batch 1, fp32). Printed per model and L:
decode tokens/s, the bytes of the recurrent memory after the last token (the teacher's KV cache, the
student's state), the process's peak resident memory, and the ratios student / teacher; also the
machine's measured fp32 matrix-product peak and read bandwidth, the ceilings both models decode under.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from rwkvkit.utils.perf import peak_rss_mb

PREFILL_CHUNK = 256  # rwkvkit.generate's default prefill chunk


def _teacher(path: str | None):
    import torch

    if path:
        from rwkvkit.distill.teacher import load_teacher

        return load_teacher(path)
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=4096, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192,
                      tie_word_embeddings=False)  # fmt: skip
    return Qwen2ForCausalLM(cfg).eval()


def worker(kind: str, teacher_path: str | None, student_path: str | None, L: int, decode: int) -> dict:
    import torch

    torch.manual_seed(0)
    teacher = _teacher(teacher_path)
    V = teacher.config.vocab_size
    prompt = torch.randint(0, V, (1, L), generator=torch.Generator().manual_seed(L))
    with torch.no_grad():
        if kind == "teacher":
            from transformers import DynamicCache

            cache = DynamicCache(config=teacher.config)
            out = teacher(input_ids=prompt, past_key_values=cache, use_cache=True)
            tok = out.logits[:, -1:].argmax(-1)
            t0 = time.perf_counter()
            for _ in range(decode):
                out = teacher(input_ids=tok, past_key_values=cache, use_cache=True)
                tok = out.logits[:, -1:].argmax(-1)
            seconds = time.perf_counter() - t0
            memory = sum(t.nbytes for layer in cache.layers for t in (layer.keys, layer.values))
        else:
            if student_path:
                import rwkvkit

                student = rwkvkit.load(student_path, dtype=torch.float32).eval()
            else:
                from rwkvkit.models.arwkv import ARWKV

                student = ARWKV.from_transformers(teacher).eval()
            del teacher
            state = None
            for i in range(0, L, PREFILL_CHUNK):  # as rwkvkit.generate prefills: the state carries
                logits, state = student(prompt[:, i : i + PREFILL_CHUNK], state, full_output=False)
            tok = logits[:, -1:].argmax(-1)
            t0 = time.perf_counter()
            for _ in range(decode):
                logits, state = student(tok, state, full_output=False)
                tok = logits[:, -1:].argmax(-1)
            seconds = time.perf_counter() - t0
            memory = sum(state[name].nbytes for name in ("att_shift", "wkv"))  # ffn_shift: carried, unused
    return {"model": kind, "context": L, "decode_tok_s": decode / seconds, "memory_bytes": int(memory),
            "peak_rss_mb": peak_rss_mb()}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--teacher", default=None, help="transformers teacher directory (default: random demo-size)"
    )
    ap.add_argument(
        "--student", default=None, help="ARWKV .safetensors (default: a fresh student of the teacher)"
    )
    ap.add_argument("--contexts", default="128,512,1024,2048,4096", help="comma-separated prompt lengths")
    ap.add_argument("--decode", type=int, default=64, help="tokens decoded after each prompt")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per worker process")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--context", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(worker(args.worker, args.teacher, args.student, args.context, args.decode)))
        return

    from rwkvkit.utils.perf import matmul_peak, read_bandwidth

    contexts = [int(c) for c in args.contexts.split(",")]
    results = []
    for L in contexts:
        for kind in ("teacher", "student"):
            cmd = [sys.executable, __file__, "--worker", kind, "--context", str(L),
                   "--decode", str(args.decode), "--threads", str(args.threads)]  # fmt: skip
            cmd += ["--teacher", args.teacher] if args.teacher else []
            cmd += ["--student", args.student] if args.student else []
            env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
            if proc.returncode:
                sys.exit(f"worker {kind} L={L} failed:\n{proc.stderr[-3000:]}")
            results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            r = results[-1]
            print(f"{kind:8s} L={L:6d}: {r['decode_tok_s']:8.1f} tok/s, "
                  f"memory {r['memory_bytes'] / 2**20:8.2f} MiB, peak RSS {r['peak_rss_mb']:7.1f} MB",
                  flush=True)  # fmt: skip
    fp32_peak = matmul_peak(torch.float32, seconds=0.3)
    bandwidth = read_bandwidth()
    print(f"\nmachine ({args.threads} thread(s)): fp32 matmul peak {fp32_peak / 1e9:.0f} GFLOP/s, "
          f"read bandwidth {bandwidth / 1e9:.1f} GB/s")  # fmt: skip
    print(f"{'context':>8} {'tok/s student/teacher':>22} {'memory teacher/student':>23}")
    by = {(r["model"], r["context"]): r for r in results}
    for L in contexts:
        t, s = by["teacher", L], by["student", L]
        speed, memory = s["decode_tok_s"] / t["decode_tok_s"], t["memory_bytes"] / s["memory_bytes"]
        print(f"{L:8d} {speed:22.2f} {memory:23.2f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        record = {"results": results, "threads": args.threads, "fp32_matmul_peak_flops": fp32_peak,
                  "read_bandwidth_bytes_s": bandwidth}  # fmt: skip
        Path(args.json).write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
