"""``rwkvkit vision train|eval|predict``: image classification and promptable segmentation.

The vision package is imported when a vision command runs, not when the parser is built, so the
other commands do not pay for it; the model names come from :mod:`rwkvkit.registry`.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from rwkvkit import registry
from rwkvkit.errors import ConfigError
from rwkvkit.utils.runlog import format_row


def _value(text: str) -> Any:
    """An override value: JSON (numbers, true/false, null, lists) or a plain string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``--set FIELD=VALUE`` options as a dict of config overrides."""
    out = {}
    for item in items:
        key, sep, val = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set takes FIELD=VALUE (e.g. --set qshift=false), got {item!r}")
        out[key.strip()] = _value(val.strip())
    return out


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "vision",
        help="train, evaluate and run image models (Vision-RWKV, ViT, Residual Attention Net, RWKV-SAM)",
        description="Image classification on Fashion-MNIST and promptable segmentation of composed "
        "Fashion-MNIST canvases, with Vision-RWKV, a ViT baseline, the Residual Attention Network and an "
        "RWKV-SAM-style segmenter.",
    )
    vsub = p.add_subparsers(dest="vision_command", metavar="ACTION", required=True)

    t = vsub.add_parser(
        "train",
        help="train a model; writes model.safetensors, model.json and metrics.csv to --out",
        description="Examples: `rwkvkit vision train --model vrwkv-t --img-size 32 --set patch_size=4 "
        "--epochs 10 --out runs/vision/vrwkv`; `rwkvkit vision train --model sam-tiny --img-size 64 "
        "--out runs/vision/sam`.",
    )
    t.add_argument(
        "--model",
        default="vrwkv-t",
        help=f"family-preset: {registry.preset_names('vision')} (default vrwkv-t)",
    )
    t.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a model config field (repeatable), e.g. --set patch_size=4 --set qshift=false",
    )
    t.add_argument("--task", choices=["classify", "segment"], default=None, help="default: from the model")
    t.add_argument("--data", default=None, help="Fashion-MNIST folder with the IDX files (default: "
                   "/usr/share/datasets/fashion-mnist from the Debian package, or "
                   "$RWKVKIT_FASHION_MNIST)")  # fmt: skip
    t.add_argument("--img-size", type=int, default=32, help="classification: resize to this; segmentation: "
                   "canvas size (default 32)")  # fmt: skip
    t.add_argument("--epochs", type=int, default=10, help="passes over the training set (default 10)")
    t.add_argument("--batch-size", type=int, default=64, help="examples per step (default 64)")
    t.add_argument("--lr", type=float, default=1e-3, help="peak learning rate, AdamW (default 1e-3)")
    t.add_argument(
        "--weight-decay", type=float, default=0.05, help="AdamW weight decay on matrices (default 0.05)"
    )
    t.add_argument("--warmup-epochs", type=float, default=1.0, help="linear warm-up length (default 1)")
    t.add_argument("--label-smoothing", type=float, default=0.1, help="classification only (default 0.1)")
    t.add_argument("--no-augment", action="store_true", help="no random crops/flips")
    t.add_argument("--train-limit", type=int, default=0, help="use the first N training examples (0 = all)")
    t.add_argument(
        "--test-limit", type=int, default=0, help="evaluate on the first N test examples (0 = all)"
    )
    t.add_argument("--seg-train", type=int, default=4000, help="segmentation: composed training canvases")
    t.add_argument("--seg-test", type=int, default=500, help="segmentation: composed test canvases")
    t.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    t.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    t.add_argument("--out", default="runs/vision/run", help="output folder (default runs/vision/run)")
    t.add_argument("--no-progress", action="store_true", help="no progress bars or per-epoch lines")
    t.set_defaults(func=run_train)

    e = vsub.add_parser("eval", help="metrics of a trained model on the test split",
                        description="Top-1 accuracy (classification) or mIoU and boundary IoU "
                        "(segmentation).")  # fmt: skip
    e.add_argument("checkpoint", help="a folder written by `rwkvkit vision train`")
    e.add_argument("--data", default=None, help="Fashion-MNIST folder (default: as at training)")
    e.add_argument("--limit", type=int, default=0, help="evaluate on the first N test examples (0 = all)")
    e.set_defaults(func=run_eval)

    pr = vsub.add_parser("predict", help="write a PNG with the prediction over a test image",
                         description="Segmentation: the predicted mask (red) next to the target, with the "
                         "point prompt (star). Classification: the predicted class.")  # fmt: skip
    pr.add_argument("checkpoint", help="a folder written by `rwkvkit vision train`")
    pr.add_argument("--index", type=int, default=0, help="test example to use (default 0)")
    pr.add_argument("--point", default=None, metavar="Y,X", help="segmentation prompt in pixels (default: "
                    "the example's own point, inside its target item)")  # fmt: skip
    pr.add_argument("--out", default="prediction.png", help="output image (default prediction.png)")
    pr.add_argument("--data", default=None, help="Fashion-MNIST folder (default: as at training)")
    pr.set_defaults(func=run_predict)


def run_train(args: argparse.Namespace) -> int:
    from rwkvkit.vision.train import VisionTrainConfig, train  # see the module docstring

    cfg = VisionTrainConfig(
        model=args.model,
        overrides=parse_overrides(args.overrides),
        task=args.task or "",
        data=args.data,
        img_size=args.img_size,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        warmup_epochs=args.warmup_epochs,
        label_smoothing=args.label_smoothing,
        augment=not args.no_augment,
        train_limit=args.train_limit,
        test_limit=args.test_limit,
        seg_train=args.seg_train,
        seg_test=args.seg_test,
        seed=args.seed,
        threads=args.threads,
        out_dir=args.out,
        progress=not args.no_progress,
    )
    if cfg.epochs < 1 or cfg.batch_size < 1 or cfg.lr <= 0:
        raise ConfigError("--epochs and --batch-size must be >= 1 and --lr > 0")
    result = train(cfg)
    final = format_row(result["final"])
    print(f"done: {cfg.model}, {result['params'] / 1e6:.2f} M parameters; {final}; saved in {cfg.out_dir}")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from rwkvkit.vision.train import evaluate

    metrics = evaluate(args.checkpoint, data=args.data, limit=args.limit)
    print("  ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from rwkvkit.vision.train import predict

    point = None
    if args.point:
        try:
            y, x = (int(v) for v in args.point.split(","))
        except ValueError:
            raise ConfigError(
                f"--point takes Y,X in pixels, e.g. --point 20,31; got {args.point!r}"
            ) from None
        point = (y, x)
    result = predict(args.checkpoint, args.out, index=args.index, point=point, data=args.data)
    print(
        ", ".join(
            f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in result.items() if v is not None
        )
    )
    return 0
