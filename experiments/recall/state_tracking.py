"""State tracking: word problems over groups, trained on short sequences and tested 4x longer.

    python experiments/recall/state_tracking.py [--tasks parity S3 A5 S5] [--layers 1 2 4]
        [--models rwkv7 rwkv6 rwkv4 attention] [--steps 1500]
    python experiments/recall/state_tracking.py --report

Each token is an element of a group; the label at position t is the product of the first t + 1
elements (``rwkvkit.data.synthetic``): ``parity`` (Z2, running XOR of bits), ``S3`` (the 6
permutations of 3 items), ``A5`` (the 60 even permutations of 5 items, the smallest non-solvable
group: its word problem is NC1-complete) and ``S5`` (all 120). Models are
``rwkvkit.models.mixers.MixerLM`` (d_model 64, 4 heads of 16, an MLP after every mixer) with 1, 2 or 4
layers of one mixer: RWKV-7, RWKV-6 and RWKV-4 time mixes (official initialisation) and causal softmax
attention with rotary positions (a transformer). Each trains for ``--steps`` AdamW steps on fresh
sequences of ``--train-len`` tokens (no example is seen twice) and is scored on sequences of
``--test-len`` tokens: the accuracy at position t is the accuracy of the answer for a word of t + 1
elements, so one test set gives accuracy against length, inside (t < train-len) and beyond the
training length.

The claim under test (docs/seed-systems.md#arwkv, docs/rwkv7.md#claims): RWKV-7's generalised delta rule (a
non-diagonal state transition) can track such states, which diagonal-decay RNNs (RWKV-4/6) and
fixed-depth transformers cannot in general (A5 and S5 need depth growing with length for those).

Each finished model appends a JSON line to ``results/state_tracking.jsonl`` (finished ones are
skipped on a rerun); the report writes ``state_tracking.md``, ``.csv`` and ``.png`` beside this script.
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
TASKS = ("parity", "S3", "A5", "S5")
LABELS = {"rwkv7": "RWKV-7", "rwkv6": "RWKV-6", "rwkv4": "RWKV-4", "attention": "transformer (RoPE)"}


def make_data(task: str, n: int, length: int, seed: int):
    from rwkvkit.data.synthetic import parity, permutation_word_problem

    if task == "parity":
        return parity(n, length, seed=seed)
    return permutation_word_problem(n, length, task, seed=seed)


def bands(train_len: int, test_len: int) -> list[tuple[str, int, int]]:
    """Position bands of the report: inside the training length, then up to 2x and up to 4x."""
    out, lo = [(f"n<={train_len}", 0, train_len)], train_len
    for m in (2, 4, 8, 16):
        hi = min(m * train_len, test_len)
        if hi > lo:
            out.append((f"n<={hi}", lo, hi))
            lo = hi
    return out


def run(args) -> None:
    from rwkvkit.models.mixers import MixerLM, MixerLMConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    log_command(COMMANDS, command_line())
    done = set()
    if RESULTS.is_file():
        done = {(r["task"], r["model"], r["layers"], r["steps"]) for r in map(json.loads, RESULTS.open())}
    for task in args.tasks:
        train = make_data(task, args.steps * args.batch, args.train_len, seed=args.seed)
        test = make_data(task, args.test, args.test_len, seed=10_000 + args.seed)
        vocab = int(train.num_elements)
        for n_layers in args.layers:
            for mixer in args.models:
                if (task, mixer, n_layers, args.steps) in done:
                    continue
                cfg = MixerLMConfig(vocab_size=vocab, d_model=64, layers=(mixer,) * n_layers, n_heads=4,
                                    head_size=16, mlp=True, rope=mixer == "attention")  # fmt: skip
                model = MixerLM(cfg, seed=args.seed)
                print(f"== {task} {LABELS[mixer]} x{n_layers}: {model.num_params():,} parameters", flush=True)
                t0 = time.perf_counter()
                fit_lm(model, train.inputs, train.labels, epochs=1, batch=args.batch, lr=args.lr,
                       weight_decay=0.01, seed=args.seed)  # fmt: skip
                seconds = time.perf_counter() - t0
                with torch.no_grad():
                    by_pos = (model(test.inputs).argmax(-1) == test.labels).float().mean(0)
                row = {"task": task, "model": mixer, "layers": n_layers, "params": model.num_params(),
                       "steps": args.steps, "batch": args.batch, "lr": args.lr, "train_len": args.train_len,
                       "seconds": round(seconds, 1), "acc_by_len": [round(float(a), 4) for a in by_pos]}  # fmt: skip
                for name, lo, hi in bands(args.train_len, args.test_len):
                    row[name] = round(float(by_pos[lo:hi].mean()), 4)
                print("   " + "  ".join(f"{k}: {row[k]:.3f}" for k in row if k.startswith("n<=")), flush=True)
                with RESULTS.open("a") as f:
                    f.write(json.dumps(row) + "\n")


def report() -> None:
    rows = [json.loads(line) for line in RESULTS.open()]
    train_len = rows[0]["train_len"]
    keys = [b[0] for b in bands(train_len, len(rows[0]["acc_by_len"]))]
    with open(HERE / "state_tracking.csv", "w", newline="") as f:
        fields = ["task", "model", "layers", "params", "steps", "batch", "lr", "train_len", "seconds", *keys]
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    order = {t: i for i, t in enumerate(TASKS)}
    morder = {m: i for i, m in enumerate(LABELS)}
    rows.sort(key=lambda r: (order.get(r["task"], 99), morder.get(r["model"], 99), r["layers"]))
    cmds = logged_commands(COMMANDS)
    chance = {"parity": 1 / 2, "S3": 1 / 6, "A5": 1 / 60, "S5": 1 / 120}
    md = ["# State tracking: group word problems, trained short, tested 4x longer", "",
          f"Accuracy of the running product of n group elements, averaged over the lengths n in each band "
          f"(trained on n <= {train_len} only; chance: parity 1/2, S3 1/6, A5 1/60, S5 1/120). d_model 64, "
          "an MLP after every mixer, fresh training sequences every step, one seed. The word of length 1 is its own "
          "answer (a copy), so n<=16 is at least 1/16 even for a model that learned nothing else.", "",
          "Produced by " + " then ".join(f"`{c}`" for c in cmds) + f", then `{command_line()}`, on {machine()}.",
          "", "| task | model | layers | params | steps | lr | " + " | ".join(keys) + " | train s |",
          "|---|---|---|---|---|---|" + "---|" * len(keys) + "---|"]  # fmt: skip
    for r in rows:
        md.append(f"| {r['task']} | {LABELS.get(r['model'], r['model'])} | {r['layers']} | {r['params']:,} | "
                  f"{r['steps']} | {r['lr']:g} | " + " | ".join(f"{r[k]:.3f}" for k in keys) + f" | {r['seconds']:.0f} |")  # fmt: skip
    (HERE / "state_tracking.md").write_text("\n".join(md) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t in TASKS if any(r["task"] == t for r in rows)]
    depths = sorted({r["layers"] for r in rows})
    fig, axes = plt.subplots(len(tasks), len(depths), figsize=(4.2 * len(depths), 3.0 * len(tasks)),
                             squeeze=False, sharex=True)  # fmt: skip
    colors = {"rwkv7": "tab:red", "rwkv6": "tab:brown", "rwkv4": "tab:orange", "attention": "k"}
    for i, task in enumerate(tasks):
        for j, depth in enumerate(depths):
            ax = axes[i][j]
            base_steps = min(r["steps"] for r in rows)
            for r in rows:
                if r["task"] == task and r["layers"] == depth:
                    acc = r["acc_by_len"]
                    longer = r["steps"] != base_steps  # a longer run of the same model: dashed
                    label = LABELS.get(r["model"], r["model"]) + (f", {r['steps']} steps" if longer else "")
                    ax.plot(range(1, len(acc) + 1), acc, color=colors.get(r["model"], "0.5"), lw=1.2,
                            ls="--" if longer else "-", label=label)  # fmt: skip
            ax.axvspan(0.5, train_len + 0.5, color="tab:green", alpha=0.08, lw=0)
            ax.axhline(chance.get(task, 0), color="0.6", ls=":", lw=0.8)
            ax.set_ylim(-0.02, 1.02)
            ax.set_title(f"{task}, {depth} layer{'s' if depth > 1 else ''}", fontsize=9)
            ax.grid(alpha=0.3)
            if j == 0:
                ax.set_ylabel("accuracy")
            if i == len(tasks) - 1:
                ax.set_xlabel("word length n (shaded: training lengths)")
    for row_axes in axes:
        for ax in row_axes:
            if len(ax.get_lines()) > 6:  # a panel with longer runs: its own legend
                ax.legend(fontsize=6)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(HERE / "state_tracking.png", dpi=110)
    plt.close(fig)
    print(f"wrote {HERE / 'state_tracking.md'}, .csv, .png")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--tasks", nargs="+", default=list(TASKS), choices=TASKS, help="word problems (default all)"
    )
    p.add_argument("--layers", type=int, nargs="+", default=[1, 2, 4], help="depths (default 1 2 4)")
    p.add_argument(
        "--models", nargs="+", default=list(LABELS), choices=list(LABELS), help="mixers (default all)"
    )
    p.add_argument(
        "--steps", type=int, default=1500, help="optimiser steps, one fresh batch each (default 1500)"
    )
    p.add_argument("--batch", type=int, default=64, help="sequences per step (default 64)")
    p.add_argument("--train-len", type=int, default=16, help="training word length (default 16)")
    p.add_argument(
        "--test-len", type=int, default=64, help="test word length, 4x the training one (default 64)"
    )
    p.add_argument("--test", type=int, default=1000, help="test sequences (default 1000)")
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate, one-cycle (default 3e-3)")
    p.add_argument("--seed", type=int, default=0, help="random seed of data and initialisation (default 0)")
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads (default: torch's choice; 1 is faster when other jobs share the CPU)",
    )
    p.add_argument("--report", action="store_true", help="only write the table and plot from the results")
    args = p.parse_args()
    if not args.report:
        run(args)
    report()


if __name__ == "__main__":
    main()
