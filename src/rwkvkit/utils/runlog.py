"""What a training run writes into its folder besides checkpoints, for every trainer (language
model, distillation, vision, time series): ``config.toml``, a CSV log, a loss plot, the tokenizer
next to the weights, the one-line summaries of a row, and one wording for a figure that has no
data (:data:`NO_VALIDATION`).

Nothing here imports a trainer, so each trainer uses it without importing another one.
"""

from __future__ import annotations

import csv
import logging
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

NO_VALIDATION = "no validation data"  # written where a validation figure would be, when there is none


def format_row(row: dict[str, Any]) -> str:
    """``key value`` pairs of a log row on one line, floats with 4 decimals."""
    return "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items())


def write_csv(path: Path, rows: Iterable[dict[str, Any]], fields: list[str]) -> None:
    """A CSV log: one row per entry of ``rows``, the columns ``fields`` (blank where a row lacks
    one; :data:`NO_VALIDATION` in a ``val_*`` column whose validation pass ran on an empty split,
    i.e. holds None)."""

    def cell(row, k):
        if k.startswith("val_") and k in row and row[k] is None:
            return NO_VALIDATION
        return "" if row.get(k) is None else row[k]

    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for row in rows:
            w.writerow({k: cell(row, k) for k in fields})


def pyplot():
    """matplotlib's pyplot on the Agg backend, or None (with a warning) when it is not installed."""
    try:
        import matplotlib  # optional: the [plot] extra

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: loss.png not written (pip install 'rwkvkit[plot]')")
        return None
    return plt


def save_png(fig, path: Path) -> None:
    """Write ``fig`` to ``path`` atomically (a reader never sees half a file) and close it."""
    import matplotlib.pyplot as plt  # optional: only called with a figure made by pyplot()

    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    tmp.replace(path)


def mark_no_validation(ax) -> None:
    """Say on the plot that validation passes ran but had no data (instead of drawing zeros)."""
    ax.text(0.98, 0.95, NO_VALIDATION + " (empty validation split)", transform=ax.transAxes,
            ha="right", va="top", color="tab:red")  # fmt: skip


def plot_log(out_dir: Path, rows: list[dict[str, Any]], title: str) -> None:
    """``loss.png``: training and validation loss against training tokens (``tokens``,
    ``train_loss``, ``val_loss`` of each row)."""
    plt = pyplot()
    if plt is None:
        return
    train = [(r["tokens"], r["train_loss"]) for r in rows if r.get("train_loss") not in (None, "")]
    val = [(r["tokens"], r["val_loss"]) for r in rows if r.get("val_loss") not in (None, "")]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), lw=1, alpha=0.7, label="train loss")
    if val:
        ax.plot(*zip(*val), "o-", lw=1.5, label="validation loss")
    elif any("val_loss" in r for r in rows):
        mark_no_validation(ax)
    ax.set_xlabel("training tokens")
    ax.set_ylabel("loss (nats / token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_png(fig, out_dir / "loss.png")


def open_run_folder(out_dir: Path, cfg, val_data, logger: logging.Logger) -> None:
    """Create the run folder with the resolved ``config.toml`` (called once every check has passed,
    so a refused configuration leaves no folder behind); warn when there is no validation data."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.toml").write_text(cfg.to_toml())
    if len(val_data.tokens) == 0:
        logger.warning("%s: %s (its validation split is empty)", cfg.data, NO_VALIDATION)


def save_tokenizer_beside(data, out_dir: Path) -> None:
    """Put the data's tokenizer next to the weights, so `rwkvkit generate --model` finds it."""
    spec = (data.meta or {}).get("tokenizer", {})
    src = Path(data.path).parent / str(spec.get("file") or "")
    if spec.get("file") and src.is_file():
        if not (out_dir / "tokenizer.json").is_file():
            shutil.copyfile(src, out_dir / "tokenizer.json")
    elif spec.get("spec"):
        (out_dir / "tokenizer.spec").write_text(str(spec["spec"]) + "\n")
