"""rwkvkit against fla 0.6.0 and the official ``rwkv`` package on one lent GPU, in one run.

Phases (``--phases``; the machine's ceilings are always measured first):

* ``op``: WKV-7 (``rwkvkit.ops.wkv7``, ``impl="triton"``, or ``"chunk"`` where this checkout has no
  Triton tier) against fla's ``chunk_rwkv7`` (called as fla's RWKV-7 layer calls it:
  ``safe_gate=True, lower_bound=-exp(-0.5), chunk_size=64``): forward, forward+backward and peak
  memory at B8 T4096 H32 K64 and at H64 K64 (the 7B width), bf16; and each one's error against the
  fp64 naive recurrence (rwkvkit's ``impl="naive"``) at T300, fp32 and bf16 inputs (relative RMS).
* ``train``: one training step of RWKV-7 L12 C768 V65536 (head size 64) at batch 8 x 4096, bf16
  autocast, AdamW (the same plain ``torch.optim.AdamW`` for both), gradient clipping at 1.0:
  rwkvkit's ``RWKV`` with :func:`rwkvkit_train_loss` against fla's ``RWKV7ForCausalLM`` with its
  own loss (fused cross-entropy and L2Wrap, fla's defaults). Tokens/s, MFU, peak memory.
* ``decode``: the RWKV-7 0.1B shape, bf16 weights, greedy, batch 1 and 64 (aggregate tokens/s);
  the official package (strategy ``cuda fp16``, ``RWKV_CUDA_ON=0``) at batch 1 (its API decodes
  one sequence per call).
* ``prefill``: 4,096 tokens through rwkvkit, and the official package's prefill of
  ``--official-prefill`` tokens (1,024 by default: its non-CUDA path is a loop over tokens), with
  rwkvkit at that length too for the ratio.

MFU = F * tokens/s / peak, with F = 6 * (parameters used in matrix products, i.e. all but the
embedding) + 12 * L * C * N (the WKV recurrence; :func:`rwkvkit.utils.perf.train_flops_per_token`),
the same F for both libraries; the peak is the bf16 matrix product measured in this run, and the
989 TFLOP/s datasheet figure is printed beside it.

Every measurement is a record (one JSON line, appended as soon as it exists, so a killed run keeps
what it measured) in ``OUT/gpu-<date>.jsonl``; ``OUT/gpu-<date>.md`` is the summary with the ratios
rwkvkit / peer. Each library's part of a phase runs in its own process under a time budget (a
share of ``--budget``; unused time passes on): a part that overruns is killed and recorded as
``skipped: budget``, an error is recorded and the run goes on. Triton's compile cache
(``TRITON_CACHE_DIR``) and the autotuners' results (fla's ``cache_results``) are shared by all the
parts of a run, so kernels compiled and tuned by the op phase are reused by the training step;
``--autotune-configs N`` keeps at most N configurations of every Triton autotuner (both
libraries' alike, an evenly spread subset) and benchmarks each for less time, so that compiling
and tuning fit the window.

The device command (wheels downloaded here into the ignored ``.whl/``, see gpu_run.sh; carry
``.whl``)::

    bash benchmarks/gpu_run.sh

    python benchmarks/gpu.py --smoke --out /tmp/gpu-smoke   # tiny shapes, CPU too (the test's run)
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

SPEC_BF16_TFLOPS = 989.0  # H100/H200 SXM dense bf16, datasheet
LOWER_BOUND = -math.exp(-0.5)  # RWKV-7's log-decay floor, as fla's layer states it
PHASES = ("op", "train", "decode", "prefill")
# (part, phases it serves, share of the budget): each part is one process
PARTS = (
    ("ceilings", (), 0.05),
    ("op.rwkvkit", ("op",), 0.12),
    ("op.fla", ("op",), 0.22),
    ("train.rwkvkit", ("train",), 0.14),
    ("train.fla", ("train",), 0.25),
    ("infer.rwkvkit", ("decode", "prefill"), 0.10),
    ("infer.official", ("decode", "prefill"), 0.12),
)


# ---- shapes and counts of each mode -----------------------------------------------------------


def settings(mode: str) -> dict:
    """Sizes and iteration counts of ``mode``: ``full``, ``quick`` or ``smoke``."""
    if mode == "smoke":
        return {
            # small: on a CPU the triton tier runs in Triton's interpreter
            "op_shapes": {"B1-T24-H1-K16": (1, 24, 1, 16)},
            "acc_shape": (1, 20, 1, 16),
            "op_dtype": "float32",
            "op_iters": (0, 1),
            "train": {"n_layer": 2, "n_embd": 64, "vocab": 256, "lora": 8, "B": 1, "T": 16},
            "train_iters": (1, 2),
            "decode_batches": (1, 4),
            "decode_steps": 4,
            "prefill": 32,
            "official_prefill": 8,
            "infer": {"n_layer": 2, "n_embd": 128, "vocab": 512, "lora": 8},
        }
    quick = mode == "quick"
    return {
        "op_shapes": {"B8-T4096-H32-K64": (8, 4096, 32, 64), "B8-T4096-H64-K64": (8, 4096, 64, 64)},
        "acc_shape": (1, 300, 4, 64),
        "op_dtype": "bfloat16",
        "op_iters": (2, 5) if quick else (3, 10),
        "train": {"preset": "rwkv7-0.1b", "B": 8, "T": 4096},
        "train_iters": (2, 3) if quick else (2, 5),
        "decode_batches": (1, 64),
        "decode_steps": 32 if quick else 100,
        "prefill": 4096,
        "official_prefill": 1024,
        "infer": {"preset": "rwkv7-0.1b"},
    }


# ---- records ----------------------------------------------------------------------------------


class Recorder:
    """Appends one JSON line per record to the results file and prints it."""

    def __init__(self, path: Path, part: str) -> None:
        self.path, self.part = path, part

    def __call__(self, **rec) -> dict:
        rec = {"part": self.part, **rec}
        with open(self.path, "a") as f:
            f.write(json.dumps(rec, default=str) + "\n")
        shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in rec.items()}
        print("  " + json.dumps(shown, default=str), flush=True)
        return rec

    def case(self, deadline: float, min_s: float, fn: Callable[[], dict], **keys) -> dict | None:
        """Run one measurement ``fn`` (returns its metrics) as a record: ``ok``, ``error`` or
        ``skipped: budget`` when less than ``min_s`` seconds are left."""
        if time.time() + min_s > deadline:
            return self(status="skipped: budget", **keys)
        t0 = time.time()
        try:
            metrics = fn()
        except Exception as e:  # recorded, and the run goes on
            traceback.print_exc()
            return self(
                status="error", error=f"{type(e).__name__}: {e}"[:500], wall_s=time.time() - t0, **keys
            )
        return self(status="ok", wall_s=time.time() - t0, **keys, **metrics)


# ---- timing helpers ---------------------------------------------------------------------------


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def median_ms(fn: Callable[[], object], device, warmup: int, iters: int) -> float:
    """Median milliseconds of ``iters`` calls after ``warmup`` calls (CUDA events on a GPU)."""
    import torch

    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - t0))
    times.sort()
    return times[len(times) // 2]


def reset_peak(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device) -> float | None:
    import torch

    if device.type != "cuda":
        return None
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**30


def limit_autotune(max_configs: int, warmup_ms: int = 5, rep_ms: int = 20) -> bool:
    """Keep at most ``max_configs`` configurations of every Triton autotuner (an evenly spread
    subset of its list; 0 keeps all) and benchmark each for ``warmup_ms`` + ``rep_ms`` instead of
    Triton's 25 + 100 ms. Under ``TRITON_INTERPRET=1`` (no driver to time with) each configuration
    is run once. Returns False where Triton is absent."""
    try:
        from triton.runtime import autotuner
    except ImportError:
        return False
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    original = autotuner.Autotuner.prune_configs

    def prune_configs(self, kwargs):
        configs = original(self, kwargs)
        if max_configs and len(configs) > max_configs:
            step = len(configs) / max_configs
            configs = [configs[int(i * step)] for i in range(max_configs)]
        return configs

    def bench(kernel_call, quantiles):
        if interpret:
            kernel_call()
            return [0.0, 0.0, 0.0]
        import triton.testing

        return triton.testing.do_bench(kernel_call, warmup=warmup_ms, rep=rep_ms, quantiles=quantiles)

    autotuner.Autotuner.prune_configs = prune_configs
    autotuner.Autotuner.do_bench = property(lambda self: self._do_bench or bench)
    return True


# ---- the parts --------------------------------------------------------------------------------


def part_ceilings(rec: Recorder, args, device, deadline: float) -> None:
    """The machine's bf16 matrix-product rate and device-to-device copy bandwidth."""
    import torch

    def measure() -> dict:
        if device.type == "cuda":
            n = 8192
            a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
            b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
            ms = median_ms(lambda: a @ b, device, 3, 10)
            x = torch.empty(2**30, device=device, dtype=torch.uint8)  # 1 GiB
            y = torch.empty_like(x)
            ms_copy = median_ms(lambda: y.copy_(x), device, 3, 10)
            return {
                "bf16_tflops": 2 * n**3 / ms / 1e9,
                "copy_gbs": 2 * x.numel() / ms_copy / 1e6,  # bytes read + written
                "spec_bf16_tflops": SPEC_BF16_TFLOPS,
                "how": "8192^3 bf16 randn matmul; 1 GiB copy_ (read+write); median of 10 after 3",
            }
        from rwkvkit.utils.perf import matmul_peak, read_bandwidth

        return {
            "bf16_tflops": matmul_peak(torch.bfloat16, n=512, seconds=0.2) / 1e12,
            "copy_gbs": read_bandwidth(1 << 26, seconds=0.2) / 1e9,
            "spec_bf16_tflops": SPEC_BF16_TFLOPS,
            "how": "CPU: rwkvkit.utils.perf.matmul_peak (bf16) and read_bandwidth",
        }

    rec.case(deadline, 1, measure, phase="ceilings", case="machine", lib="-")


def wkv7_inputs(shape, dtype, device, seed: int = 0, grad: bool = False):
    """RWKV-7-like WKV inputs ``r, log_w, k, v, a, b`` of ``[B, T, H, K]`` (log_w in
    [-exp(-0.5), 0), a = -kk, b = kk * a_icl as the model passes them)."""
    import torch
    import torch.nn.functional as F

    B, T, H, K = shape
    g = torch.Generator(device=device).manual_seed(seed)  # made on the device: no host-side minutes

    def rnd(scale=1.0):
        return torch.randn(B, T, H, K, generator=g, device=device, dtype=torch.float32) * scale

    r, k, v = rnd(0.5), rnd(0.5), rnd()
    # clamped after the cast: a bf16 rounding must not leave fla's stated lower bound
    log_w = (LOWER_BOUND * torch.sigmoid(rnd(2.0))).to(dtype).clamp_min(LOWER_BOUND)
    kk = F.normalize(rnd(), dim=-1)
    a_icl = torch.sigmoid(rnd())
    out = [r.to(dtype), log_w, k.to(dtype), v.to(dtype), (-kk).to(dtype), (kk * a_icl).to(dtype)]
    for x in out:
        x.requires_grad_(grad)
    return out


def rel_rms(x, ref) -> float:
    x, ref = x.double(), ref.double()
    return float((x - ref).norm() / ref.norm().clamp_min(1e-300))


def rwkvkit_op(impl: str):
    from rwkvkit.layers.rwkv7 import MAX_LOG_DECAY
    from rwkvkit.ops import wkv7

    def op(r, log_w, k, v, a, b):
        return wkv7(r, log_w, k, v, a, b, None, impl=impl, max_decay=MAX_LOG_DECAY)

    return op


def fla_op():
    from fla.ops.rwkv7 import chunk_rwkv7

    def op(r, log_w, k, v, a, b):
        return chunk_rwkv7(
            r,
            log_w,
            k,
            v,
            a,
            b,
            scale=1.0,
            initial_state=None,
            output_final_state=True,
            safe_gate=True,
            lower_bound=LOWER_BOUND,
            chunk_size=64,
        )

    return op


def rwkvkit_impl(device, interpreter: bool = False) -> tuple[str, str]:
    """The WKV-7 tier to measure: ``"triton"`` when this checkout has it, else ``"chunk"``. On a CPU
    ``"triton"`` only where ``interpreter`` allows Triton's interpreter (the smoke run's op phase;
    a model under the interpreter would take minutes)."""
    import torch

    from rwkvkit.ops import wkv7

    x = torch.zeros(1, 1, 1, 16, device=device)
    try:
        wkv7(x, x, x, x, x, x, impl="triton")
    except ValueError as e:
        if "unknown impl" in str(e):
            return "chunk", "impl='triton' unknown in this checkout (ValueError): measured 'chunk'"
    except Exception:  # it exists but this tiny call failed: measure it anyway, errors are recorded
        pass
    if device.type != "cuda" and not (interpreter and os.environ.get("TRITON_INTERPRET") == "1"):
        return "chunk", "impl='triton' needs a GPU (or TRITON_INTERPRET=1, op phase only): measured 'chunk'"
    return "triton", "impl='triton'"


def op_training_step(op, shape, dtype, device):
    """Inputs that require gradients, and one forward + backward of ``op`` on them (the gradient of
    the output a fixed random tensor): ``(inputs, step)``."""
    import torch

    xs = wkv7_inputs(shape, dtype, device, grad=True)
    do = torch.randn(shape, device=device, dtype=dtype)

    def step():
        for x in xs:
            x.grad = None
        o, _ = op(*xs)
        o.backward(do)

    return xs, step


def part_op(rec: Recorder, args, device, deadline: float, lib: str) -> None:
    import torch

    s = settings(args.mode)
    dtype = getattr(torch, s["op_dtype"])
    warmup, iters = s["op_iters"]
    if lib == "rwkvkit":
        impl, note = rwkvkit_impl(device, interpreter=True)
        op, name = rwkvkit_op(impl), f"rwkvkit wkv7 {impl}"
    else:
        op, name, note = fla_op(), "fla chunk_rwkv7", "safe_gate=True lower_bound=-exp(-0.5) chunk_size=64"
    print(f"op: {name} ({note})", flush=True)

    for case, shape in s["op_shapes"].items():
        B, T, H, K = shape
        io_bytes = 7 * B * T * H * K * torch.finfo(dtype).bits // 8  # r w k v a b in, o out

        def forward(shape=shape, io_bytes=io_bytes) -> dict:
            xs = wkv7_inputs(shape, dtype, device)
            with torch.no_grad():
                reset_peak(device)
                op(*xs)
                peak = peak_gib(device)
                ms = median_ms(lambda: op(*xs), device, warmup, iters)
            return {"ms": ms, "peak_gib": peak, "io_gbs": io_bytes / ms / 1e6, "impl": name, "note": note}

        def forward_backward(shape=shape) -> dict:
            _, step = op_training_step(op, shape, dtype, device)
            reset_peak(device)
            step()
            peak = peak_gib(device)
            return {"ms": median_ms(step, device, warmup, iters), "peak_gib": peak, "impl": name}

        rec.case(
            deadline, 5, forward, phase="op", case=f"{case} fwd", lib=lib, shape=shape, dtype=s["op_dtype"]
        )
        rec.case(
            deadline,
            5,
            forward_backward,
            phase="op",
            case=f"{case} fwd+bwd",
            lib=lib,
            shape=shape,
            dtype=s["op_dtype"],
        )

    if lib == "rwkvkit" and impl == "triton":
        launch_variants(rec, s, device, deadline, dtype, op, warmup, iters)

    # error against the fp64 naive recurrence at a short T
    shape = s["acc_shape"]
    from rwkvkit.ops import wkv7

    ref_in = wkv7_inputs(shape, torch.float64, device, seed=1, grad=True)
    do = torch.randn(shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64).to(device)
    o_ref, s_ref = wkv7(*ref_in, impl="naive")
    o_ref.backward(do)
    g_ref = torch.cat([x.grad.flatten() for x in ref_in])
    for dt in ("float32", "bfloat16"):

        def accuracy(dt=dt) -> dict:
            xs = [x.detach().to(getattr(torch, dt)).requires_grad_(True) for x in ref_in]
            o, st = op(*xs)
            o.backward(do.to(o.dtype))
            g = torch.cat([x.grad.flatten() for x in xs])
            return {
                "rel_rms_o": rel_rms(o, o_ref),
                "rel_rms_state": rel_rms(st, s_ref),
                "rel_rms_grads": rel_rms(g, g_ref),
                "impl": name,
                "reference": "rwkvkit wkv7 impl='naive' in fp64",
            }

        rec.case(deadline, 3, accuracy, phase="op", case=f"error T{shape[1]} {dt}", lib=lib, shape=shape)


# (forward warps, forward value columns per program, backward warps) of rwkvkit's triton tier: the
# defaults first; the others are candidates for the defaults, measured so a lent GPU's run says which
# to keep (src/rwkvkit/ops/rwkv7/triton_tier.py, _FWD_WARPS / _FWD_BV / _BWD_WARPS).
LAUNCH_VARIANTS = ((1, 32, 4), (2, 32, 4), (4, 32, 4), (1, 16, 4), (1, 64, 4), (1, 32, 2), (1, 32, 8))


def launch_variants(
    rec: Recorder, s: dict, device, deadline: float, dtype, op, warmup: int, iters: int
) -> None:
    """Forward+backward time of rwkvkit's triton tier at the first op shape under each launch
    variant (the first is the default), recorded as ``op`` cases ``variant ...``."""
    import torch

    from rwkvkit.ops.rwkv7 import triton_tier as tier

    shape = next(iter(s["op_shapes"].values()))
    saved = (tier._FWD_WARPS, tier._FWD_BV, tier._BWD_WARPS)
    # the interpreter ignores warps: two variants there only check the mechanics
    variants = LAUNCH_VARIANTS if device.type == "cuda" else LAUNCH_VARIANTS[:2]
    try:
        for fw, fbv, bw in variants:
            tier._FWD_WARPS, tier._FWD_BV, tier._BWD_WARPS = fw, fbv, bw

            def measure() -> dict:
                xs, step = op_training_step(op, shape, dtype, device)
                with torch.no_grad():
                    fwd = median_ms(lambda: op(*xs), device, warmup, iters)
                return {"fwd_ms": fwd, "ms": median_ms(step, device, warmup, iters)}

            case = f"variant fwd_warps={fw} fwd_bv={fbv} bwd_warps={bw}"
            rec.case(deadline, 10, measure, phase="op", case=case, lib="rwkvkit", shape=shape)
    finally:
        tier._FWD_WARPS, tier._FWD_BV, tier._BWD_WARPS = saved


def train_config(s: dict):
    return model_config(s["train"])


def model_config(t: dict):
    """The RWKV-7 config of a mode's ``train`` or ``infer`` entry: a preset, or a shape with one LoRA
    rank for every LoRA."""
    from rwkvkit.models.rwkv.config import RWKVConfig

    if "preset" in t:
        return RWKVConfig.from_name(t["preset"])
    r = t["lora"]
    return RWKVConfig(
        version="7",
        n_layer=t["n_layer"],
        n_embd=t["n_embd"],
        vocab_size=t["vocab"],
        lora_w=r,
        lora_a=r,
        lora_v=r,
        lora_g=r,
    )


def rwkvkit_train_loss(model, x, y, impl: str):
    """rwkvkit's training loss of one batch, as the trainer computes it: the hidden states, then the
    output head and the cross-entropy (fp32, L2Wrap) fused in chunks of tokens (``fused_lm_loss``:
    the ``[B, T, V]`` logits are never made whole)."""
    from rwkvkit.training.loop import head_weight
    from rwkvkit.training.loss import fused_lm_loss

    hidden, _ = model(x, impl=impl, return_hidden=True)
    return fused_lm_loss(hidden, head_weight(model), y, l2wrap=True)


def fla_train_loss(model, x, y):
    """fla's training loss: ``RWKV7ForCausalLM`` with its defaults (fused cross-entropy, L2Wrap)."""
    return model(input_ids=x, shift_labels=y, use_cache=False).loss


def fla_config(cfg):
    """fla's ``RWKV7Config`` of the same shape as rwkvkit's ``cfg``."""
    from fla.models import RWKV7Config

    return RWKV7Config(
        hidden_size=cfg.n_embd,
        num_hidden_layers=cfg.n_layer,
        head_dim=cfg.head_size,
        decay_low_rank_dim=cfg.lora_w,
        a_low_rank_dim=cfg.lora_a,
        v_low_rank_dim=cfg.lora_v,
        gate_low_rank_dim=cfg.lora_g,
        intermediate_size=cfg.dim_ffn,
        vocab_size=cfg.vocab_size,
        use_cache=False,
    )


def matmul_param_count(model) -> int:
    """Parameters in matrix products per token: 2-D weights other than the token embedding."""
    return sum(
        p.numel()
        for n, p in model.named_parameters()
        if p.dim() >= 2 and "embed" not in n and not n.endswith("emb.weight")
    )


def part_train(rec: Recorder, args, device, deadline: float, lib: str, peak_tflops: float | None) -> None:
    import torch

    s = settings(args.mode)
    cfg = train_config(s)
    B, T = s["train"]["B"], s["train"]["T"]
    torch.manual_seed(0)
    if lib == "rwkvkit":
        from rwkvkit.models.rwkv.init import random_init_
        from rwkvkit.models.rwkv.model import RWKV

        impl, note = rwkvkit_impl(device)
        model = random_init_(RWKV(cfg, device=device, dtype=torch.float32)).train()

        def loss_fn(x, y):
            return rwkvkit_train_loss(model, x, y, impl)

        loss_name = f"rwkvkit_train_loss (fused_lm_loss, L2Wrap), wkv7 impl={impl!r}; {note}"
    else:
        from fla.models import RWKV7ForCausalLM

        model = RWKV7ForCausalLM(fla_config(cfg)).to(device).train()

        def loss_fn(x, y):
            return fla_train_loss(model, x, y)

        loss_name = "fla_train_loss (FusedCrossEntropyLoss, l2_warp)"
    n_params = sum(p.numel() for p in model.parameters())
    n_matmul = matmul_param_count(model)
    flops_per_token = 6.0 * n_matmul + 12.0 * cfg.n_layer * cfg.n_embd * cfg.head_size
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01, fused=device.type == "cuda")
    tokens = torch.randint(0, cfg.vocab_size, (B, T + 1), device=device)
    x, y = tokens[:, :-1], tokens[:, 1:].contiguous()
    losses = []

    autocast = device.type == "cuda"  # off on a CPU (smoke): bf16 there can be very slow

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            loss = loss_fn(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.detach())

    warmup, iters = s["train_iters"]

    def first_steps() -> dict:
        t0 = time.time()
        for _ in range(warmup):
            step()
        sync(device)
        return {"warmup_steps": warmup, "seconds": time.time() - t0, "note": "compile and autotune"}

    rec.case(deadline, 5, first_steps, phase="train", case="warm-up", lib=lib)

    def timed() -> dict:
        reset_peak(device)
        ms = median_ms(step, device, 0, iters)
        tps = B * T / (ms / 1e3)
        flops = tps * flops_per_token
        out = {
            "ms": ms,
            "tokens_per_s": tps,
            "peak_gib": peak_gib(device),
            "params": n_params,
            "matmul_params": n_matmul,
            "flops_per_token": flops_per_token,
            "loss": loss_name,
            "last_loss": float(losses[-1]),
            "mfu_spec": flops / (SPEC_BF16_TFLOPS * 1e12),
            "optimizer": "torch.optim.AdamW(lr=1e-4, wd=0.01), clip 1.0, fp32 weights",
            "autocast_bf16": autocast,
            "mfu_formula": "(6 * matmul_params + 12 * L * C * N) * tokens/s / peak",
        }
        if peak_tflops:
            out["mfu_measured"] = flops / (peak_tflops * 1e12)
        return out

    rec.case(
        deadline,
        3,
        timed,
        phase="train",
        case=f"L{cfg.n_layer}-C{cfg.n_embd}-V{cfg.vocab_size} B{B}xT{T}",
        lib=lib,
    )


def infer_checkpoint(args, s: dict) -> Path:
    """A random official-format ``.pth`` of the decoding shape (bf16), written once per run."""
    import torch

    from rwkvkit.models.rwkv.init import random_checkpoint

    cfg = model_config(s["infer"])
    path = Path(args.work) / f"rwkv7-L{cfg.n_layer}-C{cfg.n_embd}-V{cfg.vocab_size}-bf16.pth"
    if not path.exists():
        random_checkpoint(cfg, path, seed=0, dtype=torch.bfloat16)
    return path


def weight_bytes_per_token(model) -> int:
    """Bytes of weights one decoding step reads: every parameter but the embedding (one row)."""
    total = 0
    for n, p in model.named_parameters():
        total += p[0].numel() * p.element_size() if n.endswith("emb.weight") else p.numel() * p.element_size()
    return total


def part_infer(rec: Recorder, args, device, deadline: float, lib: str, copy_gbs: float | None) -> None:
    import torch

    s = settings(args.mode)
    if args.official_prefill:
        s["official_prefill"] = args.official_prefill
    path = infer_checkpoint(args, s)
    want = set(args.phases)
    if lib == "rwkvkit":
        import rwkvkit

        # bf16 weights on a GPU; fp32 on a CPU (smoke), where bf16 matrix products can be very slow
        weights = torch.bfloat16 if device.type == "cuda" else torch.float32
        model = rwkvkit.load(path, dtype=weights, device=device)
        V = model.config.vocab_size
        bytes_per_step = weight_bytes_per_token(model)
        impl, note = rwkvkit_impl(device)

        if "decode" in want:
            for batch in s["decode_batches"]:

                def decode(batch=batch) -> dict:
                    n = s["decode_steps"]
                    tok = torch.randint(0, V, (batch, 1), device=device)
                    with torch.no_grad():
                        logits, state = model(tok, None, full_output=False)
                        for _ in range(3):  # warm-up
                            logits, state = model(tok, state, full_output=False)
                        reset_peak(device)
                        sync(device)
                        t0 = time.perf_counter()
                        for _ in range(n):
                            tok = logits[:, -1].argmax(-1, keepdim=True)
                            logits, state = model(tok, state, full_output=False)
                        sync(device)
                        dt = time.perf_counter() - t0
                    out = {
                        "tokens_per_s": batch * n / dt,
                        "ms_per_step": 1e3 * dt / n,
                        "steps": n,
                        "peak_gib": peak_gib(device),
                        "weights": str(weights),
                        "loop": "model(tok, state), greedy argmax on the device, no host sync per step",
                    }
                    if copy_gbs:  # one read of the weights per step: the bound at small batch
                        out["bound_tokens_per_s"] = batch * copy_gbs * 1e9 / 2 / bytes_per_step
                        out["pct_of_bound"] = 100 * out["tokens_per_s"] / out["bound_tokens_per_s"]
                    return out

                rec.case(deadline, 3, decode, phase="decode", case=f"batch {batch}", lib=lib)

        if "prefill" in want:
            for n in sorted({s["prefill"], s["official_prefill"]}, reverse=True):

                def prefill(n=n) -> dict:
                    prompt = torch.randint(0, V, (1, n), device=device)
                    with torch.no_grad():
                        reset_peak(device)
                        ms = median_ms(
                            lambda: model(prompt, None, impl=impl, full_output=False), device, 1, 3
                        )
                    return {
                        "tokens_per_s": n / (ms / 1e3),
                        "ms": ms,
                        "peak_gib": peak_gib(device),
                        "impl": impl,
                        "note": note,
                    }

                rec.case(deadline, 3, prefill, phase="prefill", case=f"prompt {n}", lib=lib)
        return

    # the official package
    os.environ.update({"RWKV_V7_ON": "1", "RWKV_JIT_ON": "1", "RWKV_CUDA_ON": "0"})
    from rwkv.model import RWKV as OfficialRWKV

    strategy = "cuda fp16" if device.type == "cuda" else "cpu fp32"
    model = OfficialRWKV(str(path)[: -len(".pth")], strategy)
    V = model.z["emb.weight"].shape[0]
    g = torch.Generator().manual_seed(0)
    note = f"strategy {strategy!r}, RWKV_V7_ON=1 RWKV_JIT_ON=1 RWKV_CUDA_ON=0 (no nvcc build)"
    with torch.no_grad():
        for _ in range(2):  # TorchScript's profiling runs
            model.forward(torch.randint(0, V, (8,), generator=g).tolist(), None)
            model.forward([0], None)

    if "decode" in want:

        def decode() -> dict:
            n = s["decode_steps"]
            with torch.no_grad():
                out, state = model.forward([1], None)
                tok = int(out.argmax())
                for _ in range(3):
                    out, state = model.forward([tok], state)
                reset_peak(device)
                t0 = time.perf_counter()
                for _ in range(n):
                    tok = int(out.argmax())
                    out, state = model.forward([tok], state)
                sync(device)
                dt = time.perf_counter() - t0
            return {
                "tokens_per_s": n / dt,
                "ms_per_step": 1e3 * dt / n,
                "steps": n,
                "peak_gib": peak_gib(device),
                "note": note + "; int token per call (its API), argmax synced to the host",
            }

        rec.case(deadline, 3, decode, phase="decode", case="batch 1", lib="official")
        for batch in s["decode_batches"]:
            if batch > 1:
                rec(
                    phase="decode",
                    case=f"batch {batch}",
                    lib="official",
                    status="skipped: the official package decodes one sequence per call (no batch API)",
                )

    if "prefill" in want:
        n = s["official_prefill"]

        def prefill() -> dict:
            prompt = torch.randint(0, V, (n,), generator=g).tolist()
            with torch.no_grad():
                reset_peak(device)
                warm = 0 if args.mode == "smoke" else 1  # TorchScript profiles a new length first
                ms = median_ms(lambda: model.forward(prompt, None), device, warm, 1)
            return {
                "tokens_per_s": n / (ms / 1e3),
                "ms": ms,
                "peak_gib": peak_gib(device),
                "note": note + f"; {n} tokens, not {s['prefill']}: its non-CUDA prefill loops over tokens",
            }

        rec.case(deadline, 5, prefill, phase="prefill", case=f"prompt {n}", lib="official")
        if s["prefill"] != n:
            rec(
                phase="prefill",
                case=f"prompt {s['prefill']}",
                lib="official",
                status=f"skipped: measured at {n} tokens (a loop over tokens; see prompt {n})",
            )


def worker(args) -> None:
    """One part in this process (started by :func:`main`)."""
    import torch

    part = args.worker
    rec = Recorder(Path(args.results), part)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    limit_autotune(args.autotune_configs)
    ceilings = {}
    for line in Path(args.results).read_text().splitlines():
        r = json.loads(line)
        if r.get("phase") == "ceilings" and r.get("status") == "ok":
            ceilings = r
    deadline = args.deadline
    lib = part.split(".", 1)[-1]
    peers_on_cpu = device.type != "cuda" and lib == "fla"
    if part == "ceilings":
        part_ceilings(rec, args, device, deadline)
        return
    if peers_on_cpu:
        phase = part.split(".")[0]
        rec(
            phase=phase,
            case="*",
            lib=lib,
            status="skipped: no CUDA device (fla's kernels are Triton GPU kernels)",
        )
        return
    if part.startswith("op."):
        part_op(rec, args, device, deadline, lib)
    elif part.startswith("train."):
        part_train(rec, args, device, deadline, lib, ceilings.get("bf16_tflops"))
    elif part.startswith("infer."):
        part_infer(rec, args, device, deadline, lib, ceilings.get("copy_gbs"))


# ---- the run ----------------------------------------------------------------------------------


def environment() -> dict:
    """Versions and device of this run (what is importable; nothing is imported that a part needs)."""
    from importlib import metadata

    env = {"python": sys.version.split()[0], "argv": sys.argv[1:]}
    for pkg in ("torch", "triton", "fla-core", "flash-linear-attention", "rwkv", "transformers"):
        try:
            env[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            env[pkg] = None
    try:
        import torch

        env["cuda"] = torch.version.cuda
        env["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    except Exception as e:  # pragma: no cover
        env["device"] = f"unknown ({e})"
    try:
        root = Path(__file__).resolve().parent.parent
        env["rwkvkit_commit"] = (
            subprocess.run(
                ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
            ).stdout.strip()
            or None
        )
    except Exception:
        env["rwkvkit_commit"] = None
    return env


def peer_available(part: str, cuda: bool) -> str | None:
    """Why a peer's part cannot run here (None when it can). Imports nothing (fla's import is slow)."""
    from importlib.util import find_spec

    if part.endswith(".fla"):
        spec = find_spec("fla")
        if spec is None:
            return "skipped: fla (fla-core) is not installed"
        folders = [Path(p) for p in spec.submodule_search_locations or ()]
        if part.startswith("train.") and not any((f / "models" / "rwkv7").is_dir() for f in folders):
            return "skipped: fla.models (flash-linear-attention) is not installed"
        if not cuda:
            return "skipped: no CUDA device (fla's kernels are Triton GPU kernels)"
    if part.endswith(".official") and find_spec("rwkv") is None:
        return "skipped: the official rwkv package is not installed"
    return None


def fmt(x, digits: int = 3) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}g}" if abs(x) < 1e4 else f"{x:,.0f}"
    return str(x)


def summarize(records: list[dict], env: dict) -> str:
    """The markdown summary: ceilings, each case per library, and the ratios rwkvkit / peer."""
    lines = [
        f"# GPU benchmark, {env.get('date')}",
        "",
        "```",
        json.dumps(env, indent=1, default=str),
        "```",
        "",
    ]
    ceil = next((r for r in records if r.get("phase") == "ceilings" and r.get("status") == "ok"), {})
    if ceil:
        lines += [
            f"Ceilings measured in this run: bf16 matrix product {fmt(ceil['bf16_tflops'])} TFLOP/s "
            f"(datasheet {SPEC_BF16_TFLOPS:g}), device copy {fmt(ceil['copy_gbs'])} GB/s ({ceil['how']}).",
            "",
        ]
    metric = {
        "op": ("ms", "time"),
        "train": ("tokens_per_s", "rate"),
        "decode": ("tokens_per_s", "rate"),
        "prefill": ("tokens_per_s", "rate"),
    }
    for phase in PHASES:
        rows = [r for r in records if r.get("phase") == phase]
        if not rows:
            continue
        lines += [f"## {phase}", "", "| case | lib | status | key numbers |", "| --- | --- | --- | --- |"]
        for r in rows:
            keys = (
                "ms",
                "fwd_ms",
                "tokens_per_s",
                "peak_gib",
                "mfu_measured",
                "mfu_spec",
                "pct_of_bound",
                "io_gbs",
                "rel_rms_o",
                "rel_rms_state",
                "rel_rms_grads",
                "seconds",
                "impl",
                "error",
            )
            nums = ", ".join(f"{k} {fmt(r[k])}" for k in keys if r.get(k) is not None)
            lines.append(f"| {r.get('case')} | {r.get('lib')} | {r.get('status')} | {nums} |")
        key, kind = metric[phase]
        ratios = []
        for case in dict.fromkeys(r.get("case") for r in rows):
            ours = next((r for r in rows if r["case"] == case and r["lib"] == "rwkvkit" and key in r), None)
            for peer in ("fla", "official"):
                theirs = next((r for r in rows if r["case"] == case and r["lib"] == peer and key in r), None)
                if ours and theirs and theirs[key]:
                    ratio = ours[key] / theirs[key]
                    say = (
                        "time rwkvkit / peer (< 1: rwkvkit faster)"
                        if kind == "time"
                        else "rate rwkvkit / peer (> 1: rwkvkit faster)"
                    )
                    ratios.append(f"- {case}: {say} vs {peer}: **{ratio:.2f}**")
                    if "peak_gib" in ours and ours.get("peak_gib") and theirs.get("peak_gib"):
                        ratios[-1] += (
                            f"; peak memory rwkvkit / {peer}: {ours['peak_gib'] / theirs['peak_gib']:.2f}"
                        )
        if ratios:
            lines += ["", *ratios]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out",
        default=str(Path(__file__).parent / "results"),
        help="folder of the results files gpu-<date>.jsonl and .md (default benchmarks/results)",
    )
    parser.add_argument(
        "--phases",
        default=",".join(PHASES),
        help=f"comma-separated phases to run, of {','.join(PHASES)} (default all; the "
        "machine's ceilings are always measured)",
    )
    parser.add_argument("--quick", action="store_true", help="fewer timed iterations (same shapes)")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny shapes that run on a CPU too (the op under TRITON_INTERPRET=1); peers that "
        "are absent, or need a GPU that is absent, are recorded as skipped",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=480.0,
        help="seconds for the whole run (default 480), shared among the parts; a part that "
        "overruns its share is killed and recorded as skipped: budget",
    )
    parser.add_argument(
        "--autotune-configs",
        type=int,
        default=4,
        help="at most this many configurations per Triton autotuner, both libraries "
        "alike (default 4; 0 keeps every configuration)",
    )
    parser.add_argument(
        "--work",
        default=None,
        help="scratch folder for the checkpoint and, unless TRITON_CACHE_DIR is set, "
        "Triton's cache shared by the parts (default: a folder under the temp dir)",
    )
    parser.add_argument(
        "--official-prefill",
        type=int,
        default=None,
        help="prompt length of the official package's prefill (default 1024; 8 with --smoke)",
    )
    parser.add_argument("--cpu", action="store_true", help="run on the CPU even where a GPU is present")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--results", help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.phases = [p for p in args.phases.split(",") if p]
    unknown = set(args.phases) - set(PHASES)
    if unknown:
        parser.error(f"unknown phases {sorted(unknown)}; choose from {','.join(PHASES)}")
    if args.worker:
        worker(args)
        return Path(args.results)

    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now()
    stem = f"gpu-{now:%Y-%m-%d-%H%M%S}" + ("-smoke" if mode == "smoke" else "")
    results = out / f"{stem}.jsonl"
    work = Path(args.work or Path(os.environ.get("TMPDIR", "/tmp")) / "rwkvkit-gpu-bench")
    work.mkdir(parents=True, exist_ok=True)
    child_env = dict(os.environ, PYTHONUNBUFFERED="1")
    child_env.setdefault("TRITON_CACHE_DIR", str(work / "triton-cache"))
    src = str(Path(__file__).resolve().parent.parent / "src")
    child_env["PYTHONPATH"] = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)

    env = {
        "date": now.isoformat(timespec="seconds"),
        "mode": mode,
        "phases": args.phases,
        "budget_s": args.budget,
        "autotune_configs": args.autotune_configs,
        "triton_cache_dir": child_env["TRITON_CACHE_DIR"],
        **environment(),
    }
    Recorder(results, "run")(phase="run", case="environment", lib="-", status="ok", **env)
    print(f"results: {results}", flush=True)

    start = time.time()
    end = start + args.budget
    parts = [(p, ph, share) for p, ph, share in PARTS if not ph or set(ph) & set(args.phases)]
    total_share = sum(share for _, _, share in parts)
    carry = 0.0
    for i, (part, _, share) in enumerate(parts):
        now_t = time.time()
        later = sum(sh for _, _, sh in parts[i + 1 :]) / total_share * args.budget
        budget = min(share / total_share * args.budget + carry, max(end - now_t - 0.5 * later, 0.0))
        print(f"== {part} (budget {budget:.0f} s)", flush=True)
        why = peer_available(part, env["device"] != "cpu" and not args.cpu)
        if why:
            Recorder(results, part)(phase=part.split(".")[0], case="*", lib=part.split(".")[-1], status=why)
            carry += share / total_share * args.budget
            continue
        if budget < 5:
            Recorder(results, part)(
                phase=part.split(".")[0],
                case="*",
                lib=part.split(".")[-1],
                status="skipped: budget",
                note="no time left for this part",
            )
            continue
        deadline = now_t + budget
        cmd = [
            sys.executable,
            __file__,
            "--worker",
            part,
            "--results",
            str(results),
            "--deadline",
            str(deadline),
            "--mode",
            mode,
            "--phases",
            ",".join(args.phases),
            "--work",
            str(work),
            "--autotune-configs",
            str(args.autotune_configs),
        ]
        if args.official_prefill:
            cmd += ["--official-prefill", str(args.official_prefill)]
        if args.cpu:
            cmd.append("--cpu")
        penv = dict(child_env)
        if mode == "smoke" and part.startswith("op."):
            penv["TRITON_INTERPRET"] = "1"
        t0 = time.time()
        try:
            proc = subprocess.run(cmd, env=penv, timeout=budget + 10)
            status = "ok" if proc.returncode == 0 else f"error: exit status {proc.returncode}"
        except subprocess.TimeoutExpired:
            status = "skipped: budget (killed; the cases recorded before stand)"
        Recorder(results, part)(
            phase="part",
            case=part,
            lib=part.split(".")[-1],
            status=status,
            wall_s=time.time() - t0,
            budget_s=budget,
        )
        carry = max(deadline - time.time(), 0.0)

    records = [json.loads(line) for line in results.read_text().splitlines()]
    env["wall_s"] = time.time() - start
    summary = out / f"{stem}.md"
    summary.write_text(summarize(records, env))
    print(summary.read_text(), flush=True)
    print(f"results: {results}\nsummary: {summary}", flush=True)
    return results


if __name__ == "__main__":
    main()
