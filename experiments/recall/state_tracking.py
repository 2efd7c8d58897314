"""State tracking: a word problem over a permutation group, trained short and tested longer.

    python experiments/recall/state_tracking.py [--group A5] [--layers 1 2 4] [--models rwkv7 rwkv6 rwkv4 attention]

Each token is an element of the group (A5: the 60 even permutations of 5 items; S5: all 120); the
label at every position is the product of all elements so far (``rwkvkit.data.synthetic``). Models
(``rwkvkit.models.mixers.MixerLM``, d_model 64, with an MLP after every mixer) are trained on
sequences of ``--train-len`` tokens and scored (per-position accuracy) on sequences up to 4x longer.
RWKV-7's claim (``seed-systems.md`` section 7): its generalised delta rule tracks such states, which
diagonal-decay RNNs (RWKV-4/6) and transformers of fixed depth cannot in general.

Each finished model appends a JSON line to ``results/state_tracking.jsonl`` (finished ones are
skipped); the report writes ``state_tracking.md``, ``.csv`` and ``.png`` beside this script.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "vision"))
from _common import command_line, machine  # noqa: E402

sys.path.insert(0, str(HERE))
from _train import fit_lm, log_command, logged_commands  # noqa: E402

RESULTS = HERE / "results" / "state_tracking.jsonl"
COMMANDS = HERE / "results" / "state_tracking_commands.txt"


def run(args) -> None:
    from rwkvkit.data.synthetic import permutation_word_problem
    from rwkvkit.models.mixers import MixerLM, MixerLMConfig

    log_command(COMMANDS, command_line())
    train = permutation_word_problem(args.train, args.train_len, args.group, seed=args.seed)
    lengths = [args.train_len * m for m in (1, 2, 4)]
    tests = {n: permutation_word_problem(args.test, n, args.group, seed=1000 + n) for n in lengths}
    vocab = int(train.num_elements)
    done = set()
    if RESULTS.is_file():
        done = {(r["group"], r["model"], r["layers"]) for r in map(json.loads, RESULTS.open())}
    for n_layers in args.layers:
        for mixer in args.models:
            if (args.group, mixer, n_layers) in done:
                continue
            cfg = MixerLMConfig(vocab_size=vocab, d_model=64, layers=(mixer,) * n_layers, n_heads=4,
                                head_size=16, mlp=True)  # fmt: skip
            model = MixerLM(cfg, seed=args.seed)
            t0 = time.perf_counter()
            print(f"== {args.group} {mixer} x{n_layers}: {model.num_params():,} parameters", flush=True)
            fit_lm(model, train.inputs, train.labels, epochs=args.epochs, batch=args.batch, lr=args.lr,
                   weight_decay=0.01, seed=args.seed)  # fmt: skip
            acc = {}
            with torch.no_grad():
                for n, d in tests.items():
                    acc[n] = float((model(d.inputs).argmax(-1) == d.labels).float().mean())
            row = {"group": args.group, "model": mixer, "layers": n_layers, "params": model.num_params(),
                   "train_len": args.train_len, "seconds": round(time.perf_counter() - t0, 1),
                   **{f"acc_T{n}": a for n, a in acc.items()}}  # fmt: skip
            print("   " + "  ".join(f"T={n}: {a:.3f}" for n, a in acc.items()), flush=True)
            with RESULTS.open("a") as f:
                f.write(json.dumps(row) + "\n")


def report() -> None:
    rows = [json.loads(line) for line in RESULTS.open()]
    keys = sorted({k for r in rows for k in r if k.startswith("acc_T")}, key=lambda k: int(k[5:]))
    with open(HERE / "state_tracking.csv", "w", newline="") as f:
        w = csv.DictWriter(
            f, fieldnames=["group", "model", "layers", "params", "train_len", "seconds", *keys]
        )
        w.writeheader()
        w.writerows(rows)
    cmds = logged_commands(COMMANDS)
    md = ["# State tracking: permutation word problems, trained short, tested longer", "",
          "Per-position accuracy of the running product (chance: 1 / group size). d_model 64, an MLP after "
          "every mixer; one seed.", "",
          "Produced by " + " then ".join(f"`{c}`" for c in cmds) + f", then `{command_line()}`, on {machine()}.",
          "", "| group | model | layers | params | " + " | ".join(f"T={k[5:]}" for k in keys) + " | train s |",
          "|---|---|---|---|" + "---|" * len(keys) + "---|"]  # fmt: skip
    for r in sorted(rows, key=lambda r: (r["group"], r["model"], r["layers"])):
        md.append(f"| {r['group']} | {r['model']} | {r['layers']} | {r['params']:,} | "
                  + " | ".join(f"{r[k]:.3f}" if k in r else "-" for k in keys) + f" | {r['seconds']:.0f} |")  # fmt: skip
    (HERE / "state_tracking.md").write_text("\n".join(md) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({r["group"] for r in rows})
    fig, axes = plt.subplots(1, len(groups), figsize=(6 * len(groups), 4), squeeze=False)
    colors = {"rwkv7": "tab:red", "rwkv6": "tab:brown", "rwkv5": "tab:purple", "rwkv4": "tab:orange",
              "attention": "k"}  # fmt: skip
    styles = {1: ":", 2: "--", 4: "-"}
    for ax, grp in zip(axes[0], groups, strict=True):
        for r in rows:
            if r["group"] != grp:
                continue
            ts = [int(k[5:]) for k in keys if k in r]
            ax.plot(ts, [r[f"acc_T{t}"] for t in ts], marker="o", color=colors.get(r["model"], "0.5"),
                    ls=styles.get(r["layers"], "-"), label=f"{r['model']} x{r['layers']}")  # fmt: skip
        ax.axvline(rows[0]["train_len"], color="0.6", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_title(f"{grp} word problem (trained at T={rows[0]['train_len']})")
        ax.set_xlabel("sequence length")
        ax.set_ylabel("accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(HERE / "state_tracking.png", dpi=120)
    plt.close(fig)
    print(f"wrote {HERE / 'state_tracking.md'}, .csv, .png")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--group", default="A5", help="S5, A5 (or S3...) (default A5)")
    p.add_argument("--layers", type=int, nargs="+", default=[1, 2, 4], help="depths (default 1 2 4)")
    p.add_argument("--models", nargs="+", default=["rwkv7", "rwkv6", "rwkv4", "attention"], help="mixers")
    p.add_argument("--train", type=int, default=4000, help="training sequences (default 4000)")
    p.add_argument("--train-len", type=int, default=16, help="training length (default 16)")
    p.add_argument("--test", type=int, default=500, help="test sequences per length (default 500)")
    p.add_argument("--epochs", type=int, default=10, help="epochs (default 10)")
    p.add_argument("--batch", type=int, default=64, help="batch size (default 64)")
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (default 3e-3)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--report", action="store_true", help="only write the table and plot")
    args = p.parse_args()
    if not args.report:
        run(args)
    report()


if __name__ == "__main__":
    main()
