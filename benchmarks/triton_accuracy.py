"""Errors of the ``triton`` tiers (WKV-7, WKV-6) against the fp64 naive recurrence, per tensor.

Relative RMS ``||x - ref|| / ||ref||`` of the output, the final state and the gradient of every input
(the initial state included), for fp32 and bf16 inputs, next to the same figure for the fp32 naive
loop and the chunk tier. Without a GPU the kernels run in Triton's interpreter (small shapes, about a
minute); on CUDA they run compiled::

    python benchmarks/triton_accuracy.py [--T 64] [--decay bound|strong]
"""

from __future__ import annotations

import argparse
import math
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernels are first decorated

from rwkvkit.ops import wkv6, wkv7  # noqa: E402
from rwkvkit.utils.testing import rel_rms  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BOUND = math.exp(-0.5)


def inputs(op: str, B: int, T: int, H: int, K: int, decay: float, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    r, k = torch.randn(B, T, H, K, generator=g), 0.5 * torch.randn(B, T, H, K, generator=g)
    v = torch.randn(B, T, H, K, generator=g)
    log_w = -decay * torch.rand(B, T, H, K, generator=g)
    S0 = 0.3 * torch.randn(B, H, K, K, generator=g)
    if op == "wkv7":
        kk = torch.nn.functional.normalize(torch.randn(B, T, H, K, generator=g), dim=-1)
        extra = [-kk, kk * torch.rand(B, T, H, K, generator=g)]
        names = ["r", "log_w", "k", "v", "a", "b", "state"]
    else:
        extra = [0.5 * torch.randn(H, K, generator=g)]
        names = ["r", "log_w", "k", "v", "u", "state"]
    return [r, log_w, k, v, *extra, S0], names


def run(op: str, impl: str, xs: list[torch.Tensor], dtype: torch.dtype):
    fn = wkv7 if op == "wkv7" else wkv6
    leaves = [x.to(dtype).to(DEVICE).requires_grad_() for x in xs]
    leaves[-1] = xs[-1].to(torch.float64 if dtype == torch.float64 else torch.float32).to(DEVICE)
    leaves[-1].requires_grad_()
    opts = {"max_decay": BOUND} if op == "wkv7" and impl != "naive" else {}
    o, S = fn(*leaves, impl=impl, **opts)
    g = torch.Generator().manual_seed(1)
    go, gS = torch.randn(o.shape, generator=g).to(o), torch.randn(S.shape, generator=g).to(S)
    grads = torch.autograd.grad((o * go).sum() + (S * gS).sum(), leaves)
    return [o, S, *grads]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--T", type=int, default=64, help="sequence length (default 64)")
    ap.add_argument("--H", type=int, default=2, help="heads (default 2)")
    ap.add_argument("--K", type=int, default=32, help="head size (default 32)")
    ap.add_argument(
        "--decay",
        choices=("bound", "strong"),
        default="bound",
        help="log decays in [-exp(-0.5), 0] (RWKV-7's range; default) or in [-8, 0]",
    )
    args = ap.parse_args()
    decay = BOUND if args.decay == "bound" else 8.0
    how = "compiled" if DEVICE == "cuda" else "Triton interpreter"
    print(f"device {DEVICE} ({how}), B1 T{args.T} H{args.H} K{args.K}, |log_w| <= {decay:.3f}; relative RMS "
          "vs the fp64 naive recurrence (bf16 rows include rounding the inputs to bf16)")  # fmt: skip
    for op in ("wkv7", "wkv6"):
        if op == "wkv7" and args.decay == "strong":
            print("wkv7: --decay strong is outside RWKV-7's range; skipped")
            continue
        xs, names = inputs(op, 1, args.T, args.H, args.K, decay)
        ref = run(op, "naive", [x.double() for x in xs], torch.float64)
        cols = ["o", "state", *(f"d{n}" for n in names)]
        print(f"\n{op}\n| tier, inputs | " + " | ".join(cols) + " |\n" + "|---" * (len(cols) + 1) + "|")
        for impl, dtype in (("naive", torch.float32), ("chunk", torch.float32), ("triton", torch.float32),
                            ("triton", torch.bfloat16)):  # fmt: skip
            out = run(op, impl, xs, dtype)
            errs = " | ".join(f"{rel_rms(r, x):.1e}" for x, r in zip(out, ref))
            print(f"| {impl}, {str(dtype).removeprefix('torch.')} | {errs} |", flush=True)


if __name__ == "__main__":
    main()
