"""Adapt the shipped default model to a held-out domain with full fine-tuning, LoRA, PiSSA and state
tuning at equal steps; and LAMBADA of the default model and of a random RWKV-7 0.1B (the floor).

    python experiments/finetune/finetune.py                 # all four methods, then LAMBADA (~40 min)
    python experiments/finetune/finetune.py --steps 40 --lambada-limit 200   # a quick pass

The domain: the Python standard library's test suites (``Lib/test/test_*.py``), which the default
model never saw (its corpus leaves the test suites out, ``rwkvkit.data.corpus``). They are tokenized
with the default model's own tokenizer into ``runs/finetune/data`` (whole files held out for
validation). Every method trains ``--steps`` optimiser steps of 8 windows of 256 tokens from the
same base, evaluating on the same validation tokens every ``--eval-every`` steps; the script writes

* ``experiments/finetune/results/<method>.csv`` (each run's loss.csv) and ``summary.json``;
* ``experiments/finetune/finetune.md`` (the table: validation loss before and after, bits per byte,
  trainable parameters, output file size next to the model's, wall time; and LAMBADA);
* ``experiments/finetune/val_loss.png`` (the validation and training loss curves of all methods).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import sysconfig
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
RUNS = ROOT / "runs" / "finetune"
LAMBADA = ROOT.parent / "shared" / "data" / "eval" / "lambada_test.jsonl"
METHODS = ("full", "lora", "pissa", "state")


def test_files(limit_kb: int, count: int) -> list[Path]:
    """The stdlib's test modules (the held-out domain): ``count`` files under ``limit_kb`` KiB, by name."""
    root = Path(sysconfig.get_paths()["stdlib"]) / "test"
    files = sorted(p for p in root.glob("test_*.py") if p.stat().st_size <= limit_kb * 1024)
    return files[:count]


def prepare_data(out: Path, count: int) -> Path:
    from rwkvkit.assets import DEFAULT_DIR
    from rwkvkit.data import prepare

    if (out / "meta.json").is_file():
        return out
    files = test_files(limit_kb=48, count=count)
    prepare([str(f) for f in files], out, tokenizer=str(DEFAULT_DIR / "tokenizer.json"), val_fraction=0.1,
            seed=0, quiet=True)  # fmt: skip
    return out


def file_size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else 0


def base_val_loss(data: Path, cfg) -> tuple[float, float]:
    """The default model's validation loss and bits per byte on the same windows the runs evaluate."""
    import rwkvkit
    from rwkvkit.data import open_tokens
    from rwkvkit.training.loop import evaluate

    model = rwkvkit.load("default", dtype="fp32").train()
    val = open_tokens(data, split="val")
    table = torch.as_tensor(val.token_bytes_table(), dtype=torch.long)
    table = torch.nn.functional.pad(table, (0, model.config.vocab_size - len(table)))
    return evaluate(model, val, cfg, table, torch.device("cpu"))


def run_method(method: str, data: Path, steps: int, eval_every: int, threads: int) -> dict:
    from rwkvkit.cli.finetune import METHOD_DEFAULTS
    from rwkvkit.finetune import finetune
    from rwkvkit.training.config import TrainConfig

    out = RUNS / method
    cfg = TrainConfig.from_dict({
        **METHOD_DEFAULTS[method], "data": str(data), "out_dir": str(out), "init_from": "default",
        "finetune": method, "max_steps": steps, "warmup_steps": min(20, steps // 5), "ctx_len": 256,
        "batch_size": 8, "eval_every": eval_every, "save_every": steps, "eval_tokens": 32768,
        "progress": False, "threads": threads, "lora_r": 8, "lora_alpha": 16,
    })  # fmt: skip
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    result = finetune(cfg)
    seconds = time.perf_counter() - t0
    load_after = os.getloadavg()[0]
    trainable = trainable_parameters(method)
    output = {"full": "model.safetensors", "lora": "adapter.safetensors", "pissa": "adapter.safetensors",
              "state": "state.safetensors"}[method]  # fmt: skip
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / f"{method}.csv").write_text((out / "loss.csv").read_text())
    return {
        "method": method,
        "steps": result.step,
        "lr": cfg.lr,
        "val_loss": result.val_loss,
        "val_bpb": result.val_bpb,
        "trainable": trainable,
        "output": output,
        "output_bytes": file_size(out / output),
        "seconds": round(seconds, 1),
        "load": [round(load_before, 2), round(load_after, 2)],  # 1-min load average (2 cores): others' work
        "config": cfg.to_dict(),
    }


def trainable_parameters(method: str) -> int:
    """Trainable parameters of ``method`` on the default model (counted on a fresh copy)."""
    import rwkvkit
    from rwkvkit.finetune import StateTuned, apply_lora

    model = rwkvkit.load("default", dtype="fp32")
    if method == "full":
        return sum(p.numel() for p in model.parameters())
    if method == "state":
        return StateTuned(model).wkv.numel()
    apply_lora(model, r=8, alpha=16)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def lambada_rows(limit: int | None) -> list[dict]:
    import rwkvkit
    from rwkvkit.eval import lambada
    from rwkvkit.models.rwkv.config import RWKVConfig
    from rwkvkit.models.rwkv.init import random_model

    rows = []
    models = [
        ("default model (4096-id BPE, trained on stdlib code)", lambda: (rwkvkit.load("default", dtype="fp32"),
                                                                          rwkvkit.load_tokenizer("default"))),
        ("random RWKV-7 0.1B (World vocabulary): the floor", lambda: (random_model(
            RWKVConfig.from_name("rwkv7-0.1b"), seed=0), rwkvkit.load_tokenizer("world"))),
    ]  # fmt: skip
    for name, build in models:
        model, tok = build()
        model.eval()
        t0 = time.perf_counter()
        r = lambada(model, tok, LAMBADA, limit=limit)
        rows.append({"model": name, **_as_dict(r), "seconds": round(time.perf_counter() - t0, 1)})
        print(f"LAMBADA {name}: {rows[-1]}", flush=True)
    return rows


def _as_dict(result) -> dict:
    if isinstance(result, dict):
        return dict(result)
    return {k: getattr(result, k) for k in ("accuracy", "perplexity", "documents") if hasattr(result, k)}


def plot(methods: list[str], base_loss: float, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = {"full": "C0", "lora": "C1", "pissa": "C2", "state": "C3"}
    for m in methods:
        rows = list(csv.DictReader((HERE / "results" / f"{m}.csv").open()))
        steps = [int(r["step"]) for r in rows]
        ax1.plot(steps, [float(r["train_loss"]) for r in rows], color=colors[m], alpha=0.8, label=m)
        val = [(int(r["step"]), float(r["val_loss"])) for r in rows if r.get("val_loss")]
        ax2.plot([0] + [s for s, _ in val], [base_loss] + [v for _, v in val], "o-", color=colors[m], label=m)
    ax1.set(title="training loss", xlabel="step", ylabel="nats per token")
    ax2.set(title="validation loss (held-out test files)", xlabel="step", ylabel="nats per token")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("Adapting the default model to the stdlib's test suites: equal steps per method")
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def write_report(summary: dict) -> None:
    base = summary["base"]
    model_bytes = summary["model_bytes"]
    lines = [
        "# Fine-tuning the default model on a held-out domain",
        "",
        f"Command: `{summary['command']}` (rwkvkit {summary['commit']}, {summary['machine']}).",
        "",
        f"Domain: {summary['data']['files']} stdlib test modules (`Lib/test/test_*.py`, never in the default "
        f"model's corpus), {summary['data']['train_tokens']:,} training and {summary['data']['val_tokens']:,} "
        "validation tokens (whole files held out); windows of 256 tokens, batch 8, "
        f"{summary['steps']} steps per method, bf16; validation on the first 32,768 validation tokens.",
        "",
        "| method | lr | val loss (nats) | val bits/byte | trainable parameters | output file | wall time | load avg |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        f"| base model (no training) | - | {base[0]:.4f} | {base[1]:.4f} | - | "
        f"model.safetensors {model_bytes / 2**20:.1f} MiB (bf16) | - | - |",
    ]
    for r in summary["runs"]:
        load = "-" if "load" not in r else f"{r['load'][0]:.1f} / {r['load'][1]:.1f}"
        lines.append(
            f"| {r['method']} | {r['lr']:g} | {r['val_loss']:.4f} | {r['val_bpb']:.4f} | {r['trainable']:,} | "
            f"{r['output']} {r['output_bytes'] / 2**10:,.0f} KiB | {r['seconds'] / 60:.1f} min | {load} |"
        )
    lines += [
        "",
        "Wall time is of the whole run (loading, 150 steps, 7 validation passes, saving) on 2 cores; the",
        "load average (1 min, at the start / end of the run) shows when other work shared them.",
    ]
    lines += ["", "![loss curves](val_loss.png)", ""]
    if summary.get("lambada"):
        lines += [
            "## LAMBADA (OpenAI test split, 5153 passages; `rwkvkit eval lambada`)",
            "",
            f"Command: `{summary.get('lambada_command', summary['command'])}`.",
            "",
            "| model | passages | accuracy | perplexity | time |",
            "|---|---:|---:|---:|---:|",
        ]
        for r in summary["lambada"]:
            lines.append(
                f"| {r['model']} | {r.get('documents', '-')} | {100 * r['accuracy']:.2f}% | {r['perplexity']:.1f} | "
                f"{r['seconds'] / 60:.1f} min |"
            )
        lines += [
            "",
            "The default model is a 4096-id code model: English prose is out of its domain, so its LAMBADA",
            "numbers only show that the pipeline runs end to end; the random model is the floor.",
            "",
        ]
    (HERE / "finetune.md").write_text("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=150, help="optimiser steps per method (default 150)")
    ap.add_argument("--eval-every", type=int, default=25, help="steps between validation passes (default 25)")
    ap.add_argument(
        "--methods", nargs="+", default=list(METHODS), choices=METHODS, help="which methods to run"
    )
    ap.add_argument(
        "--files", type=int, default=160, help="how many test modules make the domain (default 160)"
    )
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--lambada-limit", type=int, default=None, help="LAMBADA passages (default: all 5153)")
    ap.add_argument("--skip-lambada", action="store_true", help="do not run LAMBADA")
    ap.add_argument(
        "--replace",
        action="store_true",
        help="run --methods again and replace their rows in results/summary.json (the others are kept)",
    )
    ap.add_argument(
        "--lambada-only",
        action="store_true",
        help="keep the fine-tuning results of results/summary.json; run LAMBADA",
    )
    args = ap.parse_args()
    if args.lambada_only:
        summary = json.loads((HERE / "results" / "summary.json").read_text())
        summary["lambada"] = lambada_rows(args.lambada_limit)
        summary["lambada_command"] = "python experiments/finetune/finetune.py " + " ".join(sys.argv[1:])
        (HERE / "results" / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
        write_report(summary)
        print((HERE / "finetune.md").read_text())
        return

    import subprocess

    from rwkvkit.assets import DEFAULT_DIR
    from rwkvkit.data import open_tokens
    from rwkvkit.training.config import TrainConfig

    data = prepare_data(RUNS / "data", args.files)
    cfg = TrainConfig(data=str(data), ctx_len=256, batch_size=8, eval_tokens=32768)
    base = base_val_loss(data, cfg)
    print(f"base model: val loss {base[0]:.4f}, {base[1]:.4f} bits/byte", flush=True)
    runs = []
    previous = None
    if args.replace:
        previous = json.loads((HERE / "results" / "summary.json").read_text())
    for method in args.methods:
        print(f"== {method}", flush=True)
        runs.append(run_method(method, data, args.steps, args.eval_every, args.threads))
        print({k: v for k, v in runs[-1].items() if k != "config"}, flush=True)
    if previous is not None:
        fresh = {r["method"]: r for r in runs}
        runs = [fresh.pop(r["method"], r) for r in previous["runs"]] + list(fresh.values())
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    meta = json.loads((data / "meta.json").read_text())
    summary = {
        "command": "python experiments/finetune/finetune.py " + " ".join(sys.argv[1:]),
        "commit": commit.stdout.strip(),
        "machine": f"{torch.get_num_threads()} threads, torch {torch.__version__}",
        "steps": args.steps,
        "data": {
            "files": args.files,
            "train_tokens": len(open_tokens(data, split="train")),
            "val_tokens": len(open_tokens(data, split="val")),
            "skipped": meta.get("skipped"),
        },
        "base": base,
        "model_bytes": file_size(DEFAULT_DIR / "model.safetensors"),
        "runs": runs,
        "lambada": None if args.skip_lambada else lambada_rows(args.lambada_limit),
    }
    if previous is not None:
        summary["command"] = previous["command"] + "; then " + summary["command"]
        if args.skip_lambada and previous.get("lambada"):
            summary["lambada"] = previous["lambada"]
            summary["lambada_command"] = previous.get("lambada_command", previous["command"])
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    plot([r["method"] for r in runs], base[0], HERE / "val_loss.png")
    write_report(summary)
    print((HERE / "finetune.md").read_text())


if __name__ == "__main__":
    main()
