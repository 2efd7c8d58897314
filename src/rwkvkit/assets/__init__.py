"""Files shipped inside the package: the default model (RWKV-7 trained on Python's standard library).

``assets/default/`` holds ``model.safetensors`` (bf16 weights, rwkvkit format), ``tokenizer.json``
(the byte-level BPE it was trained with), ``config.toml`` (the exact training configuration),
``loss.csv`` / ``loss.png`` (its training curves) and ``train.log``. ``rwkvkit.load("default")``,
``rwkvkit.load_tokenizer("default")`` and ``rwkvkit generate`` without ``--model`` use them.
"""

from __future__ import annotations

from pathlib import Path

DEFAULT_DIR = Path(__file__).resolve().parent / "default"
DEFAULT_NAME = "default"


def default_model_path() -> Path:
    return DEFAULT_DIR / "model.safetensors"


def default_tokenizer_path() -> Path:
    return DEFAULT_DIR / "tokenizer.json"
