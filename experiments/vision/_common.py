"""Shared helpers of the vision experiments: run a list of training configs, write table, CSV and plot."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run_all(runs: dict[str, dict], base: dict, out_root: str) -> dict[str, dict]:
    """Train every run (``name -> VisionTrainConfig fields``) over ``base``; returns name -> result."""
    from rwkvkit.vision.train import VisionTrainConfig, train

    results = {}
    for name, fields in runs.items():
        slug = "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")
        slug = "-".join(
            part for part in slug.split("-") if part
        )  # "RWKV backbone, fusion" -> rwkv-backbone-fusion
        cfg = VisionTrainConfig(**{**base, **fields, "out_dir": f"{out_root}/{slug}"})
        print(f"== {name}: {cfg.model} {cfg.overrides}", flush=True)
        results[name] = train(cfg)
        results[name]["config"] = cfg
    return results


def write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def command_line() -> str:
    import shlex

    script = Path(sys.argv[0]).relative_to(Path.cwd()) if Path(sys.argv[0]).is_absolute() else sys.argv[0]
    return "python " + shlex.join([str(script), *sys.argv[1:]])


def machine() -> str:
    import os

    import torch

    cpu = "unknown CPU"
    try:
        cpu = next(
            line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    rev = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    return f"{cpu}, {os.cpu_count()} CPUs, torch {torch.__version__}, rwkvkit commit {rev or '?'}"


def plot_curves(path: Path, results: dict[str, dict], key: str, ylabel: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, res in results.items():
        h = res["history"]
        ax.plot([r["epoch"] for r in h], [r[key] for r in h], marker="o", label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
