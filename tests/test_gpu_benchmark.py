"""benchmarks/gpu.py --smoke: the whole run (every phase, each part in its own process) at tiny
shapes on the CPU, with the peers that need a GPU recorded as skipped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_benchmark_smoke(tmp_path):
    # the op phase runs rwkvkit's triton tier in Triton's interpreter; the model phases use 'chunk'
    env = dict(os.environ, TRITON_CACHE_DIR=str(tmp_path / "triton"), TRITON_INTERPRET="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), env.get("PYTHONPATH")) if p)
    # a generous budget: a slow CI machine must not turn a part into "skipped: budget"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--smoke", "--cpu", "--out", str(tmp_path),
           "--work", str(tmp_path / "work"), "--budget", "1500"]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    [results] = tmp_path.glob("gpu-*-smoke.jsonl")
    [summary] = tmp_path.glob("gpu-*-smoke.md")
    records = [json.loads(line) for line in results.read_text().splitlines()]

    def find(phase, case, lib):
        found = [r for r in records if (r["phase"], r["case"], r["lib"]) == (phase, case, lib)]
        assert len(found) == 1, (phase, case, lib, [(r["phase"], r["case"], r["lib"]) for r in records])
        return found[0]

    # every part ran to its end within its budget
    parts = {r["case"]: r["status"] for r in records if r["phase"] == "part"}
    assert parts == dict.fromkeys(
        ["ceilings", "op.rwkvkit", "train.rwkvkit", "infer.rwkvkit", "infer.official"], "ok"
    )
    assert find("ceilings", "machine", "-")["bf16_tflops"] > 0
    assert find("run", "environment", "-")["mode"] == "smoke"

    for case in ("B1-T24-H1-K16 fwd", "B1-T24-H1-K16 fwd+bwd"):
        r = find("op", case, "rwkvkit")
        assert r["status"] == "ok" and r["ms"] > 0 and r["impl"] == "rwkvkit wkv7 triton", r
    variants = [r for r in records if r["phase"] == "op" and r["case"].startswith("variant")]
    assert len(variants) == 2 and all(r["status"] == "ok" and r["ms"] > 0 for r in variants), variants
    for dtype, tol in (("float32", 1e-4), ("bfloat16", 5e-2)):
        r = find("op", f"error T20 {dtype}", "rwkvkit")
        assert r["status"] == "ok" and r["rel_rms_o"] < tol and r["rel_rms_grads"] < tol, r

    train = [r for r in records if r["phase"] == "train" and r["lib"] == "rwkvkit"]
    assert [r["status"] for r in train] == ["ok", "ok"] and train[1]["tokens_per_s"] > 0, train
    assert "mfu_measured" in train[1] and train[1]["mfu_formula"].startswith("(6 * matmul_params")

    for batch in (1, 4):
        assert find("decode", f"batch {batch}", "rwkvkit")["tokens_per_s"] > 0
    assert find("prefill", "prompt 32", "rwkvkit")["tokens_per_s"] > 0
    assert find("prefill", "prompt 8", "rwkvkit")["tokens_per_s"] > 0

    # peers: fla needs a GPU (skipped here); the official package runs on the CPU where installed
    for phase in ("op", "train"):
        assert find(phase, "*", "fla")["status"].startswith("skipped"), phase
    assert find("decode", "batch 4", "official")["status"].startswith("skipped")
    official = find("decode", "batch 1", "official")
    assert official["status"] == "ok" or official["status"].startswith("skipped"), official

    text = summary.read_text()
    for heading in ("## op", "## train", "## decode", "## prefill", "Ceilings measured in this run"):
        assert heading in text
