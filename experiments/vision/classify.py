"""Vision-RWKV vs a ViT of matched size on Fashion-MNIST, and the ablations (no Q-Shift, causal WKV).

    python experiments/vision/classify.py [--epochs 4] [--train-limit 20000] [--width 96] [--depth 6]

Four runs with the same data, recipe, seed and number of steps: VRWKV (bidirectional WKV with
Q-Shift), VRWKV without Q-Shift, VRWKV with a causal (one-directional) WKV, and a ViT whose width is
chosen so its parameter count matches. Images are 28 x 28 with patches of 4 (49 tokens). The models are
the paper's "T" layout scaled down to fit this 2-core CPU (width and depth are options). Writes
``classify.md``, ``classify.csv`` and ``classify.png`` beside this script.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import HERE, command_line, machine, plot_curves, run_all, write_csv  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=4, help="epochs per run (default 4)")
    p.add_argument("--train-limit", type=int, default=20000, help="training images used (default 20000)")
    p.add_argument("--test-limit", type=int, default=0, help="test images (default all 10000)")
    p.add_argument("--width", type=int, default=96, help="VRWKV embedding width (default 96)")
    p.add_argument("--depth", type=int, default=6, help="VRWKV depth (default 6)")
    p.add_argument("--batch-size", type=int, default=64, help="batch size (default 64)")
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of data order, augmentation and init (default 0); "
        "a seed other than 0 writes classify_seed<N>.md/.csv/.png",
    )
    p.add_argument("--out", default="runs/vision/classify", help="run folders (default runs/vision/classify)")
    args = p.parse_args()

    from rwkvkit.vision.vit import matched_vit
    from rwkvkit.vision.vrwkv import VRWKVConfig

    shape = dict(
        img_size=28, patch_size=4, in_chans=1, num_classes=10, embed_dim=args.width, depth=args.depth
    )
    vr_cfg = VRWKVConfig.preset("T", **shape)
    vit_cfg = matched_vit(vr_cfg)
    vit_over = {f: getattr(vit_cfg, f) for f in ("embed_dim", "depth", "num_heads", "patch_size", "img_size")}
    runs = {
        "VRWKV (Bi-WKV + Q-Shift)": dict(model="vrwkv-t", overrides=shape),
        "ViT (matched parameters)": dict(
            model="vit-t", overrides={**vit_over, "in_chans": 1, "num_classes": 10}
        ),
        "VRWKV without Q-Shift": dict(model="vrwkv-t", overrides={**shape, "qshift": False}),
        "VRWKV with causal WKV": dict(model="vrwkv-t", overrides={**shape, "bidirectional": False}),
    }
    base = dict(img_size=28, epochs=args.epochs, batch_size=args.batch_size, train_limit=args.train_limit,
                test_limit=args.test_limit, lr=1e-3, weight_decay=0.05, warmup_epochs=0.5, progress=True)  # fmt: skip
    base["seed"] = args.seed
    tag = f"_seed{args.seed}" if args.seed else ""
    results = run_all(runs, base, args.out + tag)

    rows = []
    for name, res in results.items():
        f = res["final"]
        rows.append({"run": name, "params": res["params"], "test_accuracy": round(f["accuracy"], 4),
                     "test_loss": round(f["loss"], 4), "train_loss": round(f["train_loss"], 4),
                     "minutes": round(f["seconds"] / 60, 1)})  # fmt: skip
    write_csv(HERE / f"classify{tag}.csv", rows)
    plot_curves(
        HERE / f"classify{tag}.png", results, "accuracy", "test accuracy", "Fashion-MNIST, 28x28, patch 4"
    )
    n_train = args.train_limit or 60000
    lines = [
        "# Vision-RWKV vs ViT on Fashion-MNIST, and ablations",
        "",
        f"Produced by `{command_line()}` on {machine()}.",
        f"{n_train} training images, {args.epochs} epochs, batch {args.batch_size}, AdamW 1e-3 with warm-up and "
        "cosine decay, label smoothing 0.1, random crops and flips; test accuracy on the Fashion-MNIST test set.",
        f"VRWKV: width {args.width}, depth {args.depth}, patch 4 (49 tokens), pre-norm (the paper's T layout).",
        "",
        "| run | parameters | test accuracy | test loss | final train loss | minutes |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['run']} | {r['params'] / 1e6:.3f} M | {100 * r['test_accuracy']:.2f} % | "
                     f"{r['test_loss']:.4f} | {r['train_loss']:.4f} | {r['minutes']} |")  # fmt: skip
    ref = rows[0]["test_accuracy"]
    lines += ["", "Differences to VRWKV (accuracy points): " + ", ".join(
        f"{r['run']} {100 * (r['test_accuracy'] - ref):+.2f}" for r in rows[1:]) + ".", "",
        f"![test accuracy per epoch](classify{tag}.png)", ""]  # fmt: skip
    (HERE / f"classify{tag}.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
