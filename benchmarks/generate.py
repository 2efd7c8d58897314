"""Inference speed and memory on CPU: rwkvkit against the official ``rwkv`` package, in one script.

    python benchmarks/generate.py                      # a random official-format RWKV-7 0.1B checkpoint
    python benchmarks/generate.py --model PATH.pth     # any checkpoint, any version

Every configuration runs in its own process (so peak memory is its own): the official package with
strategies ``cpu fp32`` and ``cpu bf16``, and rwkvkit's fast path loaded straight from the file
(``rwkvkit.load(path, weights=...)``) with fp32, bf16, int8 and 4-bit weights, plus the README's first
example (``rwkvkit.load(path, dtype="bf16")`` run by ``generate`` through its inference twin), whose
speed is compared with the bf16 mode's (target: within 5 %). Printed: decode tokens/s at batch 1,
prefill tokens/s for a 1024-token prompt, aggregate decode tokens/s at batch 1/8/32/64 (rwkvkit),
peak resident memory, memory after 1 k and after 100 k tokens of context, the machine's measured
read bandwidth and bf16 matrix-product peak, and the ratios: rwkvkit / official fp32, and rwkvkit as
a percentage of its bound (decode: bandwidth / bytes of weights read per token; prefill: bf16 peak /
FLOPs per token).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from rwkvkit.utils.perf import peak_rss_mb, rss_mb, weight_bytes_read

# ---- workers (each in its own process) ----------------------------------------------------------


def official_worker(ckpt: str, strategy: str, prefill: int, decode: int) -> dict:
    import torch
    from rwkv.model import RWKV  # the environment (RWKV_V7_ON) was set by the parent

    name = ckpt[:-4] if ckpt.endswith(".pth") else ckpt
    model = RWKV(name, strategy)
    g = torch.Generator().manual_seed(0)
    vocab = model.w["emb.weight"].shape[0] if hasattr(model, "w") else model.z["emb.weight"].shape[0]
    prompt = torch.randint(0, vocab, (prefill,), generator=g).tolist()
    with torch.no_grad():
        model.forward(prompt[:16], None)  # warm-up (JIT)
        t0 = time.perf_counter()
        out, state = model.forward(prompt, None)
        t_prefill = time.perf_counter() - t0
        tok = int(out.argmax())
        for _ in range(3):
            out, state = model.forward([tok], state)
        t0 = time.perf_counter()
        for _ in range(decode):
            out, state = model.forward([tok], state)
            tok = int(out.argmax())
        t_decode = time.perf_counter() - t0
    return {
        "prefill_tok_s": prefill / t_prefill,
        "decode_tok_s": decode / t_decode,
        "peak_rss_mb": peak_rss_mb(),
    }


def rwkvkit_worker(
    ckpt: str, weights: str, prefill: int, decode: int, batches: list[int], long_ctx: int, head: str = ""
) -> dict:
    import torch

    import rwkvkit
    from rwkvkit.generation import generate_tokens
    from rwkvkit.inference.auto import fast_view

    if weights.startswith("readme-"):
        # the README's first example: load(path, dtype=...) then generate, which runs this twin
        model = fast_view(rwkvkit.load(ckpt, dtype=weights.removeprefix("readme-")))
    else:
        # lean loading straight into the fast path; head: q4's output-head precision (None: default)
        model = rwkvkit.load(ckpt, weights=weights, head=head or None if weights == "q4" else None)
    V = model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, V, (1, prefill), generator=g)
    res: dict = {}
    with torch.inference_mode():
        model(prompt[:, :16])  # warm-up (kernel build, thread pool)
        t0 = time.perf_counter()
        logits, state = model(prompt, full_output=False)  # like the official forward's default
        res["prefill_tok_s"] = prefill / (time.perf_counter() - t0)
        tok = logits[:, -1].argmax(-1, keepdim=True)
        for _ in range(3):
            logits, state = model(tok, state)
        t0 = time.perf_counter()
        for _ in range(decode):
            logits, state = model(tok, state)
            tok = logits[:, -1].argmax(-1, keepdim=True)
        res["decode_tok_s"] = decode / (time.perf_counter() - t0)
        # through generate_tokens (greedy sampling included), as a user's generate call runs
        stream = generate_tokens(model, prompt[0, -8:].tolist(), max_new_tokens=decode + 4, temperature=0)
        for _ in range(4):
            next(stream)
        t0 = time.perf_counter()
        n = sum(1 for _ in stream)
        res["generate_tok_s"] = n / (time.perf_counter() - t0)
        res["batch_tok_s"] = {}
        for B in batches:
            _, st = model(torch.randint(0, V, (B, 8), generator=g), full_output=False)
            tok = torch.randint(0, V, (B, 1), generator=g)
            model(tok, st)
            steps = max(4, decode // max(1, B // 4))
            t0 = time.perf_counter()
            for _ in range(steps):
                logits, st = model(tok, st)
                tok = logits[:, -1].argmax(-1, keepdim=True)
            res["batch_tok_s"][B] = B * steps / (time.perf_counter() - t0)
        res["peak_rss_mb"] = peak_rss_mb()
        if long_ctx:
            # memory while decoding after 1 k and after long_ctx tokens of context (chunked prefill)
            chunk = 1024  # the same prefill calls as for the 1 k context: same temporaries
            ids = torch.randint(0, V, (1, long_ctx), generator=g)
            _, st = model(ids[:, :1024], full_output=False)
            for _ in range(8):
                logits, st = model(ids[:, :1], st)
            res["rss_ctx_1k_mb"] = rss_mb()
            t0 = time.perf_counter()
            for start in range(1024, long_ctx, chunk):
                _, st = model(ids[:, start : start + chunk], st, full_output=False)
            res["long_prefill_s"] = time.perf_counter() - t0
            for _ in range(8):
                logits, st = model(ids[:, :1], st)
            res["rss_ctx_long_mb"] = rss_mb()
            res["state_mb"] = sum(t.numel() * t.element_size() for t in st.tensors.values()) / 2**20
    res["weight_bytes_per_token"] = weight_bytes_read(model)
    res["matmul_flops_per_token"] = prefill_flops_per_token(model)
    res["config"] = str(model.config)
    return res


def prefill_flops_per_token(model) -> float:
    """Matrix-product FLOPs per prompt token: 2 x the projection weights of the blocks (the output head
    runs once per prompt, for its last token, and the WKV recurrence adds ~1 %: both left out)."""
    seen, n = set(), 0
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if not name.startswith("blocks.") or t.data_ptr() in seen:
            continue
        if name.endswith("qweight"):  # Q4Linear's codes: two weights per byte
            n += 2 * t.numel()
        elif t.dim() == 2:
            n += t.numel()
        else:
            continue
        seen.add(t.data_ptr())
    return 2.0 * n


# ---- driver ---------------------------------------------------------------------------------------


def run_worker(args: list[str], env: dict | None = None) -> dict:
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--model",
        default="runs/bench/rwkv7-0.1b-random.pth",
        help="checkpoint (if missing: created, random, official format, RWKV-7 0.1B shape)",
    )
    p.add_argument("--prefill", type=int, default=1024, help="prompt length for prefill (default 1024)")
    p.add_argument("--decode", type=int, default=64, help="decoded tokens per measurement (default 64)")
    p.add_argument(
        "--batches", type=int, nargs="+", default=[1, 8, 32, 64], help="batch sizes for aggregate decode"
    )
    p.add_argument(
        "--weights",
        nargs="+",
        default=["fp32", "bf16", "int8", "q4", "readme-bf16"],
        help="rwkvkit configurations: fp32/bf16/int8/q4 load straight into the fast path "
        "(rwkvkit.load(path, weights=...)); readme-bf16 / readme-fp32 are the README's first example "
        "(rwkvkit.load(path, dtype=...) run by generate through its inference twin)",
    )
    p.add_argument("--head", default="", help="q4 runs: the output head's precision (default: load's, int8)")
    p.add_argument("--long-context", type=int, default=100_000, help="tokens for the memory test (0: skip)")
    p.add_argument("--skip-official", action="store_true", help="do not run the official package")
    p.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.worker:
        kind, *rest = args.worker
        if kind == "official":
            out = official_worker(rest[0], rest[1], int(rest[2]), int(rest[3]))
        else:
            out = rwkvkit_worker(
                rest[0], rest[1], int(rest[2]), int(rest[3]), json.loads(rest[4]), int(rest[5]), rest[6]
            )
        print(json.dumps(out))
        return

    import torch

    from rwkvkit.formats import describe
    from rwkvkit.utils.perf import machine_ceilings

    ckpt = Path(args.model)
    if not ckpt.exists():
        from rwkvkit.models.rwkv.config import RWKVConfig
        from rwkvkit.models.rwkv.init import random_checkpoint

        print(f"creating a random official-format checkpoint of the RWKV-7 0.1B shape at {ckpt}", flush=True)
        random_checkpoint(RWKVConfig.from_name("rwkv7-0.1b"), ckpt, seed=0, dtype=torch.bfloat16)
    info = describe(ckpt)
    version = info["config"].version
    # ceilings: the best of a measurement before and one after the runs (the machine may be shared;
    # the higher ceiling is the stricter bound for the "% of bound" columns)
    bw, peak = machine_ceilings()
    print(f"checkpoint: {ckpt} (RWKV-{version}, {info['parameters'] / 1e6:.1f} M parameters)")
    print(f"machine: {os.cpu_count()} CPUs, read bandwidth {bw / 1e9:.1f} GB/s, bf16 matmul peak "
          f"{peak / 1e9:.0f} GFLOP/s (measured now)")  # fmt: skip

    rows = {}
    if not args.skip_official:
        env = dict(os.environ, RWKV_JIT_ON="1", RWKV_CUDA_ON="0")
        env.pop("RWKV_V7_ON", None)
        if version == "7":
            env["RWKV_V7_ON"] = "1"
        for strategy in ("cpu fp32", "cpu bf16"):
            print(f"running official {strategy} ...", flush=True)
            rows[f"official {strategy.split()[1]}"] = run_worker(
                ["--worker", "official", str(ckpt), strategy, str(args.prefill), str(args.decode)], env
            )
    for w in args.weights:
        print(f"running rwkvkit {w} ...", flush=True)
        long_ctx = args.long_context if w == args.weights[0] or w == "bf16" else 0
        try:
            rows[f"rwkvkit {w}"] = run_worker(
                ["--worker", "rwkvkit", str(ckpt), w, str(args.prefill), str(args.decode),
                 json.dumps(args.batches), str(long_ctx), args.head]
            )  # fmt: skip
        except RuntimeError as e:  # e.g. a precision this build cannot run: say why, go on
            print(f"  rwkvkit {w} failed: {str(e).strip().splitlines()[-1]}")

    bw_before, peak_before = bw, peak
    bw_after, peak_after = machine_ceilings()
    bw, peak = max(bw, bw_after), max(peak, peak_after)
    print(f"\nceilings used: read bandwidth {bw / 1e9:.1f} GB/s (before {bw_before / 1e9:.1f}), bf16 matmul "
          f"peak {peak / 1e9:.0f} GFLOP/s (before {peak_before / 1e9:.0f}); decode bound = bandwidth / "
          "bytes of weights read per token, prefill bound = peak / matrix FLOPs per token")  # fmt: skip
    ref = rows.get("official fp32")
    print()
    print(f"{'configuration':18} {'decode tok/s':>12} {'x off.fp32':>10} {'% bound':>8} "
          f"{'prefill tok/s':>13} {'x off.fp32':>10} {'% bound':>8} {'peak RSS MB':>11} "
          f"{'generate tok/s':>14}")  # fmt: skip
    for name, r in rows.items():
        dec, pre = r["decode_tok_s"], r["prefill_tok_s"]
        xd = f"{dec / ref['decode_tok_s']:.2f}" if ref else "-"
        xp = f"{pre / ref['prefill_tok_s']:.2f}" if ref else "-"
        bd = f"{100 * dec * r['weight_bytes_per_token'] / bw:.0f}%" if "weight_bytes_per_token" in r else "-"
        bp = (
            f"{100 * pre * r['matmul_flops_per_token'] / peak:.0f}%" if "matmul_flops_per_token" in r else "-"
        )
        gen = f"{r['generate_tok_s']:14.1f}" if "generate_tok_s" in r else f"{'-':>14}"
        print(f"{name:18} {dec:12.1f} {xd:>10} {bd:>8} {pre:13.0f} {xp:>10} {bp:>8} "
              f"{r['peak_rss_mb']:11.0f} {gen}")  # fmt: skip
    print()
    for name, r in rows.items():
        if name.startswith("rwkvkit readme-") and f"rwkvkit {name[15:]}" in rows:
            best = rows[f"rwkvkit {name[15:]}"]
            ratio_gen = r["generate_tok_s"] / best["generate_tok_s"]
            ratio_dec = r["decode_tok_s"] / best["decode_tok_s"]
            met = "met" if min(ratio_gen, ratio_dec) >= 0.95 else "missed"
            print(
                f"README path ({name[8:]}) / rwkvkit {name[15:]} loaded for inference: generate "
                f"{ratio_gen:.3f}x, decode {ratio_dec:.3f}x (target >= 0.95: {met})"
            )
    print()
    for name, r in rows.items():
        if "weight_bytes_per_token" in r:
            nbytes, flops = r["weight_bytes_per_token"], r["matmul_flops_per_token"]
            print(f"{name}: reads {nbytes / 1e6:.0f} MB of weights per decoded token -> decode bound "
                  f"{bw / nbytes:.0f} tok/s; {flops / 1e9:.2f} GFLOP per prompt token -> prefill bound "
                  f"{peak / flops:.0f} tok/s")  # fmt: skip
    print()
    print("aggregate decode tokens/s by batch size (rwkvkit, greedy, one forward per step):")
    for name, r in rows.items():
        if "batch_tok_s" in r:
            b = r["batch_tok_s"]
            first = b[str(args.batches[0])]
            cells = "  ".join(f"B={k}: {v:7.0f} ({v / first:4.1f}x)" for k, v in b.items())
            print(f"  {name:14} {cells}")
    print()
    for name, r in rows.items():
        if "rss_ctx_long_mb" in r:
            ratio = r["rss_ctx_long_mb"] / r["rss_ctx_1k_mb"]
            print(
                f"{name}: memory while decoding at 1 k context {r['rss_ctx_1k_mb']:.0f} MB, at "
                f"{args.long_context // 1000} k context {r['rss_ctx_long_mb']:.0f} MB "
                f"({100 * (ratio - 1):+.1f}%); state {r['state_mb']:.2f} MB; "
                f"{args.long_context} tokens prefilled in {r['long_prefill_s']:.0f} s"
            )


if __name__ == "__main__":
    main()
