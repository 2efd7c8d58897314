"""Rimer, Timer, DLinear and seasonal naive on ETTh1 / ETTh2, standard long-term forecasting protocol.

    python experiments/timeseries/standard.py [--datasets ETTh1 ETTh2] [--lookbacks 96 336 512]
        [--models rimer timer dlinear naive] [--epochs 8] [--windows-per-epoch 2048]
    python experiments/timeseries/standard.py --report      # tables and plot from the saved results

Protocol (``rwkvkit.timeseries``): chronological 12/4/4-month split, train-only standardisation, all 7
variables in and out, every test window (stride 1), MSE / MAE on the standardised scale (the
literature's numbers) and in the file's units. Rimer and Timer are trained once per look-back on
next-patch prediction and roll out autoregressively to every horizon; DLinear is trained once per
horizon; seasonal naive (period 24 h) repeats the last day.

Each finished run appends one JSON line per horizon to ``results/standard.jsonl`` (runs already
there are skipped, so an interrupted sweep resumes); ``--report`` writes ``standard.md``,
``standard.csv`` and ``standard.png`` beside this script, next to the published numbers of
``published.csv``.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "vision"))
from _common import command_line, machine  # noqa: E402

RESULTS = HERE / "results" / "standard.jsonl"
HORIZONS = (96, 192, 336, 720)
NAMES = {
    "rimer": "Rimer (RWKV-7)",
    "timer": "Timer (attention)",
    "dlinear": "DLinear",
    "naive": "seasonal naive",
}
VARIANTS = {"@long": ", longer training (12 x 4096 windows)"}


def name_of(key: str) -> str:
    """Display name of a results key: ``rimer`` or ``rimer@long`` (a run with another training budget)."""
    base, _, variant = key.partition("@")
    return NAMES[base] + (VARIANTS.get("@" + variant, " @" + variant) if variant else "")


def done_keys() -> set[tuple]:
    if not RESULTS.is_file():
        return set()
    return {(r["dataset"], r["lookback"], r["model"], r["horizon"]) for r in map(json.loads, RESULTS.open())}


def append(rows: list[dict]) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def latency_ms(model, lookback: int, n_vars: int, horizon: int = 720, repeats: int = 5) -> float:
    """Median wall time of one forecast of ``horizon`` steps for one window (all variables), ms."""
    import torch

    x = torch.randn(1, lookback, n_vars)
    model.forecast(x, horizon)  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        model.forecast(x, horizon)
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def run(args) -> None:
    from rwkvkit.timeseries.train import ForecastTrainConfig, load_checkpoint, train

    done = done_keys()
    for ds in args.datasets:
        for L in args.lookbacks:
            for model in args.models:
                key = model + args.variant
                todo = [h for h in HORIZONS if (ds, L, key, h) not in done]
                if not todo:
                    continue
                base = dict(
                    data=ds,
                    model=model,
                    lookback=L,
                    seed=args.seed,
                    progress=not args.quiet,
                    threads=args.threads,
                )
                if model in ("rimer", "timer"):
                    jobs = [dict(horizon=96, eval_horizons=HORIZONS, epochs=args.epochs, lr=args.lr,
                                 windows_per_epoch=args.windows_per_epoch, val_stride=4, patience=3,
                                 overrides=dict(d_model=args.d_model, n_layers=args.n_layers, dropout=args.dropout))]  # fmt: skip
                elif model == "dlinear":
                    jobs = [dict(horizon=h, eval_horizons=(h,), epochs=10, lr=5e-3, weight_decay=0.0, patience=3)
                            for h in todo]  # fmt: skip
                else:
                    jobs = [dict(horizon=96, eval_horizons=HORIZONS, epochs=0)]
                for job in jobs:
                    tag = f"{model}-h{job['horizon']}" if model == "dlinear" else model
                    out = f"{args.out}/{ds}-L{L}/{tag}{args.variant}"
                    print(f"== {ds} lookback {L}: {tag}", flush=True)
                    res = train(ForecastTrainConfig(**base, **job, out_dir=out))
                    m, meta = load_checkpoint(out)
                    n_vars = len(meta["columns"])
                    lat = {h: latency_ms(m, L, n_vars, h) for h in res["test"]}
                    rows = []
                    for h, r in res["test"].items():
                        rows.append({"dataset": ds, "lookback": L, "model": key, "horizon": h, **r,
                                     "params": res["params"], "train_seconds": round(res["train_seconds"], 1),
                                     "epochs_run": len(res["history"]), "latency_ms": round(lat[h], 2),
                                     "checkpoint": out})  # fmt: skip
                        print(f"   H={h}: MSE {r['mse']:.4f} MAE {r['mae']:.4f}", flush=True)
                    append(rows)


def remeasure_latency() -> None:
    """Measure every saved model's forecast latency again (on a quiet machine) and rewrite the results."""
    from rwkvkit.timeseries.train import load_checkpoint

    rows = load_results()
    cache: dict[str, tuple] = {}
    for r in rows:
        if r["checkpoint"] not in cache:
            cache[r["checkpoint"]] = load_checkpoint(r["checkpoint"])
        m, meta = cache[r["checkpoint"]]
        r["latency_ms"] = round(latency_ms(m, r["lookback"], len(meta["columns"]), r["horizon"]), 2)
    RESULTS.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"re-measured the latency of {len(cache)} models")


def load_results() -> list[dict]:
    rows = {}
    for r in map(json.loads, RESULTS.open()):
        rows[(r["dataset"], r["lookback"], r["model"], r["horizon"])] = r  # a rerun replaces the old row
    return list(rows.values())


def published() -> list[dict]:
    with open(HERE / "published.csv") as f:
        return list(csv.DictReader(f))


def report() -> None:
    rows = load_results()
    pub = published()
    datasets = sorted({r["dataset"] for r in rows})
    lookbacks = sorted({r["lookback"] for r in rows})
    models = sorted({r["model"] for r in rows}, key=lambda m: (list(NAMES).index(m.split("@")[0]), m))
    by = {(r["dataset"], r["lookback"], r["model"], r["horizon"]): r for r in rows}

    with open(HERE / "standard.csv", "w", newline="") as f:
        keys = ["dataset", "lookback", "model", "horizon", "mse", "mae", "mse_orig", "mae_orig", "windows",
                "params", "train_seconds", "epochs_run", "latency_ms"]  # fmt: skip
        w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        for k in sorted(by):
            w.writerow(by[k])

    md = ["# Long-term forecasting on ETTh1 / ETTh2: the standard protocol", ""]
    md.append(
        "Chronological split (train 12 months, validation 4, test 4), standardisation fitted on the training "
        "rows only, all 7 variables in and out, every test window (stride 1, no dropped windows). MSE / MAE "
        "on the standardised scale, averaged over windows, steps and variables; lower is better. "
        "Rimer and Timer: one model per look-back, trained on next-patch prediction (patch 16), rolled out "
        "autoregressively to every horizon. DLinear: one model per horizon. Seasonal naive: the last 24 h repeated."
    )
    md += ["", f"Produced by `python experiments/timeseries/standard.py` then `--report` on {machine()}.", ""]
    for ds in datasets:
        md += [f"## {ds}", ""]
        head = (
            "| look-back | model | params | "
            + " | ".join(f"{h} MSE | {h} MAE" for h in HORIZONS)
            + " | train s | forecast 720 ms |"
        )
        md += [head, "|" + "---|" * (head.count("|") - 1)]
        for L in lookbacks:
            best = {
                h: min((by[(ds, L, m, h)]["mse"] for m in models if (ds, L, m, h) in by), default=None)
                for h in HORIZONS
            }
            for m in models:
                cells = []
                present = [h for h in HORIZONS if (ds, L, m, h) in by]
                if not present:
                    continue
                for h in HORIZONS:
                    r = by.get((ds, L, m, h))
                    if r is None:
                        cells.append("- | -")
                        continue
                    mse = f"{r['mse']:.3f}"
                    cells.append((f"**{mse}**" if r["mse"] == best[h] else mse) + f" | {r['mae']:.3f}")
                r0 = by[(ds, L, m, present[0])]
                train_s = (
                    sum(by[(ds, L, m, h)]["train_seconds"] for h in present)
                    if m == "dlinear"
                    else r0["train_seconds"]
                )
                lat = by.get((ds, L, m, 720), r0)["latency_ms"]
                md.append(
                    f"| {L} | {name_of(m)} | {r0['params']:,} | "
                    + " | ".join(cells)
                    + f" | {train_s:.0f} | {lat:.1f} |"
                )
        md += ["", f"Original scale (the file's units, all variables) for look-back {lookbacks[-1]}:", ""]
        head = "| model | " + " | ".join(f"{h} MSE | {h} MAE" for h in HORIZONS) + " |"
        md += [head, "|" + "---|" * (head.count("|") - 1)]
        for m in models:
            cells = []
            for h in HORIZONS:
                r = by.get((ds, lookbacks[-1], m, h))
                cells.append("- | -" if r is None else f"{r['mse_orig']:.3f} | {r['mae_orig']:.3f}")
            md.append(f"| {name_of(m)} | " + " | ".join(cells) + " |")
        md += [
            "",
            f"Published, same protocol ({ds}; cited from `published.csv`, which says where each number was read):",
            "",
        ]
        head = "| model | paper | look-back | " + " | ".join(f"{h} MSE | {h} MAE" for h in HORIZONS) + " |"
        md += [head, "|" + "---|" * (head.count("|") - 1)]
        seen = []
        for p in pub:
            key = (p["model"], p["lookback"])
            if p["dataset"] != ds or key in seen:
                continue
            seen.append(key)
            cells = []
            for h in HORIZONS:
                q = next(
                    (
                        x
                        for x in pub
                        if (x["model"], x["lookback"], x["dataset"], x["horizon"]) == (*key, ds, str(h))
                    ),
                    None,
                )
                cells.append("- | -" if q is None else f"{float(q['mse']):.3f} | {float(q['mae']):.3f}")
            md.append(
                f"| {p['model']} | {p['paper']}, {p['table']} | {p['lookback']} | " + " | ".join(cells) + " |"
            )
        md.append("")
    md += [
        "Notes: the published DLinear and PatchTST numbers were computed with a test loader that drops the last "
        "incomplete batch (`drop_last=True`), so they score fewer windows than here; their re-runs on every "
        "window are in the rows marked 'full test set'. Training time and forecast latency were measured on "
        "this 2-core CPU; latency is one window (7 variables), batch 1, median of 5.",
        "",
        f"Command: `{command_line()}`",
        "",
    ]
    (HERE / "standard.md").write_text("\n".join(md))
    plot(rows, datasets, lookbacks, models, pub)
    print(f"wrote {HERE / 'standard.md'}, standard.csv, standard.png")


def plot(rows, datasets, lookbacks, models, pub) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by = {(r["dataset"], r["lookback"], r["model"], r["horizon"]): r for r in rows}
    fig, axes = plt.subplots(1, len(datasets), figsize=(6 * len(datasets), 4.2), squeeze=False)
    colors = {"rimer": "tab:red", "timer": "tab:blue", "dlinear": "tab:green", "naive": "0.5"}
    styles = {96: ":", 336: "--", 512: "-"}
    for ax, ds in zip(axes[0], datasets, strict=True):
        for m in models:
            for L in lookbacks:
                hs = [h for h in HORIZONS if (ds, L, m, h) in by]
                if hs:
                    ax.plot(
                        hs,
                        [by[(ds, L, m, h)]["mse"] for h in hs],
                        color=colors[m.split("@")[0]],
                        ls=styles.get(L, "-"),
                        marker="s" if "@" in m else "o",
                        ms=3,
                        label=f"{name_of(m)} L={L}",
                    )
        for p in ("PatchTST/64",):
            pts = sorted(
                (int(x["horizon"]), float(x["mse"])) for x in pub if x["model"] == p and x["dataset"] == ds
            )
            if pts:
                ax.plot(*zip(*pts, strict=True), color="k", marker="x", lw=0.8, label=f"{p} (published)")
        ax.set_title(f"{ds}: test MSE (standardised)")
        ax.set_xlabel("horizon (hours)")
        ax.set_xticks(HORIZONS)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("MSE")
    for ax in axes[0]:
        ax.legend(fontsize=5, ncol=2)
    fig.tight_layout()
    fig.savefig(HERE / "standard.png", dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=["ETTh1", "ETTh2"], help="ETT files (default both)")
    p.add_argument("--lookbacks", type=int, nargs="+", default=[96, 336, 512], help="look-back windows")
    p.add_argument("--models", nargs="+", default=["naive", "dlinear", "timer", "rimer"], help="forecasters")
    p.add_argument("--epochs", type=int, default=8, help="max epochs of Rimer / Timer (default 8)")
    p.add_argument("--windows-per-epoch", type=int, default=2048, help="Rimer / Timer windows per epoch")
    p.add_argument("--lr", type=float, default=1e-3, help="Rimer / Timer peak learning rate (default 1e-3)")
    p.add_argument("--d-model", type=int, default=64, help="Rimer / Timer width (default 64)")
    p.add_argument("--n-layers", type=int, default=3, help="Rimer / Timer depth (default 3)")
    p.add_argument("--dropout", type=float, default=0.2, help="Rimer / Timer dropout (default 0.2)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    p.add_argument("--out", default="runs/forecast/standard", help="checkpoint folders")
    p.add_argument("--variant", default="", help="suffix of the model names in the results, e.g. @long "
                   "for a run with another training budget (default none)")  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--report", action="store_true", help="only write the tables and plot from saved results")
    p.add_argument("--remeasure-latency", action="store_true", help="re-time every saved model's forecasts "
                   "(run on an otherwise idle machine), then write the report")  # fmt: skip
    args = p.parse_args()
    if args.remeasure_latency:
        remeasure_latency()
    elif not args.report:
        run(args)
    report()


if __name__ == "__main__":
    main()
