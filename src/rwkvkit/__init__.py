"""rwkvkit: one PyTorch library for the RWKV family.

The public API (kept stable; see the README)::

    import rwkvkit
    model = rwkvkit.load(path, dtype=None, device="cpu")  # .pth, .safetensors, HF dir, .gguf
    rwkvkit.convert("model.pth", "model.gguf", to="gguf", dtype="q8_0")  # for llama.cpp
    logits, state = model(tokens, state=None)       # tokens [B, T] -> float32 logits [B, T, V]
    state.save(path); state = rwkvkit.State.load(path)
    tok = rwkvkit.load_tokenizer("world")           # or "bytes", or a tokenizer.json path
    text = rwkvkit.generate(model, tok, prompt, max_new_tokens=64)

Importing the package is cheap: the pieces above are imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> (module, attribute); resolved lazily by __getattr__ so `import rwkvkit` stays light.
_LAZY = {
    "load": ("rwkvkit.formats", "load"),
    "convert": ("rwkvkit.formats", "convert"),
    "State": ("rwkvkit.state", "State"),
    "load_tokenizer": ("rwkvkit.tokenizer", "load_tokenizer"),
    "generate": ("rwkvkit.generation", "generate"),
    "RWKVConfig": ("rwkvkit.models.rwkv.config", "RWKVConfig"),
    "RWKV": ("rwkvkit.models.rwkv.model", "RWKV"),
    "RWKVKitError": ("rwkvkit.errors", "RWKVKitError"),
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'rwkvkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # for type checkers and IDEs only
    from rwkvkit.errors import RWKVKitError  # noqa: F401
    from rwkvkit.formats import convert, load  # noqa: F401
    from rwkvkit.generation import generate  # noqa: F401
    from rwkvkit.models.rwkv.config import RWKVConfig  # noqa: F401
    from rwkvkit.models.rwkv.model import RWKV  # noqa: F401
    from rwkvkit.state import State  # noqa: F401
    from rwkvkit.tokenizer import load_tokenizer  # noqa: F401
