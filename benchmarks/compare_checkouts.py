"""Did a change make the model code slower? This checkout against another one, interleaved, in one run.

    git worktree add ../old <commit>
    python benchmarks/compare_checkouts.py --old ../old

Each round runs, for both checkouts (in separate processes, so each imports its own ``src/``), an
RWKV-7 training step (forward + backward, fp32, L4 C256, batch 4 x 256 tokens) and a decoding step
(one token, batch 1, the default-model shape) and keeps the best time of several repetitions. The
rounds alternate old / new so that a drift of the machine's speed hits both alike. Printed: the best
times and the ratio new / old per workload (1.00 = same speed; below 1 is faster).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

WORKER = r"""
import json, sys, time, torch
from rwkvkit.models.rwkv.config import RWKVConfig
from rwkvkit.models.rwkv.model import RWKV
from rwkvkit.training.init import official_init_

reps = int(sys.argv[1])
torch.manual_seed(0)
cfg = RWKVConfig(version="7", n_layer=4, n_embd=256, vocab_size=4096, head_size=64,
                 lora_w=32, lora_a=32, lora_v=32, lora_g=64)
model = official_init_(RWKV(cfg), seed=0)
x = torch.randint(0, 4096, (4, 256))

def train_step():
    logits, _ = model(x)
    logits.logsumexp(-1).mean().backward()

state = model.initial_state(1)
tok = torch.tensor([[1]])

def decode_step():
    with torch.no_grad():
        model(tok, state, full_output=False)

out = {}
for name, fn, n in (("train step", train_step, reps), ("decode step", decode_step, 20 * reps)):
    for _ in range(2):
        fn()
    best = float("inf")
    for _ in range(n):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    out[name] = best
print(json.dumps(out))
"""


def run(root: Path, reps: int) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=str(root / "src"))
    proc = subprocess.run(
        [sys.executable, "-c", WORKER, str(reps)], env=env, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise SystemExit(f"the worker failed in {root}:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", required=True, help="the other checkout (e.g. a git worktree of the old commit)")
    ap.add_argument("--new", default=str(Path(__file__).resolve().parents[1]), help="default: this checkout")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    ap.add_argument("--reps", type=int, default=5, help="timed training steps per round (default 5)")
    args = ap.parse_args()
    old, new = Path(args.old).resolve(), Path(args.new).resolve()
    for p in (old, new):
        if not (p / "src" / "rwkvkit").is_dir():
            raise SystemExit(f"{p} is not an rwkvkit checkout (no src/rwkvkit)")
    best: dict[str, dict[str, float]] = {"old": {}, "new": {}}
    for r in range(args.rounds):
        for label, root in (("old", old), ("new", new)):
            for name, t in run(root, args.reps).items():
                best[label][name] = min(best[label].get(name, float("inf")), t)
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    print(f"old: {old}\nnew: {new}  ({os.cpu_count()} CPUs, torch threads default)")
    print(f"{'workload':<12} {'old ms':>9} {'new ms':>9} {'new / old':>10}")
    for name in best["old"]:
        o, n = best["old"][name] * 1e3, best["new"][name] * 1e3
        print(f"{name:<12} {o:>9.2f} {n:>9.2f} {n / o:>10.3f}")


if __name__ == "__main__":
    main()
