"""The default model against a same-size transformer: validation bits per byte and training time.

    python experiments/default_model/report.py [--rwkv runs/default-model] [--gpt runs/default-gpt]

Reads both runs' ``loss.csv`` and ``config.toml`` (written by ``rwkvkit train``) and writes
``results.md`` and ``val_bpb.png`` beside this script, plus copies of the two loss logs.
"""

from __future__ import annotations

import argparse
import csv
import shutil
from pathlib import Path

HERE = Path(__file__).resolve().parent


def load_run(run: Path) -> dict:
    rows = list(csv.DictReader(open(run / "loss.csv")))
    evals = [r for r in rows if r["val_bpb"]]
    import tomllib

    cfg = tomllib.loads((run / "config.toml").read_text())
    return {"rows": rows, "evals": evals, "cfg": cfg, "run": run}


def n_params(run: dict, vocab: int) -> int:
    from rwkvkit.training.config import TrainConfig
    from rwkvkit.training.loop import build_model

    cfg = TrainConfig.from_dict(run["cfg"])
    return sum(p.numel() for p in build_model(cfg, vocab).parameters())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rwkv", default="runs/default-model", help="the RWKV-7 run folder")
    p.add_argument("--gpt", default="runs/default-gpt", help="the transformer run folder")
    args = p.parse_args()
    runs = {"RWKV-7 (default model)": load_run(Path(args.rwkv)), "GPT transformer": load_run(Path(args.gpt))}
    vocab = 4096
    lines = [
        "# Default model vs a same-size transformer",
        "",
        "Same data (Python standard library sources, byte-level BPE 4096, 40 held-out files),",
        "same tokens, batch, context and schedule. Produced by `python experiments/default_model/report.py`",
        "from the runs of `rwkvkit train --preset default-model` and `rwkvkit train --preset default-gpt`.",
        "",
        "| model | parameters | layers x width | training tokens | training time "
        "| val loss (nats/token) | val bits/byte |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, run in runs.items():
        last = run["evals"][-1]
        cfg = run["cfg"]
        minutes = float(run["rows"][-1]["elapsed_s"]) / 60
        lines.append(
            f"| {name} | {n_params(run, vocab) / 1e6:.2f} M | {cfg['n_layer']} x {cfg['n_embd']} | "
            f"{int(last['tokens']) / 1e6:.2f} M | {minutes:.1f} min | {float(last['val_loss']):.4f} | "
            f"{float(last['val_bpb']):.4f} |"
        )
        shutil.copyfile(run["run"] / "loss.csv", HERE / f"loss_{'rwkv7' if 'RWKV' in name else 'gpt'}.csv")
    lines += ["", "Validation during training:", "", "| tokens | " + " | ".join(runs) + " |",
              "|---|" + "---|" * len(runs)]  # fmt: skip
    by_tokens = {}
    for name, run in runs.items():
        for r in run["evals"]:
            by_tokens.setdefault(int(r["tokens"]), {})[name] = float(r["val_bpb"])
    for t in sorted(by_tokens):
        cells = [f"{by_tokens[t][n]:.4f}" if n in by_tokens[t] else "" for n in runs]
        lines.append(f"| {t / 1e6:.2f} M | " + " | ".join(cells) + " |")
    (HERE / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, run in runs.items():
        ax.plot([int(r["tokens"]) / 1e6 for r in run["evals"]], [float(r["val_bpb"]) for r in run["evals"]],
                "o-", label=name)  # fmt: skip
    ax.set_xlabel("training tokens (millions)")
    ax.set_ylabel("validation bits per byte")
    ax.set_title("Python stdlib, held-out files")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(HERE / "val_bpb.png", dpi=110)


if __name__ == "__main__":
    main()
