"""MQAR recall accuracy against recurrent state size: attention, sliding window, BASED, RWKV-4..7.

    python experiments/recall/mqar.py [--epochs 8] [--train 10000] [--models all]
    python experiments/recall/mqar.py --report

The CPU version of BASED's figure 2 (docs/seed-systems.md#based-experiment): multi-query associative
recall (``rwkvkit.data.synthetic.mqar``, zoology's generator) with V = 512 and L = 128, trained on a
mix of 8, 16 and 32 key-value pairs and tested on each; every model has two layers, a gated short
convolution (BaseConv) then the sequence mixer under test, d_model 64 (``rwkvkit.models.mixers``).
Accuracy is the fraction of query positions whose value is predicted exactly. The state size is the
bytes of recurrent state (fp32) the two mixers carry at L = 128 (attention: its KV cache).

Each finished model appends one JSON line to ``results/mqar.jsonl`` (finished models are skipped on
a rerun); the report writes ``mqar.md``, ``mqar.csv`` and ``mqar.png`` beside this script.
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

RESULTS = HERE / "results" / "mqar.jsonl"
COMMANDS = HERE / "results" / "commands.txt"
V, L, PAIRS = 512, 128, (8, 16, 32)
OLD_LR = 3e-3  # the learning rate of the runs logged before rows recorded theirs


def variants() -> dict[str, dict]:
    """name -> MixerLMConfig fields of the second layer's mixer."""
    out = {"attention": dict(layers=("conv", "attention"))}
    for w in (8, 32, 64):
        out[f"swa W={w}"] = dict(layers=("conv", "swa"), window=w)
    for D in (4, 8, 16):
        out[f"based D={D}"] = dict(layers=("conv", "based"), feature_dim=D)
    for v in ("rwkv4", "rwkv5", "rwkv6", "rwkv7"):
        out[v.upper().replace("RWKV", "RWKV-")] = dict(layers=("conv", v), head_size=16)
    return out


def run(args) -> None:
    from rwkvkit.data.synthetic import mqar
    from rwkvkit.models.mixers import MixerLM, MixerLMConfig, state_bytes

    torch.set_num_threads(args.threads or torch.get_num_threads())
    per = args.train // len(PAIRS)
    train = [mqar(per, V, L, n, seed=args.seed + i) for i, n in enumerate(PAIRS)]
    x_tr = torch.cat([d.inputs for d in train])
    y_tr = torch.cat([d.labels for d in train])
    tests = {n: mqar(args.test, V, L, n, seed=1000 + n) for n in PAIRS}
    log_command(COMMANDS, command_line())  # the report cites the runs' commands
    done = set()
    if RESULTS.is_file():
        done = {(r["model"], r.get("lr", OLD_LR)) for r in map(json.loads, RESULTS.open())}
    table = variants()
    unknown = [m for m in args.models if m != "all" and m not in table]
    if unknown:
        raise SystemExit(f"unknown models {unknown}; choose from {list(table)}")
    order = list(table) if args.models == ["all"] else args.models  # the order given
    for name in order:
        fields = table[name]
        if (name, args.lr) in done:
            continue
        cfg = MixerLMConfig(vocab_size=V, d_model=64, **fields)
        model = MixerLM(cfg, seed=args.seed)
        t0 = time.perf_counter()
        print(
            f"== {name}: {model.num_params():,} parameters, state {state_bytes(cfg, L):,} bytes", flush=True
        )
        fit_lm(
            model,
            x_tr,
            y_tr,
            epochs=args.epochs,
            batch=args.batch,
            lr=args.lr,
            weight_decay=0.1,
            seed=args.seed,
        )
        acc = {}
        with torch.no_grad():
            for n, d in tests.items():
                pred = model(d.inputs).argmax(-1)
                mask = d.labels != -100
                acc[n] = float((pred[mask] == d.labels[mask]).float().mean())
        row = {"model": name, "mixer": fields["layers"][1], "lr": args.lr, "params": model.num_params(),
               "state_bytes": state_bytes(cfg, L), "seconds": round(time.perf_counter() - t0, 1),
               **{f"acc_N{n}": a for n, a in acc.items()}}  # fmt: skip
        print("   " + "  ".join(f"N={n}: {a:.3f}" for n, a in acc.items()), flush=True)
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        with RESULTS.open("a") as f:
            f.write(json.dumps(row) + "\n")


def mean_acc(r: dict) -> float:
    return sum(r[f"acc_N{n}"] for n in PAIRS) / len(PAIRS)


def report() -> None:
    rows = [{"lr": OLD_LR, **json.loads(line)} for line in RESULTS.open()]  # the first runs: lr 3e-3
    with open(HERE / "mqar.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    tried: dict[str, list[float]] = {}
    best: dict[str, dict] = {}
    for r in rows:
        tried.setdefault(r["model"], []).append(r["lr"])
        if r["model"] not in best or mean_acc(r) > mean_acc(best[r["model"]]):
            best[r["model"]] = r
    all_rows = rows
    rows = list(best.values())  # the table and the plot: each model at its best learning rate
    md = ["# MQAR: recall against state size", "",
          f"Two layers (gated short convolution, then the mixer), d_model 64, V = {V}, L = {L}; trained on a "
          f"mix of {', '.join(map(str, PAIRS))} key-value pairs, accuracy on each. State: bytes of recurrent "
          f"state of both mixers at L = {L} (fp32). Each model at the best of the learning rates tried "
          "(by mean accuracy over the pair counts; every run is in the second table).", "",
          "Produced by " + " then ".join(f"`{c}`" for c in logged_commands(COMMANDS)) + f", then `{command_line()}`, on "
          f"{machine()}.", "",
          "| model | params | state bytes | best lr (of) | " + " | ".join(f"acc N={n}" for n in PAIRS) + " | train s |",
          "|---|---|---|---|" + "---|" * len(PAIRS) + "---|"]  # fmt: skip
    for r in sorted(rows, key=lambda r: r["state_bytes"]):
        lrs = ", ".join(f"{x:g}" for x in sorted(tried[r["model"]]))
        md.append(f"| {r['model']} | {r['params']:,} | {r['state_bytes']:,} | {r['lr']:g} ({lrs}) | "
                  + " | ".join(f"{r[f'acc_N{n}']:.3f}" for n in PAIRS) + f" | {r['seconds']:.0f} |")  # fmt: skip
    md += ["", "Every run:", "", "| model | lr | " + " | ".join(f"acc N={n}" for n in PAIRS) + " |",
           "|---|---|" + "---|" * len(PAIRS)]  # fmt: skip
    for r in sorted(all_rows, key=lambda r: (r["state_bytes"], r["model"], r["lr"])):
        md.append(
            f"| {r['model']} | {r['lr']:g} | " + " | ".join(f"{r[f'acc_N{n}']:.3f}" for n in PAIRS) + " |"
        )
    (HERE / "mqar.md").write_text("\n".join(md) + "\n")

    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PAIRS), figsize=(5 * len(PAIRS), 4), sharey=True)
    colors = {"attention": "k", "swa": "tab:blue", "based": "tab:green", "rwkv4": "tab:orange",
              "rwkv5": "tab:purple", "rwkv6": "tab:brown", "rwkv7": "tab:red"}  # fmt: skip
    for ax, n in zip(axes, PAIRS, strict=True):
        for mixer in colors:
            rs = sorted((r for r in rows if r["mixer"] == mixer), key=lambda r: r["state_bytes"])
            if rs:
                ax.plot([r["state_bytes"] for r in rs], [r[f"acc_N{n}"] for r in rs], marker="o",
                        color=colors[mixer], label=mixer)  # fmt: skip
                for r in rs:
                    ax.annotate(r["model"].split(" ")[-1], (r["state_bytes"], r[f"acc_N{n}"]), fontsize=6)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_title(f"MQAR, {n} key-value pairs")
        ax.set_xlabel("recurrent state (bytes, log)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy")
    axes[-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(HERE / "mqar.png", dpi=120)
    plt.close(fig)
    print(f"wrote {HERE / 'mqar.md'}, mqar.csv, mqar.png")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=8, help="passes over the training set (default 8)")
    p.add_argument("--train", type=int, default=9000, help="training examples, split over the pair counts")
    p.add_argument("--test", type=int, default=500, help="test examples per pair count (default 500)")
    p.add_argument("--batch", type=int, default=64, help="batch size (default 64)")
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (default 3e-3)")
    p.add_argument("--models", nargs="+", default=["all"], help="model names (see variants()) or all")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    p.add_argument("--report", action="store_true", help="only write the table and plot")
    args = p.parse_args()
    if not args.report:
        run(args)
    report()


if __name__ == "__main__":
    main()
