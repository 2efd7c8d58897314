"""Machine ceilings and model FLOP counts, for MFU and for the benchmarks' "percent of bound".

Nothing here asserts on time: the numbers are reported, never tested.
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable

import torch
import torch.nn as nn


def best_time(fn: Callable[[], object], repeat: int) -> float:
    """Best wall time in seconds of ``repeat`` calls of ``fn`` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def matmul_peak(
    dtype: torch.dtype = torch.bfloat16, n: int = 2048, seconds: float = 0.5, device="cpu"
) -> float:
    """Measured dense matrix-product throughput in FLOP/s (best of repeated ``n x n @ n x n``).

    The size starts at 256 and doubles up to ``n`` only while one product takes under 20 ms, so a
    processor without fast kernels for ``dtype`` (bf16 on a CPU without AVX-512 BF16 or AMX runs
    at about 1 GFLOP/s) is measured in a fraction of a second, not minutes.
    """
    size = min(256, n)
    while True:
        a = torch.randn(size, size, device=device).to(dtype)
        b = torch.randn(size, size, device=device).to(dtype)
        a @ b  # warm-up (thread pool, AMX tile configuration)
        t0 = time.perf_counter()
        a @ b
        if device != "cpu":
            torch.cuda.synchronize()
        if time.perf_counter() - t0 > 0.02 or size >= n:
            break
        size = min(2 * size, n)
    best = float("inf")
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or best == float("inf"):
        t0 = time.perf_counter()
        a @ b
        if device != "cpu":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return 2 * size**3 / best


def read_bandwidth(nbytes: int = 1 << 30, seconds: float = 0.5) -> float:
    """Measured memory read bandwidth in bytes/s (summing a buffer much larger than the caches)."""
    x = torch.ones(nbytes // 4, dtype=torch.float32)
    x.sum()
    best = float("inf")
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or best == float("inf"):
        t0 = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - t0)
    return nbytes / best


def machine_ceilings(seconds: float = 1.0) -> tuple[float, float]:
    """``(read bandwidth in bytes/s, bf16 matrix-product peak in FLOP/s)``, each measured for ``seconds``
    (the peak as the best of sizes 1024 and 2048): the two ceilings the CPU benchmarks report."""
    bandwidth = read_bandwidth(seconds=seconds)
    peak = max(matmul_peak(torch.bfloat16, n=n, seconds=seconds) for n in (1024, 2048))
    return bandwidth, peak


def rss_mb() -> float:
    """Current resident set size of this process in MiB (Linux ``/proc``)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far in MiB: ``VmHWM`` of ``/proc/self/status``.

    Not ``ru_maxrss`` where ``/proc`` has it: Linux carries a parent's resident size at the fork across
    the exec into ``ru_maxrss`` (measured: a child of a process holding 800 MB reported 810 MB, VmHWM
    8.7 MB), so a benchmark worker started by a large parent would report the parent's size.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux, bytes on macOS


def weight_bytes_read(model: nn.Module) -> int:
    """Bytes of parameters and buffers a decoding step reads: everything but the embedding table
    (one row of it is read), each tensor counted once (as stored: fp32, bf16, int8...)."""
    seen, total = set(), 0
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if name.startswith("emb.") or t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    return total


def matmul_params(model: nn.Module) -> int:
    """Parameters that take part in matrix products per token (everything but embedding lookups)."""
    total = 0
    for name, p in model.named_parameters():
        if p.dim() >= 2 and not name.endswith(("emb.weight", "wte.weight", "wpe.weight")):
            total += p.numel()
    return total


def train_flops_per_token(model: nn.Module, ctx_len: int) -> float:
    """Training FLOPs per token: 6 x matmul parameters (forward 2, backward 4), plus attention or WKV.

    GPT: causal attention adds 6 * L * T * C (QK^T and AV, halved by the mask, times 3 for backward).
    RWKV: the WKV recurrence adds about 12 * L * C * N (a few K x V updates per token and head).
    """
    flops = 6.0 * matmul_params(model)
    cfg = getattr(model, "config", None)
    if cfg is not None and hasattr(cfg, "n_layer") and hasattr(cfg, "n_embd"):
        if getattr(cfg, "version", None) is not None:  # RWKV
            N = cfg.head_size if cfg.n_head else 1  # RWKV-4 has no heads: one channel
            flops += 12.0 * cfg.n_layer * cfg.n_embd * N
        else:  # GPT
            flops += 6.0 * cfg.n_layer * ctx_len * cfg.n_embd
    return flops
