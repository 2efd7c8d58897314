"""Batch-1 decoding against the memory-bandwidth bound, per weight precision, in one noisy-machine-proof run.

    python benchmarks/decode_bound.py                          # bf16, int8, q4 on the RWKV-7 0.1B shape
    python benchmarks/decode_bound.py --weights q4 --profile   # + where a token's time goes
    python benchmarks/decode_bound.py --weights q4:q4 q4:int8 q4:bf16   # q4 with three heads

Decoding one token at batch 1 reads every weight once, so its time is bounded below by
``bytes of weights read / read bandwidth``. On a shared machine both numbers move from second to
second, so this script measures them *interleaved*: each round measures the read bandwidth (a sum
over 256 MB, as :func:`rwkvkit.utils.perf.read_bandwidth`) and then decodes ``--tokens`` tokens with
every precision in turn; a round's "% of bound" is ``bytes / (time per token x bandwidth)`` with
the round's own bandwidth (the best of the measurements just before and just after). Printed: the
median over rounds of the time per token, tok/s and % of bound, and the best round. With
``--threads 1 --clock cpu`` both the decoding and the bandwidth sums are timed in the thread's CPU
time, which leaves out the time slices the OS gives other processes (a token then costs what it
would on an idle core; the ratio is against one core's bandwidth).

``--profile`` adds, per precision, the median time of the parts of a token: the decoding operator
(``fused.model_decode``: embedding, every block, ``ln_out`` and the head) and the rest (state copies,
Python); and inside the operator (its own timers, thread 0, barrier waits included, summed over the
blocks) the stages: LN1 + mixes + r/k/v + LoRA down, the per-head work (LoRA up, WKV, GroupNorm),
the output projection, LN2 + FFN key, FFN value (+ the barrier after the block), the head, and the
end of the parallel region.

All precisions live in one process (the models share nothing; the 0.1B shape needs ~1.5 GB for
fp32 embeddings x 3 models).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ for generate.weight_bytes_read

from generate import weight_bytes_read  # noqa: E402

CLOCK = time.perf_counter  # --clock cpu: time.thread_time (the calling thread's CPU time)


def bandwidth(buf: torch.Tensor, repeat: int = 5) -> float:
    """Read bandwidth in bytes/s: best of ``repeat`` sums of ``buf`` (much larger than the caches)."""
    buf.sum()
    best = min(_timed(buf.sum) for _ in range(repeat))
    return buf.numel() * buf.element_size() / best


def _timed(fn) -> float:
    t = CLOCK()
    fn()
    return CLOCK() - t


class Decoder:
    """One optimized model decoding greedily at batch 1, timed per token (and per part with ``profile``)."""

    def __init__(self, model, profile: bool) -> None:
        self.model, self.profile = model, profile
        g = torch.Generator().manual_seed(0)
        with torch.inference_mode():
            logits, self.state = model(torch.randint(0, model.config.vocab_size, (1, 16), generator=g))
        self.tok = logits[:, -1:].argmax(-1)
        self.nbytes = weight_bytes_read(model)
        self.parts: dict[str, list[float]] = {"model op": [], "rest": []}
        self.stages: list[list[float]] = []  # per token: seconds per stage, all blocks together

    @torch.inference_mode()
    def step(self) -> float:
        t0 = CLOCK()
        if self.profile:
            self._step_profiled()
        else:
            logits, self.state = self.model(self.tok, self.state)
            self.tok = logits[:, -1].argmax(-1, keepdim=True)
        return CLOCK() - t0

    def _step_profiled(self) -> None:
        """``OptimizedRWKV._decode_fused`` spelt out with timers around its parts."""
        from rwkvkit.inference import fused

        m, state, ops = self.model, self.state, torch.ops.rwkvkit_kernels
        t0 = CLOCK()
        att = state["att_shift"].float().contiguous().clone()
        ffn = state["ffn_shift"].float().contiguous().clone()
        wkv_in = state["wkv"].float().contiguous()
        wkv = torch.empty_like(wkv_in)
        plan = m._packed_model()
        ops.rwkv7_decode_profile(True)
        t1 = CLOCK()
        logits = fused.model_decode(m, plan, self.tok[:, 0], att, wkv_in, wkv, ffn).unsqueeze(1)
        t2 = CLOCK()
        self.stages.append((ops.rwkv7_decode_profile(False)[:-1].double() * 1e-9).tolist())
        self.state = m._end({"att_shift": att, "wkv": wkv, "ffn_shift": ffn}, logits)
        self.tok = logits[:, -1].argmax(-1, keepdim=True)
        t3 = CLOCK()
        self.parts["model op"].append(t2 - t1)
        self.parts["rest"].append(t1 - t0 + t3 - t2)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="runs/bench/rwkv7-0.1b-random.pth",
                   help="checkpoint (if missing: a random RWKV-7 0.1B one is made)")  # fmt: skip
    p.add_argument("--weights", nargs="+", default=["bf16", "int8", "q4"],
                   help="precisions to compare; WEIGHTS:HEAD sets the head's (q4:bf16)")  # fmt: skip
    p.add_argument("--head", default=None, help="output-head precision for q4 (default: optimize's)")
    p.add_argument("--rounds", type=int, default=9, help="interleaved rounds (default 9)")
    p.add_argument("--tokens", type=int, default=16, help="tokens decoded per precision and round")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--profile", action="store_true", help="time the parts of a token")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="cpu: the thread's CPU time for decoding and for the bandwidth sums alike, so "
                        "time the OS gives other processes is left out (with --threads 1 only)")  # fmt: skip
    args = p.parse_args()
    if args.clock == "cpu":
        if args.threads != 1:
            p.error("--clock cpu measures one thread: add --threads 1")
        global CLOCK
        CLOCK = time.thread_time

    import rwkvkit
    from rwkvkit.inference import optimize

    if args.threads:
        torch.set_num_threads(args.threads)
    ckpt = Path(args.model)
    if not ckpt.exists():
        from rwkvkit.models.rwkv.config import RWKVConfig
        from rwkvkit.models.rwkv.init import random_checkpoint

        print(f"creating a random official-format checkpoint of the RWKV-7 0.1B shape at {ckpt}", flush=True)
        random_checkpoint(RWKVConfig.from_name("rwkv7-0.1b"), ckpt, seed=0, dtype=torch.bfloat16)
    decoders = {}
    for spec in args.weights:  # "q4" or "q4:bf16" (weights:head)
        w, _, head = spec.partition(":")
        head = head or (args.head if w == "q4" else "") or None
        kw = {"head": head} if head else {}  # (no head argument: older rwkvkit, for before/after runs)
        model = optimize(rwkvkit.load(ckpt), weights=w, copy_model=False, **kw)
        decoders[spec] = Decoder(model, args.profile)
    buf = torch.ones(2**26, dtype=torch.float32)  # 256 MB
    times: dict[str, list[float]] = {w: [] for w in decoders}
    ratios: dict[str, list[float]] = {w: [] for w in decoders}
    bws = []
    for _ in range(args.rounds):
        bw0 = bandwidth(buf)
        round_times = {}
        for w, d in decoders.items():
            d.step()  # warm: caches hold another model's weights now
            round_times[w] = statistics.median(d.step() for _ in range(args.tokens))
        bw = max(bw0, bandwidth(buf))
        bws.append(bw)
        for w, t in round_times.items():
            times[w].append(t)
            ratios[w].append(decoders[w].nbytes / (t * bw))
    print(f"{torch.get_num_threads()} threads, {args.clock} clock; read bandwidth per round (GB/s): "
          + " ".join(f"{b / 1e9:.1f}" for b in bws))  # fmt: skip
    print(f"{'weights':10} {'MB/token':>9} {'ms/token':>9} {'tok/s':>7} {'% bound':>8} {'best %':>7}")
    for w, d in decoders.items():
        t = statistics.median(times[w])
        print(f"{w:10} {d.nbytes / 1e6:9.1f} {1e3 * t:9.2f} {1 / t:7.1f} "
              f"{100 * statistics.median(ratios[w]):7.0f}% {100 * max(ratios[w]):6.0f}%")  # fmt: skip
    if args.profile:
        print("\nmedian ms per token part:")
        for w, d in decoders.items():
            cells = "  ".join(f"{k} {1e3 * statistics.median(v):6.2f}" for k, v in d.parts.items())
            print(f"  {w:8} {cells}")
        names = ("ln1+rkv+lora_down", "heads", "output", "ln2+ffn_key", "ffn_value", "head", "join")
        print("\nmedian ms per token in the fused blocks' stages (thread 0, barrier waits included):")
        for w, d in decoders.items():
            med = [statistics.median(s[i] for s in d.stages) for i in range(len(names))]
            print(f"  {w:8} " + "  ".join(f"{n} {1e3 * v:5.2f}" for n, v in zip(names, med)))


if __name__ == "__main__":
    main()
