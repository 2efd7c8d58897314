"""Backbone latency and peak memory from 224 to 1024 pixels: Vision-RWKV-T vs ViT-T (batch 1, patch 16).

    python experiments/vision/scaling.py [--sizes 224 384 512 768 1024] [--repeats 3]

The paper's claim (Figure 1): Vision-RWKV gets relatively faster and lighter than a ViT as the
resolution grows, because Bi-WKV is linear in the number of tokens while attention is quadratic.
Two ViT baselines: PyTorch's ``scaled_dot_product_attention`` as is (on CPU a fused kernel that never
holds the ``T x T`` attention matrix) and forced to its "math" backend, which materialises it as the
paper's ViT did. Every (model, size) runs in its own process: ``forward_features`` of the backbone on one image, no
gradient; latency is the median of ``--repeats`` timed runs after a warm-up, peak memory is the growth
of the peak resident set over the model's own footprint. Writes ``scaling.md``, ``scaling.csv`` and
``scaling.png`` beside this script.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import HERE, command_line, machine, write_csv  # noqa: E402

MODELS = {  # name -> plot label
    "vrwkv-t": "VRWKV-T",
    "vit-t": "ViT-T, fused SDPA",
    "vit-t-math": "ViT-T, T x T matrix",
}


def worker(model: str, size: int, repeats: int) -> dict:
    import contextlib
    import resource
    import statistics
    import time

    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from rwkvkit.vision.train import build_model

    torch.manual_seed(0)
    net = build_model(model.removesuffix("-math"), img_size=size, num_classes=1000).eval()
    x = torch.randn(1, 3, size, size)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    times = []
    math = sdpa_kernel([SDPBackend.MATH]) if model.endswith("-math") else contextlib.nullcontext()
    with torch.no_grad(), math:
        net.forward_features(x)  # warm-up
        for _ in range(repeats):
            t0 = time.perf_counter()
            net.forward_features(x)
            times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"latency_s": statistics.median(times), "peak_mb": peak - base, "tokens": (size // 16) ** 2}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[224, 384, 512, 768, 1024], help="image sizes")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per point (default 3)")
    p.add_argument("--plot-only", action="store_true", help="redraw table and plot from scaling.csv")
    p.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), int(args.worker[2]))))
        return

    if args.plot_only:  # redraw the table and plot from the committed measurements
        import csv

        rows = [
            {**r, "size": int(r["size"]), "tokens": int(r["tokens"]), "latency_s": float(r["latency_s"]),
             "peak_mb": float(r["peak_mb"])}
            for r in csv.DictReader(open(HERE / "scaling.csv"))
        ]  # fmt: skip
        args.sizes = sorted({r["size"] for r in rows})
    else:
        rows = measure(args)
    report(args, rows)


def measure(args) -> list[dict]:
    rows = []
    for size in args.sizes:
        for model in MODELS:
            proc = subprocess.run([sys.executable, __file__, "--worker", model, str(size), str(args.repeats)],
                                  capture_output=True, text=True)  # fmt: skip
            if proc.returncode != 0:
                raise RuntimeError(proc.stderr[-2000:])
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append({"model": model, "size": size, **r})
            print(
                f"{model} {size}px ({r['tokens']} tokens): {r['latency_s'] * 1e3:.0f} ms, +{r['peak_mb']:.0f} MB",
                flush=True,
            )
    write_csv(HERE / "scaling.csv", rows)
    return rows


def report(args, rows: list[dict]) -> None:
    get = {(r["model"], r["size"]): r for r in rows}
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for model, label in MODELS.items():
        axes[0].plot(
            args.sizes, [get[model, s]["latency_s"] * 1e3 for s in args.sizes], marker="o", label=label
        )
        axes[1].plot(args.sizes, [get[model, s]["peak_mb"] for s in args.sizes], marker="o", label=label)
    for ax, ylabel in ((axes[0], "latency (ms), batch 1"), (axes[1], "peak memory growth (MB)")):
        ax.set_xlabel("image size (pixels), patch 16")
        ax.set_ylabel(ylabel)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(args.sizes, [str(s) for s in args.sizes])
        ax.grid(alpha=0.3, which="both")
        ax.legend(loc="upper left", fontsize=8)
    fig.suptitle("Backbone forward on CPU: Vision-RWKV-T vs ViT-T")
    fig.tight_layout()
    fig.savefig(HERE / "scaling.png", dpi=110)
    plt.close(fig)

    lines = [
        "# Backbone scaling with resolution: VRWKV-T vs ViT-T",
        "",
        (
            f"Measured by `python experiments/vision/scaling.py` (scaling.csv), table and plot redrawn by "
            f"`{command_line()}` on {machine()}."
            if args.plot_only
            else f"Produced by `{command_line()}` on {machine()}."
        ),  # fmt: skip
        "Batch 1, patch 16, no gradient, fp32; one process per point. Memory: growth of the peak resident set over the model's own.",
        "",
        "| size | tokens | VRWKV-T ms | ViT-T SDPA ms | ViT-T naive ms | VRWKV-T MB | ViT-T SDPA MB | ViT-T naive MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s_ in args.sizes:
        a, b, c = get["vrwkv-t", s_], get["vit-t", s_], get["vit-t-math", s_]
        lines.append(f"| {s_} | {a['tokens']} | {a['latency_s'] * 1e3:.0f} | {b['latency_s'] * 1e3:.0f} | "
                     f"{c['latency_s'] * 1e3:.0f} | {a['peak_mb']:.0f} | {b['peak_mb']:.0f} | {c['peak_mb']:.0f} |")  # fmt: skip
    last = args.sizes[-1]
    a = get["vrwkv-t", last]
    lines.append("")
    for key, label in (
        ("vit-t", "ViT-T with SDPA"),
        ("vit-t-math", "ViT-T with a materialised attention matrix"),
    ):
        faster = [s_ for s_ in args.sizes if get[key, s_]["latency_s"] > get["vrwkv-t", s_]["latency_s"]]
        lighter = [s_ for s_ in args.sizes if get[key, s_]["peak_mb"] > get["vrwkv-t", s_]["peak_mb"]]
        b = get[key, last]
        lines.append(
            f"- against {label}: VRWKV-T is "
            + (f"faster from {faster[0]} px" if faster else "never faster")
            + " and "
            + (f"lighter from {lighter[0]} px" if lighter else "never lighter")
            + f" in this range; at {last} px the ViT takes "
            f"{b['latency_s'] / a['latency_s']:.2f}x the time and {b['peak_mb'] / max(a['peak_mb'], 1e-9):.2f}x the "
            "memory of VRWKV-T."
        )
    lines += ["", "![latency and memory vs resolution](scaling.png)", ""]
    (HERE / "scaling.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
