"""Corpora: which files are documents, their stable keys, the train/validation split, the stdlib corpus.

Every document has a *key*, a name that does not depend on the working directory or the machine:

* a file inside a directory source: ``<directory name>/<path relative to it>`` (``corpus/a/b.txt``);
* a file given directly: its file name (``notes.md``);
* a line of a JSONL file: ``<the file's key>:<line number>`` (1-based, blank lines counted); a line is
  plain text (a string field, ``"text"`` by default) or a chat example (a prompt/answer pair or a
  messages list, :mod:`rwkvkit.data.chat`), rendered in the RWKV World chat format;
* a file of the Python standard library corpus: ``stdlib/<path relative to the stdlib>``.

The split is a pure function of the key and the seed (:func:`split_score`), so adding or removing
documents never moves another document between train and validation, and the same corpus always
splits the same way on every machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import sysconfig
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from rwkvkit.data.binidx import DataError
from rwkvkit.data.chat import CHAT_KEYS, Segment, parse_example, world_segments

# Text-like files taken from a directory source. .json is left out on purpose: it is mostly data,
# not prose or code; .jsonl files are read line by line (one document per line) when listed here.
DEFAULT_EXTENSIONS: tuple[str, ...] = (".txt", ".md", ".rst", ".py")
# Folders never entered in a directory walk (besides hidden ones, whose names start with ".").
SKIPPED_DIRS = frozenset({"__pycache__"})
# The stdlib corpus leaves out the test suites (the brief of the default model: code, not tests) and
# third-party packages installed inside the stdlib folder (pyenv and conda put site-packages there).
STDLIB_EXCLUDED_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "dist-packages"})
STDLIB_PREFIX = "stdlib/"
JSONL_FORMATS = ("auto", "text", "chat")


@dataclass(frozen=True)
class SourceFile:
    """One input file: ``key`` (see the module docstring), resolved ``path``, ``jsonl`` (one doc per line)."""

    key: str
    path: Path
    jsonl: bool


@dataclass(frozen=True)
class Document:
    """A document read from a source: its key, the file it came from, and its text.

    ``skip`` is None for a usable document, else why it is left out: ``"empty"``, ``"not UTF-8"``
    or ``"contains NUL"`` (binary files; also id 0 is the NUL byte of the ``bytes`` tokenizer, so a NUL
    inside a document could not be told apart from the end-of-document separator). ``nbytes`` is the
    size the document had in its file (for progress). ``segments`` is None for plain text; for a chat
    example it holds the rendered pieces, each encoded on its own (``text`` is their concatenation),
    and marks the answers, the only tokens trained on.
    """

    key: str
    file: SourceFile
    text: str
    skip: str | None
    nbytes: int
    segments: tuple[Segment, ...] | None = None


def split_score(key: str, seed: int = 0) -> float:
    """A uniform number in [0, 1) fixed by ``key`` and ``seed`` (BLAKE2b, so stable everywhere)."""
    h = hashlib.blake2b(f"{int(seed)}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2.0**64


def is_validation(key: str, seed: int, val_fraction: float) -> bool:
    """The hash split rule: a document is held out when ``split_score(key, seed) < val_fraction``."""
    return split_score(key, seed) < val_fraction


def _walk(
    root: Path, extensions: frozenset[str], skip_dirs: frozenset[str], avoid: Path | None
) -> list[Path]:
    """Files under ``root`` with one of ``extensions`` (lower-case), sorted by relative path.

    Hidden files and folders, folders named in ``skip_dirs`` and the folder ``avoid`` (the output
    folder, when it lies inside a source) are not entered; symbolic links to folders are not followed.
    """
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = [
            d
            for d in dirnames
            if not d.startswith(".")
            and d not in skip_dirs
            and (avoid is None or (here / d).resolve() != avoid)
        ]
        out.extend(
            here / f
            for f in filenames
            if not f.startswith(".") and os.path.splitext(f)[1].lower() in extensions
        )
    return sorted(out, key=lambda p: p.relative_to(root).as_posix())


def list_sources(
    sources: Sequence[str | os.PathLike[str]],
    *,
    extensions: Iterable[str] = DEFAULT_EXTENSIONS,
    stdlib: bool = False,
    avoid: str | os.PathLike[str] | None = None,
) -> list[SourceFile]:
    """The files of ``sources`` in order (then the stdlib corpus when ``stdlib``), each file once.

    A source is a file (one document; a ``.jsonl`` file is one document per line, whatever
    ``extensions`` says) or a directory (every file with one of ``extensions`` below it, recursively,
    sorted). Raises DataError for a source that does not exist.
    """
    exts = frozenset(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
    avoid_r = Path(avoid).resolve() if avoid is not None else None
    out: list[SourceFile] = []
    seen: set[Path] = set()

    def add(key: str, path: Path) -> None:
        rp = path.resolve()
        if rp not in seen:  # a file reached twice (a directory and a file inside it) counts once
            seen.add(rp)
            out.append(SourceFile(key=key, path=rp, jsonl=rp.suffix.lower() == ".jsonl"))

    for src in sources:
        p = Path(src).expanduser()
        if p.is_dir():
            name = p.resolve().name or "root"
            for f in _walk(p, exts, SKIPPED_DIRS, avoid_r):
                add(f"{name}/{f.relative_to(p).as_posix()}", f)
        elif p.is_file():
            add(p.name, p)
        else:
            raise DataError(
                f"source {str(src)!r} does not exist (expected a text file, a .jsonl file or a directory)"
            )
    if stdlib:
        root = stdlib_root()
        for f in stdlib_sources(root):
            add(STDLIB_PREFIX + f.relative_to(root).as_posix(), f)
    return out


def _classify(text_bytes: bytes) -> tuple[str, str | None]:
    """(text, reason to skip or None) of a file's bytes; the text is exact (no newline translation)."""
    if not text_bytes:
        return "", "empty"
    if b"\x00" in text_bytes:
        return "", "contains NUL"
    try:
        return text_bytes.decode("utf-8"), None
    except UnicodeDecodeError:
        return "", "not UTF-8"


def _jsonl_document(
    obj: object, key: str, sf: SourceFile, nbytes: int, jsonl_field: str, jsonl_format: str
) -> Document:
    """The document of one parsed JSONL line; DataError (without the location) when it is not one."""
    if not isinstance(obj, dict):
        raise DataError(f"expected a JSON object, not {type(obj).__name__}")
    if jsonl_format == "auto":
        chat = [k for k in CHAT_KEYS if k in obj]
        if chat and jsonl_field in obj:
            raise DataError(
                f"has both {jsonl_field!r} and {chat[0]!r}: choose jsonl_format='text' or 'chat' "
                "(--jsonl-format)"
            )
        kind = "chat" if chat else "text"
    else:
        kind = jsonl_format
    if kind == "chat":
        segments = tuple(world_segments(parse_example(obj), complete=True))
        text = "".join(s.text for s in segments)
        return Document(key, sf, text, "contains NUL" if "\x00" in text else None, nbytes, segments)
    if not isinstance(obj.get(jsonl_field), str):
        raise DataError(
            f"expected a JSON object with a string field {jsonl_field!r}; choose the field with "
            "jsonl_field= (--jsonl-field)"
            + (", or give prompt/answer pairs or messages" if jsonl_format == "auto" else "")
        )
    text = obj[jsonl_field]
    return Document(
        key, sf, text, "empty" if not text else "contains NUL" if "\x00" in text else None, nbytes
    )


def read_documents(
    files: Iterable[SourceFile], *, jsonl_field: str = "text", jsonl_format: str = "text"
) -> Iterator[Document]:
    """The documents of ``files`` in order: a whole file, or each non-blank line of a JSONL file.

    A JSONL line is a JSON object: plain text in its string field ``jsonl_field``
    (``jsonl_format="text"``), a chat example (``"chat"``: a prompt/answer pair or a messages list,
    :func:`rwkvkit.data.chat.parse_example`), or either, decided by its keys (``"auto"``: chat when it
    has one of :data:`rwkvkit.data.chat.CHAT_KEYS`; both kinds of keys on one line is an error).
    Anything else raises DataError naming the file and line (a wrong field name would otherwise
    silently drop the whole corpus). Files that are not JSONL are always plain text.
    """
    if jsonl_format not in JSONL_FORMATS:
        raise DataError(f"jsonl_format must be one of {', '.join(JSONL_FORMATS)}, not {jsonl_format!r}")
    for sf in files:
        try:
            if not sf.jsonl:
                raw = sf.path.read_bytes()
                text, skip = _classify(raw)
                yield Document(sf.key, sf, text, skip, len(raw))
                continue
            with open(sf.path, "rb") as f:
                for lineno, line in enumerate(f, start=1):
                    if not line.strip():
                        continue
                    try:
                        obj = json.loads(line)
                    except (json.JSONDecodeError, UnicodeDecodeError) as e:
                        raise DataError(f"{sf.path}:{lineno}: not a JSON line ({e})") from None
                    try:
                        doc = _jsonl_document(
                            obj, f"{sf.key}:{lineno}", sf, len(line), jsonl_field, jsonl_format
                        )
                    except DataError as e:
                        raise DataError(f"{sf.path}:{lineno}: {e}") from None
                    yield doc
        except OSError as e:
            raise DataError(f"cannot read {sf.path}: {e.strerror or e}") from None


# --------------------------------------------------------------------------------------------------
# The Python standard library corpus


def stdlib_root() -> Path:
    """The folder of this interpreter's standard library sources (``sysconfig.get_paths()["stdlib"]``)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    if not root.is_dir():
        raise DataError(f"the Python standard library folder {root} does not exist on this machine")
    return root


def stdlib_sources(root: str | os.PathLike[str] | None = None) -> list[Path]:
    """The standard library's ``.py`` files, sorted by relative path, without test folders.

    Leaves out everything under a folder named ``test``, ``tests`` or ``idle_test`` (the test suites),
    ``site-packages`` or ``dist-packages`` (third-party code) and hidden or ``__pycache__`` folders.
    About 730 files and 12 MB for CPython 3.11; the exact set depends on the Python version.
    """
    base = Path(root) if root is not None else stdlib_root()
    return _walk(base, frozenset({".py"}), SKIPPED_DIRS | STDLIB_EXCLUDED_DIRS, None)


def stdlib_split(
    val: int | float = 0.01, seed: int = 0, root: str | os.PathLike[str] | None = None
) -> tuple[list[Path], list[Path]]:
    """Split the stdlib corpus into (train files, validation files), whole files, deterministically.

    ``val`` as a float in [0, 1) is a fraction: the hash rule of :func:`is_validation` on the keys
    ``stdlib/<relative path>``, exactly what ``prepare(stdlib=True, val_fraction=val, seed=seed)``
    holds out. ``val`` as an int is a number of files: the ``val`` files of lowest
    :func:`split_score`. Both lists keep the sorted order of :func:`stdlib_sources`.
    """
    base = Path(root) if root is not None else stdlib_root()
    files = stdlib_sources(base)
    keys = [STDLIB_PREFIX + f.relative_to(base).as_posix() for f in files]
    if isinstance(val, bool) or not isinstance(val, (int, float)):
        raise TypeError(f"val must be a file count (int) or a fraction (float), not {type(val).__name__}")
    if isinstance(val, int):
        if not 0 <= val <= len(files):
            raise DataError(f"cannot hold out {val} of the {len(files)} stdlib files")
        held = set(sorted(range(len(files)), key=lambda i: split_score(keys[i], seed))[:val])
    else:
        if not 0.0 <= val < 1.0:
            raise DataError(f"val fraction must be in [0, 1), got {val}")
        held = {i for i, k in enumerate(keys) if is_validation(k, seed, val)}
    train = [f for i, f in enumerate(files) if i not in held]
    return train, [f for i, f in enumerate(files) if i in held]


__all__ = [
    "DEFAULT_EXTENSIONS",
    "JSONL_FORMATS",
    "STDLIB_EXCLUDED_DIRS",
    "Document",
    "SourceFile",
    "is_validation",
    "list_sources",
    "read_documents",
    "split_score",
    "stdlib_root",
    "stdlib_sources",
    "stdlib_split",
]
