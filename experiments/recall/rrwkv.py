"""Long-distance key-value recall: RWKV-4 against RRWKV-style retrospection (a reconstruction).

    python experiments/recall/rrwkv.py [--models all] [--lrs 1e-2 3e-3] [--train 8000] [--epochs 3]
    python experiments/recall/rrwkv.py --report

The CPU experiment of docs/seed-systems.md#rrwkv-experiment. Task: ``rwkvkit.data.synthetic.kv_recall``
with V = 64 and ``--pairs`` key-value pairs at the start, ``distance`` filler tokens, then one of the
keys; only the last position is scored (accuracy: the value predicted exactly; chance 1 / (V / 4)
for one pair). Models: ``rwkvkit.models.mixers.MixerLM``, two layers, d_model 64, an MLP after each
mixer: RWKV-4 time mixes (``rwkv4``) against RWKV-4 with RRWKV-style retrospection (``rrwkv4``,
``layers/rrwkv.py``: one medium per s tokens, read back by softmax; a reconstruction, the paper has
no code or equations) at s = 16, and 8 and 32 as an ablation. A fresh ``rrwkv4`` model equals the
``rwkv4`` one: the only difference is the learned retrospection.

Training budget (2-core CPU): a loss at one position per sequence and a cost linear in the length
make training at distance 1024 unaffordable here, so every model trains on distances drawn
uniformly from ``--train-min``..``--train-max`` (sequences left-padded with filler to one length) and
is tested at each of ``--distances``, most of them beyond the training range: the plot shows how far
what each model learned carries. RRWKV models are also tested with their retrospection switched off
(``V_m = 0`` after training), which shows how much of what they recall comes through the mediums. Each finished (model, lr) appends one JSON line to
``results/rrwkv.jsonl`` (finished ones are skipped); the report writes ``rrwkv.md``, ``.csv`` and
``.png`` beside this script.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "vision"))
from _common import command_line, machine  # noqa: E402

sys.path.insert(0, str(HERE))
from _train import fit_lm, log_command, logged_commands  # noqa: E402

# the reading of the committed results (written by hand: revise it when the results change)
NOTES = """\
Every number above comes from `results/rrwkv.jsonl`; one or two seeds per setting, so differences of
a few points are noise. Distances outside a model's training range measure extrapolation.
"""

RESULTS = HERE / "results" / "rrwkv.jsonl"
COMMANDS = HERE / "results" / "rrwkv_commands.txt"
V = 64


def variants() -> dict[str, dict]:
    """name -> MixerLMConfig fields (both layers the same mixer)."""
    out = {"RWKV-4": dict(layers=("rwkv4", "rwkv4"))}
    for s in (16, 8, 32):
        out[f"RRWKV-4 s={s}"] = dict(layers=("rrwkv4", "rrwkv4"), medium_every=s)
    return out


def mixed_distance_set(n: int, lo: int, hi: int, pairs: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` kv_recall sequences, each with its own distance uniform in ``[lo, hi]``, left-padded with
    filler tokens (uniform from ``[V // 2, V)``, as the generator's own filler) to the length of the
    longest; the padding only moves the pairs away from position 0."""
    from rwkvkit.data.synthetic import kv_recall

    rng = np.random.default_rng(seed)
    dist = rng.integers(lo, hi + 1, size=n)
    length = 2 * pairs + hi + 1
    xs, ys = [], []
    for d in np.unique(dist):
        c = int((dist == d).sum())
        data = kv_recall(c, int(d), pairs, vocab_size=V, seed=seed * 100_003 + int(d))
        pad = length - data.inputs.shape[1]
        fill = torch.from_numpy(rng.integers(V // 2, V, size=(c, pad)))
        xs.append(torch.cat([fill, data.inputs], dim=1))
        ys.append(torch.cat([torch.full((c, pad), -100), data.labels], dim=1))
    return torch.cat(xs), torch.cat(ys)


@torch.no_grad()
def accuracy(model, inputs: torch.Tensor, labels: torch.Tensor, batch: int = 50) -> float:
    """Exact-match accuracy at the last position (in batches: the WKV-4 chunk form is memory-hungry)."""
    hits = 0
    for i in range(0, len(inputs), batch):
        logits = model(inputs[i : i + batch, :])[:, -1]
        hits += int((logits.argmax(-1) == labels[i : i + batch, -1]).sum())
    return hits / len(inputs)


def run(args) -> None:
    from rwkvkit.data.synthetic import kv_recall
    from rwkvkit.models.mixers import MixerLM, MixerLMConfig, state_bytes

    torch.set_num_threads(args.threads or torch.get_num_threads())
    table = variants()
    order = list(table) if args.models == ["all"] else args.models
    unknown = [m for m in order if m not in table]
    if unknown:
        raise SystemExit(f"unknown models {unknown}; choose from {list(table)}")
    log_command(COMMANDS, command_line())  # the report cites the runs' commands
    x_tr, y_tr = mixed_distance_set(args.train, args.train_min, args.train_max, args.pairs, args.seed)
    tests = {d: kv_recall(args.test, d, args.pairs, vocab_size=V, seed=1000 + d) for d in args.distances}
    done = set()
    if RESULTS.is_file():
        done = {
            (r["model"], r["lr"], r["seed"], r["train_distances"], r["epochs"])
            for r in map(json.loads, RESULTS.open())
        }
    for lr in args.lrs:
        for name in order:
            if (name, lr, args.seed, f"{args.train_min}-{args.train_max}", args.epochs) in done:
                continue
            cfg = MixerLMConfig(vocab_size=V, d_model=64, mlp=True, **table[name])
            model = MixerLM(cfg, seed=args.seed)
            print(f"== {name}, lr {lr}: {model.num_params():,} parameters", flush=True)
            t0 = time.perf_counter()
            fit_lm(model, x_tr, y_tr, epochs=args.epochs, batch=args.batch, lr=lr, weight_decay=0.1,
                   seed=args.seed)  # fmt: skip
            seconds = round(time.perf_counter() - t0, 1)
            acc = {d: accuracy(model, t.inputs, t.labels) for d, t in tests.items()}
            print("   " + "  ".join(f"d={d}: {a:.3f}" for d, a in acc.items()), flush=True)
            off = {}
            if cfg.layers[0] == "rrwkv4":  # the same model with the retrospective read zeroed
                with torch.no_grad():
                    for mixer in model.mixers:
                        mixer.att.medium_value.weight.zero_()
                off = {d: accuracy(model, t.inputs, t.labels) for d, t in tests.items()}
                print("   retrospection off: " + "  ".join(f"d={d}: {a:.3f}" for d, a in off.items()))
            row = {"model": name, "mixer": cfg.layers[0],
                   "medium_every": cfg.medium_every if cfg.layers[0] == "rrwkv4" else None,
                   "lr": lr, "seed": args.seed, "pairs": args.pairs, "params": model.num_params(),
                   "train": args.train, "test": args.test, "epochs": args.epochs, "batch": args.batch,
                   "train_distances": f"{args.train_min}-{args.train_max}", "seconds": seconds,
                   **{f"acc_d{d}": a for d, a in acc.items()},
                   **{f"acc_off_d{d}": off.get(d) for d in acc},
                   **{f"state_bytes_d{d}": state_bytes(cfg, 2 * args.pairs + d + 1) for d in acc}}  # fmt: skip
            RESULTS.parent.mkdir(parents=True, exist_ok=True)
            with RESULTS.open("a") as f:
                f.write(json.dumps(row) + "\n")


def report() -> None:
    rows = [json.loads(line) for line in RESULTS.open()]
    dists = sorted({int(k[5:]) for r in rows for k in r if k.startswith("acc_d")})
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(HERE / "rrwkv.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    r0, dmax = rows[0], dists[-1]
    chance = 1 / (V // 4)
    md = ["# Long-distance key-value recall: RWKV-4 against RRWKV-style retrospection (reconstruction)", "",
          f"Task `kv_recall` (V = {V}, {r0['pairs']} key-value pair(s), then `distance` filler tokens, then a "
          f"key; only the last position is scored; chance {chance:.4f}). Two layers, d_model 64, an MLP after "
          "each mixer. Trained on the distances of the `train d` column (uniform, left-padded with filler), "
          f"{r0['train']} sequences x `epochs`, batch {r0['batch']}; tested on {r0['test']} sequences "
          "at each distance. RRWKV-4 is the reconstruction in `rwkvkit.layers.rrwkv` (no official code exists), "
          "s = tokens per medium. State: bytes of recurrent state of both mixers after the whole sequence "
          f"(fp32) at distance {dmax}; RRWKV's grows by one d-vector per medium.", "",
          "Produced by " + " then ".join(f"`{c}`" for c in logged_commands(COMMANDS)) + f", then "
          f"`{command_line()}`, on {machine()}.", "",
          "| model | train d | epochs | lr | seed | params | train s | state bytes (d=" + str(dmax) + ") | "
          + " | ".join(f"acc d={d}" for d in dists) + " |",
          "|---|---|---|---|---|---|---|---|" + "---|" * len(dists)]  # fmt: skip
    for r in rows:
        md.append(f"| {r['model']} | {r['train_distances']} | {r['epochs']} | {r['lr']:g} | {r['seed']} | {r['params']:,} | "
                  f"{r['seconds']:.0f} | "
                  f"{r[f'state_bytes_d{dmax}']:,} | "
                  + " | ".join(f"{r.get(f'acc_d{d}', float('nan')):.3f}" for d in dists) + " |")  # fmt: skip
    md += ["", "The RRWKV models again, with the retrospective read switched off after training (`V_m = 0`): "
           "what they recall through the RWKV-4 state alone.", "",
           "| model | train d | epochs | lr | seed | " + " | ".join(f"acc d={d}" for d in dists) + " |",
           "|---|---|---|---|---|" + "---|" * len(dists)]  # fmt: skip
    for r in rows:
        if r["mixer"] == "rrwkv4":
            md.append(f"| {r['model']} | {r['train_distances']} | {r['epochs']} | {r['lr']:g} | {r['seed']} | "
                      + " | ".join(f"{r[f'acc_off_d{d}']:.3f}" for d in dists) + " |")  # fmt: skip
    (HERE / "rrwkv.md").write_text("\n".join(md) + "\n\n" + NOTES)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted(
        {(r["train_distances"], r["lr"], r["epochs"]) for r in rows},
        key=lambda p: (int(p[0].split("-")[1]), -p[1], p[2]),
    )
    seed = rows[0]["seed"]  # other seeds are in the tables
    ncol = min(2, len(panels))
    nrow = -(-len(panels) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(6 * ncol, 3.8 * nrow + 0.8), sharey=True, squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    colors = {"RWKV-4": "tab:orange", "RRWKV-4 s=8": "tab:green", "RRWKV-4 s=16": "tab:blue",
              "RRWKV-4 s=32": "tab:purple"}  # fmt: skip
    for ax, (train_d, lr, epochs) in zip(axes.flat, panels):
        lo, hi = (int(v) for v in train_d.split("-"))
        for r in rows:
            if (r["lr"], r["seed"], r["train_distances"], r["epochs"]) != (lr, seed, train_d, epochs):
                continue
            ax.plot(dists, [r.get(f"acc_d{d}", float("nan")) for d in dists], marker="o",
                    color=colors.get(r["model"]), label=r["model"])  # fmt: skip
            if r["mixer"] == "rrwkv4":
                ax.plot(dists, [r[f"acc_off_d{d}"] for d in dists], ls=":", lw=1, color=colors.get(r["model"]),
                        label=f"{r['model']}, retrospection off")  # fmt: skip
        ax.axhline(chance, color="gray", ls="--", lw=1, label=f"chance (1/{V // 4})")
        ax.axvspan(lo, hi, color="gray", alpha=0.12, label="training distances")
        ax.set_xscale("log", base=2)
        ax.set_xticks(dists, [str(d) for d in dists])
        ax.set_ylim(0, 1.02)
        ax.set_title(f"trained on d {train_d}, {epochs} epochs, lr {lr:g}, seed {seed}", fontsize=10)
        ax.set_xlabel("distance (filler tokens between the pair and the query)")
        ax.grid(alpha=0.3)
    for row in axes:
        row[0].set_ylabel("accuracy (last position)")
    legend = {}  # one legend for the figure: every model of every panel
    for ax in axes.flat:
        for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(label, h)
    fig.legend(legend.values(), legend.keys(), loc="lower center", ncol=5, fontsize=8)
    fig.tight_layout(rect=(0, 0.8 / (3.8 * nrow + 0.8), 1, 1))
    fig.savefig(HERE / "rrwkv.png", dpi=120)
    plt.close(fig)
    print(f"wrote {HERE / 'rrwkv.md'}, rrwkv.csv, rrwkv.png")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["all"], help="model names (see variants()) or all")
    p.add_argument("--lrs", nargs="+", type=float, default=[1e-2, 3e-3],
                   help="peak learning rates, each model trained once per rate (default 1e-2 3e-3)")  # fmt: skip
    p.add_argument("--pairs", type=int, default=1, help="key-value pairs per sequence (default 1)")
    p.add_argument("--train", type=int, default=8000, help="training sequences (default 8000)")
    p.add_argument("--train-min", type=int, default=16, help="shortest training distance (default 16)")
    p.add_argument("--train-max", type=int, default=64, help="longest training distance (default 64)")
    p.add_argument("--epochs", type=int, default=3, help="passes over the training set (default 3)")
    p.add_argument("--batch", type=int, default=32, help="batch size (default 32)")
    p.add_argument("--distances", nargs="+", type=int, default=[32, 64, 128, 256, 512, 1024],
                   help="test distances (default 32 64 128 256 512 1024)")  # fmt: skip
    p.add_argument("--test", type=int, default=500, help="test sequences per distance (default 500)")
    p.add_argument("--seed", type=int, default=0, help="random seed of data, init and order (default 0)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--report", action="store_true", help="only write the table and plot")
    args = p.parse_args()
    if not args.report:
        run(args)
    report()


if __name__ == "__main__":
    main()
