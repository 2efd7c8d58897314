"""Training throughput and MFU of rwkvkit's trainer step, against the machine's measured peaks.

For each preset: RWKV-7 and a transformer (GPT) of about the same parameter count, both through
the same step (bf16 autocast, AdamW, official parameter groups, L2Wrap for RWKV), on random tokens.
Prints tokens/s, the ratio RWKV / GPT, and MFU = achieved model FLOP/s over the bf16 and fp32
matrix-product peaks measured in this run (``rwkvkit.utils.perf.matmul_peak``).

    python benchmarks/train_throughput.py                 # default and larger presets
    python benchmarks/train_throughput.py --steps 5 --presets default
"""

from __future__ import annotations

import argparse
import time

import torch

from rwkvkit.training.config import TrainConfig, preset
from rwkvkit.training.loop import build_model
from rwkvkit.training.loss import lm_loss
from rwkvkit.training.optim import build_optimizer
from rwkvkit.utils.perf import matmul_params, matmul_peak, train_flops_per_token

VOCAB = 4096
PRESETS = {
    # the shipped default model's shape and batch
    "default": preset("default-model").replace(progress=False),
    # a larger shape: L12-C768 (the RWKV-7 0.1B body) at sequence length 512
    "larger": preset("default-model").replace(n_layer=12, n_embd=768, batch_size=4, progress=False),
}


def gpt_twin(cfg: TrainConfig, n_params: int) -> TrainConfig:
    """The GPT config with the same layers and the width whose parameter count is nearest."""
    from rwkvkit.models.gpt.config import GPTConfig

    g = GPTConfig.matching(n_params, VOCAB, cfg.ctx_len, n_layer=cfg.n_layer, head_size=64)
    return cfg.replace(arch="gpt", n_embd=g.n_embd, head_size=g.n_embd // g.n_head, l2wrap=False)


def time_steps(cfg: TrainConfig, steps: int, warmup: int = 1) -> tuple[float, torch.nn.Module]:
    torch.manual_seed(0)
    model = build_model(cfg, VOCAB).train()
    opt = build_optimizer(model, lr=1e-4, weight_decay=0.01)
    tokens = torch.randint(0, VOCAB, (cfg.batch_size, cfg.ctx_len + 1))
    x, y = tokens[:, :-1], tokens[:, 1:]
    best = float("inf")
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.precision == "bf16"):
            logits, _ = model(x)
        lm_loss(logits, y, l2wrap=cfg.l2wrap).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= warmup:
            best = min(best, time.perf_counter() - t0)
    return cfg.batch_size * cfg.ctx_len / best, model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--steps", type=int, default=3, help="timed steps per model (best is kept; default 3)"
    )
    parser.add_argument(
        "--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS), help="which shapes"
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    peak_bf16 = max(matmul_peak(torch.bfloat16, n=n, seconds=1.0) for n in (1024, 2048))
    peak_fp32 = max(matmul_peak(torch.float32, n=n, seconds=1.0) for n in (1024, 2048))
    print(f"machine: {torch.get_num_threads()} threads; measured peaks: bf16 {peak_bf16 / 1e9:.0f} GFLOP/s, "
          f"fp32 {peak_fp32 / 1e9:.0f} GFLOP/s (dense n x n matrix products)")  # fmt: skip
    print(
        f"{'preset':8} {'model':8} {'params':>8} {'tok/s':>8} {'GFLOP/s':>8} {'MFU bf16':>9} {'MFU fp32':>9}"
    )
    for name in args.presets:
        cfg = PRESETS[name]
        results = {}
        tps, model = time_steps(cfg, args.steps)
        results["rwkv7"] = (tps, model, cfg)
        n = sum(p.numel() for p in model.parameters())
        gcfg = gpt_twin(cfg, n)
        tps_g, gmodel = time_steps(gcfg, args.steps)
        results["gpt"] = (tps_g, gmodel, gcfg)
        for label, (tps, m, c) in results.items():
            flops = tps * train_flops_per_token(m, c.ctx_len)
            n_m = sum(p.numel() for p in m.parameters())
            print(f"{name:8} {label:8} {n_m / 1e6:7.1f}M {tps:8.0f} {flops / 1e9:8.1f} "
                  f"{100 * flops / peak_bf16:8.1f}% {100 * flops / peak_fp32:8.1f}%")  # fmt: skip
        print(
            f"{name:8} ratio rwkv7 / gpt tokens/s: {results['rwkv7'][0] / results['gpt'][0]:.2f} "
            f"(matmul params {matmul_params(results['rwkv7'][1]) / 1e6:.1f}M vs "
            f"{matmul_params(results['gpt'][1]) / 1e6:.1f}M, ctx {cfg.ctx_len}, batch {cfg.batch_size})"
        )


if __name__ == "__main__":
    main()
