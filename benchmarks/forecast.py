"""Forecast latency: Rimer (RWKV-7, recurrent rollout) against Timer (attention, sliding window).

    python benchmarks/forecast.py [--lookback 512] [--d-model 64] [--n-layers 3]

Both models have the sizes of ``experiments/timeseries/standard.py`` (patch 16, 7 variables) and
random weights (speed does not depend on them). For each horizon the script times ``forecast`` for
one window (batch 1: an interactive forecast) and for 256 windows (a batch job), median of 5, and
prints Timer / Rimer ratios, Rimer's cost per generated patch, the FLOP rate each reaches and the
machine's fp32 matrix-product peak measured in the same run (the ceiling for these small, dense
models). Rimer is timed twice: with the fused C++ RWKV-7 block for the generated patches (the
default for up to 16 series, :mod:`rwkvkit.inference.fused`) and with the PyTorch modules only.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch


def median_seconds(fn, repeats: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def block_params(model) -> int:
    return sum(p.numel() for p in model.blocks.parameters())


def main() -> None:
    from rwkvkit.inference import fused
    from rwkvkit.timeseries import Rimer, RimerConfig, Timer, TimerConfig
    from rwkvkit.utils.perf import matmul_peak

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lookback", type=int, default=512, help="input steps (default 512)")
    p.add_argument("--d-model", type=int, default=64, help="width (default 64)")
    p.add_argument("--n-layers", type=int, default=3, help="depth (default 3)")
    p.add_argument("--horizons", type=int, nargs="+", default=[96, 192, 336, 720], help="forecast lengths")
    p.add_argument("--batch", type=int, default=256, help="windows of the batch measurement (default 256)")
    args = p.parse_args()

    L, M, P = args.lookback, 7, 16
    common = dict(lookback=L, d_model=args.d_model, n_layers=args.n_layers, dropout=0.0, patch_len=P)
    rimer, timer = Rimer(RimerConfig(**common)).eval(), Timer(TimerConfig(**common)).eval()
    peak = max(matmul_peak(torch.float32, n=n, seconds=0.5) for n in (256, 1024))
    built = "built" if fused.available() else "NOT available (module fallback)"
    print(f"machine: {os.cpu_count()} CPUs, fp32 matmul peak {peak / 1e9:.0f} GFLOP/s (measured now); "
          f"fused RWKV-7 block {built}")  # fmt: skip
    print(f"look-back {L} ({L // P} patches of {P}), d_model {args.d_model}, {args.n_layers} layers, "
          f"{M} variables; block parameters: Rimer {block_params(rimer):,}, "
          f"Timer {block_params(timer):,}\n")  # fmt: skip
    head = f"{'batch':>5} {'horizon':>7} | {'Rimer ms':>9} {'Rimer(mod) ms':>13} {'Timer ms':>9} | "
    print(head + f"{'Timer/Rimer':>11} | {'Rimer GFLOP/s':>13} {'Timer GFLOP/s':>13}")
    growth = {}
    for B in (1, args.batch):
        x = torch.randn(B, L, M)
        for H in args.horizons:
            steps = -(-H // P)
            rimer.fused_decode = True
            t_r = median_seconds(lambda: rimer.forecast(x, H))  # noqa: B023
            rimer.fused_decode = False
            t_rm = median_seconds(lambda: rimer.forecast(x, H))  # noqa: B023
            rimer.fused_decode = True
            t_t = median_seconds(lambda: timer.forecast(x, H))  # noqa: B023
            growth.setdefault(B, {})[H] = (t_r, t_t)
            # FLOPs ~ 2 x block parameters x tokens processed (attention scores and WKV left out)
            tok_r = B * M * (L // P + steps - 1)
            tok_t = B * M * (L // P) * steps
            fr = 2 * block_params(rimer) * tok_r / t_r / 1e9
            ft = 2 * block_params(timer) * tok_t / t_t / 1e9
            print(f"{B:>5} {H:>7} | {t_r * 1e3:>9.1f} {t_rm * 1e3:>13.1f} {t_t * 1e3:>9.1f} | "
                  f"{t_t / t_r:>10.2f}x | {fr:>13.1f} {ft:>13.1f}")  # fmt: skip
    lo, hi = min(args.horizons), max(args.horizons)
    for B, g in growth.items():
        print(f"batch {B}: {lo} -> {hi} steps multiplies the time by {g[hi][0] / g[lo][0]:.2f} (Rimer), "
              f"{g[hi][1] / g[lo][1]:.2f} (Timer)")  # fmt: skip
    print(f"\nceiling: fp32 matmul peak {peak / 1e9:.0f} GFLOP/s. Timer re-runs its {L // P}-token window "
          "for every generated patch; Rimer runs the look-back once, then one recurrent step per "
          "patch.")  # fmt: skip


if __name__ == "__main__":
    main()
