"""Copy a finished default-model run into the package (``src/rwkvkit/assets/default``).

    python experiments/default_model/ship.py [--run runs/default-model]

Weights are stored in bf16 (rwkvkit format; the shipped file must stay under 25 MB), next to the
tokenizer, the exact training config, the loss log and plot, and the training log.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from rwkvkit.assets import DEFAULT_DIR
from rwkvkit.formats import convert


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default="runs/default-model", help="the training run folder")
    args = p.parse_args()
    run = Path(args.run)
    DEFAULT_DIR.mkdir(parents=True, exist_ok=True)
    convert(run / "model.safetensors", DEFAULT_DIR / "model.safetensors", to="rwkvkit", dtype="bf16")
    tokenizer = run / "tokenizer.json"
    if not tokenizer.is_file():  # runs older than the trainer's tokenizer copy: take the data's
        import tomllib

        data = Path(tomllib.loads((run / "config.toml").read_text())["data"])
        tokenizer = data / json.loads((data / "meta.json").read_text())["tokenizer"]["file"]
    shutil.copyfile(tokenizer, DEFAULT_DIR / "tokenizer.json")
    for name in ("config.toml", "loss.csv", "loss.png", "train.log"):
        shutil.copyfile(run / name, DEFAULT_DIR / name)
    size = (DEFAULT_DIR / "model.safetensors").stat().st_size
    print(f"shipped {run} -> {DEFAULT_DIR} (weights {size / 2**20:.1f} MiB)")
    assert size <= 25 * 10**6, "the shipped weights must stay under 25 MB"


if __name__ == "__main__":
    main()
