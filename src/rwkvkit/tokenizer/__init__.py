"""Tokenizers: RWKV World, byte-level, and Hugging Face ``tokenizer.json`` files.

::

    from rwkvkit.tokenizer import load_tokenizer
    tok = load_tokenizer("world")          # RWKV World (65530 ids, eos 0), from the `rwkv` package
    ids = tok.encode("Hello world")        # [33155, 40213]
    tok.decode(ids)                        # "Hello world"
    dec = tok.stream_decoder()             # for generation: whole characters only
    text = "".join(dec.push(i) for i in ids) + dec.flush()

``load_tokenizer`` accepts ``"world"``, ``"bytes"``, a World-format ``.txt`` vocabulary, a
Hugging Face ``tokenizer.json`` (or a directory holding one). Every tokenizer satisfies the
:class:`Tokenizer` protocol (``name``, ``vocab_size``, ``eos_id``, ``encode``, ``decode``,
``decode_bytes``, ``stream_decoder``). Loaded tokenizers are cached and immutable, so sharing them
is safe.
"""

from __future__ import annotations

import importlib.util
import os
from functools import lru_cache
from pathlib import Path

from rwkvkit.assets import default_tokenizer_path
from rwkvkit.errors import TokenizerError
from rwkvkit.tokenizer.byte_level import (
    ByteLevelTokenizer,
    ByteTokenizer,
    StreamDecoder,
    Tokenizer,
    Utf8StreamDecoder,
)
from rwkvkit.tokenizer.world import WORLD_VOCAB_FILE, WorldTokenizer, read_vocab

__all__ = [
    "ByteLevelTokenizer",
    "ByteTokenizer",
    "StreamDecoder",
    "Tokenizer",
    "Utf8StreamDecoder",
    "WORLD_VOCAB_FILE",
    "WorldTokenizer",
    "load_tokenizer",
    "pick_tokenizer",
    "read_vocab",
    "tokenizer_beside",
    "world_vocab_path",
]

_NAMES = ("world", "bytes", "default")
_USAGE = (
    "pass 'world', 'bytes', the path of a World vocabulary (.txt, like rwkv_vocab_v20230424.txt) "
    "or the path of a Hugging Face tokenizer.json"
)


def world_vocab_path() -> Path:
    """Path of ``rwkv_vocab_v20230424.txt`` inside the installed ``rwkv`` package (not imported)."""
    try:
        spec = importlib.util.find_spec("rwkv")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise TokenizerError(
            f"the World vocabulary ({WORLD_VOCAB_FILE}) ships with the official `rwkv` package, which is not "
            "installed: run `pip install rwkv`, or pass the path of the vocabulary file instead of 'world'"
        )
    for d in spec.submodule_search_locations:
        path = Path(d) / WORLD_VOCAB_FILE
        if path.is_file():
            return path
    raise TokenizerError(
        f"the installed `rwkv` package ({', '.join(spec.submodule_search_locations)}) has no "
        f"{WORLD_VOCAB_FILE}: reinstall it (`pip install --force-reinstall rwkv`) "
        "or pass the path of the vocabulary file"
    )


def load_tokenizer(name_or_path: str | os.PathLike[str]) -> Tokenizer:
    """Load a tokenizer by name or path.

    * ``"world"``: the RWKV World tokenizer (:class:`WorldTokenizer`; ``vocab_size`` 65530,
      ``eos_id`` 0) from the vocabulary file of the installed ``rwkv`` package.
    * ``"bytes"``: :class:`ByteTokenizer` (id = byte value, ``vocab_size`` 256, no eos id).
    * ``"default"``: the BPE tokenizer of the default model shipped with rwkvkit.
    * a ``.txt`` path: a World-format vocabulary (``<id> <literal> <byte length>`` per line).
    * a ``.json`` path, or a directory with a ``tokenizer.json``: a Hugging Face tokenizer
      (:class:`rwkvkit.tokenizer.hf.HFTokenizer`), e.g. the GPT-NeoX 20B tokenizer.
    * a ``.gguf`` path: the World vocabulary a llama.cpp GGUF model carries
      (:func:`rwkvkit.formats.gguf.read_tokenizer`).

    The names win over files of the same name (use ``./world`` for such a file). Results are cached
    per file (path, size and modification time), so repeated calls are free.
    Raises TokenizerError (one line saying what to do) for an unknown name, a missing path, or an
    unreadable or malformed file.
    """
    if isinstance(name_or_path, str) and name_or_path in _NAMES:
        if name_or_path == "bytes":
            return _bytes_tokenizer()
        if name_or_path == "default":  # the tokenizer of the model shipped with rwkvkit
            path = default_tokenizer_path()
            if not path.is_file():
                raise TokenizerError(f"the default model's tokenizer is not installed ({path} is missing)")
            return _load_file("json", *_file_key(path))
        return _load_file("world", *_file_key(world_vocab_path()))
    try:
        path = Path(name_or_path).expanduser()
    except TypeError:
        raise TypeError(
            f"load_tokenizer() takes a name or a path, not {type(name_or_path).__name__}"
        ) from None
    if not path.exists():
        raise TokenizerError(f"tokenizer {str(name_or_path)!r} not found (no such name or file): {_USAGE}")
    if path.is_dir():
        if not (path / "tokenizer.json").is_file():
            raise TokenizerError(f"directory {path} has no tokenizer.json: {_USAGE}")
        path = path / "tokenizer.json"
    suffix = path.suffix.lower()
    if suffix == ".txt":
        return _load_file("txt", *_file_key(path))
    if suffix == ".json":
        return _load_file("json", *_file_key(path))
    if suffix == ".gguf":
        return _load_file("gguf", *_file_key(path))
    raise TokenizerError(
        f"cannot tell the tokenizer format of {path} from its extension {path.suffix!r}: {_USAGE}"
    )


def _file_key(path: Path) -> tuple[str, int, int]:
    """(resolved path, size, mtime_ns): a changed file is loaded again."""
    try:
        st = path.stat()
    except OSError as e:
        raise TokenizerError(f"cannot read tokenizer file {path}: {e.strerror or e}") from None
    return str(path.resolve()), st.st_size, st.st_mtime_ns


@lru_cache(maxsize=1)
def _bytes_tokenizer() -> ByteTokenizer:
    return ByteTokenizer()


@lru_cache(maxsize=8)
def _load_file(kind: str, path: str, size: int, mtime_ns: int) -> Tokenizer:
    """Load (and cache) a tokenizer file; ``size``/``mtime_ns`` are only part of the cache key."""
    del size, mtime_ns
    if kind == "world":
        return WorldTokenizer.from_file(path, name="world")
    if kind == "txt":
        return WorldTokenizer.from_file(path)
    if kind == "gguf":
        from rwkvkit.formats.gguf import read_tokenizer  # deferred: rwkvkit.formats imports this package

        tok = read_tokenizer(path)
        if tok is None:
            raise TokenizerError(f"{path} carries no World vocabulary (a GGUF written without one); {_USAGE}")
        return tok
    from rwkvkit.tokenizer.hf import HFTokenizer  # deferred: imports `tokenizers` only when needed

    return HFTokenizer.from_file(path)


def tokenizer_beside(model_path: str) -> str | None:
    """The tokenizer a model was saved with: ``tokenizer.json`` or ``tokenizer.spec`` in its folder."""
    if model_path == "default" and not Path(model_path).exists():
        return "default"
    folder = Path(model_path) if Path(model_path).is_dir() else Path(model_path).parent
    if (folder / "tokenizer.json").is_file():
        return str(folder / "tokenizer.json")
    if (folder / "tokenizer.spec").is_file():  # a named tokenizer ("world", "bytes"), written by the trainer
        return (folder / "tokenizer.spec").read_text().strip()
    return None


def pick_tokenizer(spec: str | None, vocab_size: int, model_path: str | None = None) -> Tokenizer:
    """The tokenizer named by ``spec``, else the one saved beside the model, else the one implied by
    the model's vocabulary size; checks that it fits the model."""
    if spec is None and model_path is not None:
        spec = tokenizer_beside(model_path)
    if spec is None:
        if vocab_size >= 65530:
            spec = "world"
        elif vocab_size == 256:
            spec = "bytes"
        else:
            raise TokenizerError(
                f"cannot tell which tokenizer a model with vocabulary {vocab_size} uses; pass --tokenizer"
            )
    tok = load_tokenizer(spec)
    if tok.vocab_size > vocab_size:
        raise TokenizerError(
            f"tokenizer {spec!r} has {tok.vocab_size} ids but the model's vocabulary has only {vocab_size}; "
            "pass the tokenizer the model was trained with (--tokenizer)"
        )
    return tok
