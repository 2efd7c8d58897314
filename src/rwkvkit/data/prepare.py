"""``prepare``: text files, directories or JSONL -> memory-mapped token files with a train/validation split.

::

    from rwkvkit.data import prepare, open_tokens
    meta = prepare(["docs/", "extra.jsonl"], "data/mine", tokenizer="world", val_fraction=0.01)
    meta = prepare([], "data/stdlib", tokenizer="bpe:4096", stdlib=True)   # the default model's corpus
    meta = prepare(["sft.jsonl"], "data/sft")    # {"prompt", "answer"} lines: train.mask marks the answers
    train = open_tokens("data/stdlib", "train")

Output folder (``format="bin"``, the default)::

    train.bin, val.bin   every document's tokens followed by the separator (0), back to back;
                         uint16 when the vocabulary fits (<= 65536 ids), else uint32; no header
    meta.json            format tag and version, tokenizer, vocab_size, dtype, per-split counts, sources,
                         split rule, skipped documents (see ``prepare``)
    train.mask, val.mask only for a split holding chat examples: the loss mask, one uint8 per token
                         (1: a target that counts, i.e. the answers and the separator after them)
    tokenizer.json       only for ``tokenizer="bpe:N"``: the BPE trained on the training documents

``format="binidx"`` writes the same ``train.bin``/``val.bin`` plus ``train.idx``/``val.idx``: the binidx
pair of RWKV-LM's trainer (``--data_file out/train --data_type binidx``), one item per document.
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from rwkvkit import __version__
from rwkvkit.data.binidx import BinIdxWriter, DataError, binidx_dtype
from rwkvkit.data.chat import Segment
from rwkvkit.data.corpus import (
    DEFAULT_EXTENSIONS,
    JSONL_FORMATS,
    STDLIB_PREFIX,
    Document,
    SourceFile,
    is_validation,
    list_sources,
    read_documents,
    stdlib_root,
)
from rwkvkit.data.tokens import META_FILE, META_FORMAT, META_VERSION, SPLITS, file_sha256, token_bytes_table
from rwkvkit.errors import ConfigError
from rwkvkit.tokenizer import Tokenizer, load_tokenizer

EOT = "<|endoftext|>"  # the end-of-document token of a trained BPE, id 0 (as in GPT-NeoX 20B)
BPE_MIN_VOCAB = 257  # 256 byte tokens + <|endoftext|>
_CHUNK_CHARS = 1 << 20  # encode documents in groups of about 1 MB (HF encodes a group in parallel)
_CHUNK_DOCS = 512
_MAX_LISTED = 20  # examples of skipped documents kept in meta.json per reason
_MASK_FILL = 1 << 20  # loss mask bytes written at once for the documents before the first chat example


def parse_bpe_spec(spec: str) -> int | None:
    """N for ``"bpe:N"``, None for any other spec; ConfigError for a malformed ``bpe:`` spec."""
    if not spec.startswith("bpe:"):
        return None
    try:
        n = int(spec[4:])
    except ValueError:
        n = -1
    if n < BPE_MIN_VOCAB:
        raise ConfigError(
            f"tokenizer {spec!r}: write bpe:N with N >= {BPE_MIN_VOCAB} ids (256 bytes + {EOT}), "
            "e.g. bpe:4096"
        )
    return n


def choose_dtype(vocab_size: int, dtype: str = "auto", storage: str = "bin") -> np.dtype:
    """The token dtype: ``auto`` = uint16 when ``vocab_size <= 65536`` else uint32 (int32 in binidx)."""
    if dtype not in ("auto", "uint16", "uint32"):
        raise ConfigError(f"dtype must be auto, uint16 or uint32, not {dtype!r}")
    if dtype == "uint16" and vocab_size > 1 << 16:
        raise ConfigError(
            f"a vocabulary of {vocab_size} ids does not fit uint16 (at most 65536 ids): "
            "use dtype uint32 or auto"
        )
    small = dtype == "uint16" or (dtype == "auto" and vocab_size <= 1 << 16)
    dt = np.dtype(np.uint16 if small else np.uint32)
    return binidx_dtype(dt) if storage == "binidx" else dt


def train_bpe(
    texts: Iterable[str], vocab_size: int, *, length: int | None = None, show_progress: bool = False
) -> Any:
    """Train a byte-level BPE of ``vocab_size`` ids (``tokenizers.Tokenizer``) on ``texts``.

    Id 0 is the special ``<|endoftext|>``; ids 1..256 are the 256 bytes (GPT-2's byte alphabet), so any
    text can be encoded and decodes back exactly (no normalizer, no prefix space); merges fill the rest.
    Merges need a pair seen at least twice, so a small corpus can give fewer than ``vocab_size`` ids.
    """
    from tokenizers import Tokenizer as HFTok
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = HFTok(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    tok.train_from_iterator(texts, trainer, length=length)
    return tok


def _encoder(tok: Tokenizer) -> Callable[[list[str]], list[list[int]]]:
    """A batch encoder for documents: plain text in, ids out, never a special token.

    For Hugging Face tokenizers a private copy encodes with ``encode_special_tokens`` (text such as
    "<|endoftext|>" inside a document is encoded as text, not as the separator id) and without the
    post-processor's BOS/EOS; the shared, cached tokenizer is not modified.
    """
    from rwkvkit.tokenizer.hf import HFTokenizer  # deferred: imports `tokenizers` only when needed

    if isinstance(tok, HFTokenizer):
        from tokenizers import Tokenizer as HFTok

        raw = HFTok.from_str(tok.tokenizer.to_str())
        raw.encode_special_tokens = True
        batch = getattr(raw, "encode_batch_fast", raw.encode_batch)  # _fast: no offsets (tokenizers >= 0.20)
        return lambda texts: [e.ids for e in batch(texts, add_special_tokens=False)]
    return lambda texts: [tok.encode(t) for t in texts]


def _chunks(docs: Iterable[Document]) -> Iterator[list[Document]]:
    """Groups of documents of about ``_CHUNK_CHARS`` characters (at most ``_CHUNK_DOCS`` documents)."""
    chunk: list[Document] = []
    size = 0
    for d in docs:
        chunk.append(d)
        size += len(d.text)
        if size >= _CHUNK_CHARS or len(chunk) >= _CHUNK_DOCS:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


class _ValRule:
    """Which documents are held out: the names in ``val_files``, else the hash rule on keys."""

    def __init__(
        self, files: list[SourceFile], val_fraction: float, seed: int, val_files: Sequence[str] | None
    ) -> None:
        self.val_fraction, self.seed = val_fraction, seed
        self.names: dict[str, str] | None = None  # accepted spelling -> the val_files entry
        self.matched: set[str] = set()
        if val_files is None:
            return
        by_key = {f.key for f in files}
        by_path = {str(f.path) for f in files}
        jsonl_keys = {f.key for f in files if f.jsonl}
        self.names = {}
        for v in val_files:
            self.names[v] = v
            rp = Path(v).expanduser()
            if rp.exists():
                self.names[str(rp.resolve())] = v
            head, _, line = v.rpartition(":")
            ok = v in by_key or str(rp.resolve()) in by_path or (head in jsonl_keys and line.isdigit())
            if not ok:
                raise DataError(
                    f"validation file {v!r} is not among the sources: name a document by its path or its "
                    "key (e.g. 'corpus/a.txt' for a file of the directory 'corpus', 'data.jsonl:12' for "
                    "a JSONL line)"
                )

    def __call__(self, d: Document) -> bool:
        if self.names is None:
            return is_validation(d.key, self.seed, self.val_fraction)
        for name in (d.key, d.file.key, str(d.file.path)):
            if name in self.names:
                self.matched.add(self.names[name])
                return True
        return False

    def check_all_matched(self) -> None:
        if self.names is not None:
            missing = sorted(set(self.names.values()) - self.matched)
            if missing:
                raise DataError(
                    f"validation documents not found (blank or missing JSONL lines?): {', '.join(missing)}"
                )

    def describe(self) -> dict[str, Any]:
        if self.names is not None:
            return {"method": "files", "val_files": sorted(set(self.names.values()))}
        return {
            "method": "hash",
            "val_fraction": self.val_fraction,
            "seed": self.seed,
            "rule": "blake2b(f'{seed}\\0{key}', digest_size=8) as big-endian int / 2**64 < val_fraction",
        }


class _SplitWriter:
    """Streams one split to ``<name>.bin`` (and ``.idx`` for binidx, ``.mask`` for loss masks).

    Files are written under temporary names until :meth:`publish`. The loss mask file is started by
    the first document that has a mask (a chat example); the tokens before it get 1 (they all count).
    """

    def __init__(self, out_dir: Path, split: str, dtype: np.dtype, binidx: bool) -> None:
        self.out_dir, self.split, self.dtype, self.binidx = out_dir, split, dtype, binidx
        self.tmp_prefix = out_dir / f".{split}.tmp"
        self.n_tokens = 0  # tokens written so far
        self.n_targets = 0  # of which have loss mask 1
        self._mask_f: BinaryIO | None = None
        if binidx:
            self._w: BinIdxWriter | None = BinIdxWriter(self.tmp_prefix, dtype)
            self._f = None
        else:
            self._w = None
            self._f = open(Path(f"{self.tmp_prefix}.bin"), "wb")  # noqa: SIM115 (closed in close())

    def add(self, ids: np.ndarray, mask: np.ndarray | None = None) -> None:
        """One document's ids (separator included) and its loss mask (bool, same length; None: all 1)."""
        if self._w is not None:
            self._w.add_document(ids)
        else:
            assert self._f is not None
            self._f.write(ids.astype(self.dtype.newbyteorder("<"), copy=False).tobytes())
        if mask is not None and self._mask_f is None:
            self._mask_f = open(Path(f"{self.tmp_prefix}.mask"), "wb")  # noqa: SIM115 (closed in close())
            for i in range(0, self.n_tokens, _MASK_FILL):  # the documents before this one: every token counts
                self._mask_f.write(np.ones(min(_MASK_FILL, self.n_tokens - i), np.uint8).tobytes())
        if self._mask_f is not None:
            self._mask_f.write(
                np.ones(len(ids), np.uint8).tobytes() if mask is None else mask.astype(np.uint8).tobytes()
            )
        self.n_tokens += len(ids)
        self.n_targets += len(ids) if mask is None else int(np.count_nonzero(mask))

    def close(self) -> None:
        if self._w is not None:
            self._w.close()
        elif self._f is not None:
            self._f.close()
        if self._mask_f is not None:
            self._mask_f.close()

    def abort(self) -> None:
        if self._f is not None:
            self._f.close()
        if self._w is not None:
            self._w.abort()
        if self._mask_f is not None:
            self._mask_f.close()
        for ext in (".bin", ".idx", ".mask"):
            Path(f"{self.tmp_prefix}{ext}").unlink(missing_ok=True)

    def publish(self) -> dict[str, Any]:
        """Move the finished files to their names; returns the meta entries naming them."""
        os.replace(f"{self.tmp_prefix}.bin", self.out_dir / f"{self.split}.bin")
        if self.binidx:
            os.replace(f"{self.tmp_prefix}.idx", self.out_dir / f"{self.split}.idx")
        else:
            (self.out_dir / f"{self.split}.idx").unlink(missing_ok=True)  # a stale index of an earlier run
        if self._mask_f is not None:
            os.replace(f"{self.tmp_prefix}.mask", self.out_dir / f"{self.split}.mask")
        else:
            (self.out_dir / f"{self.split}.mask").unlink(missing_ok=True)  # a stale mask of an earlier run
        return {
            "file": f"{self.split}.bin",
            "index": f"{self.split}.idx" if self.binidx else None,
            "mask": f"{self.split}.mask" if self._mask_f is not None else None,
        }


def _progress(total: int, desc: str, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, disable=not enabled, dynamic_ncols=True)


def prepare(
    sources: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    tokenizer: str | os.PathLike[str] = "world",
    *,
    val_fraction: float = 0.01,
    val_files: Sequence[str] | None = None,
    seed: int = 0,
    format: str = "bin",
    dtype: str = "auto",
    extensions: Sequence[str] = DEFAULT_EXTENSIONS,
    jsonl_field: str = "text",
    jsonl_format: str = "auto",
    stdlib: bool = False,
    quiet: bool = False,
) -> dict[str, Any]:
    """Tokenize documents into ``out_dir`` (train/val token files + ``meta.json``); returns the meta dict.

    Args:
        sources: files (one document each; a ``.jsonl`` file is one document per line, see
            ``jsonl_format``) and directories (recursively: every file whose extension is in
            ``extensions``, default .txt .md .rst .py; hidden and ``__pycache__`` folders skipped).
        out_dir: created if needed; earlier outputs there are replaced when the run succeeds.
        tokenizer: ``"world"``, ``"bytes"``, a tokenizer file (a ``tokenizer.json`` such as the GPT-NeoX 20B
            one, or a World-format ``.txt``), or ``"bpe:N"``: a byte-level BPE of N ids trained here on the
            training documents only (id 0 ``<|endoftext|>``) and saved as ``out_dir/tokenizer.json``.
        val_fraction: the share of documents held out, by the hash rule of
            :func:`rwkvkit.data.corpus.is_validation` on each document's key and ``seed``: stable when
            documents are added or removed. Ignored when ``val_files`` is given.
        val_files: hold out exactly these documents (paths, keys like ``corpus/a.txt``, a JSONL file or
            one of its lines ``data.jsonl:12``).
        format: ``"bin"`` (flat arrays) or ``"binidx"`` (the same ``.bin`` plus RWKV-LM ``.idx`` files).
        dtype: ``"auto"`` (uint16 when the vocabulary has at most 65536 ids, else uint32; int32 in binidx),
            ``"uint16"`` or ``"uint32"``.
        jsonl_field: the string field of a plain-text JSONL line (default ``"text"``).
        jsonl_format: what a JSONL line holds: ``"text"`` (plain text in ``jsonl_field``), ``"chat"``
            (a fine-tuning example: ``{"prompt", "answer"}``, ``{"question", "answer"}``,
            ``{"instruction"[, "input"], "output"}`` or ``{"messages": [{"role", "content"}, ...]}``), or
            ``"auto"`` (the default: chat when the line has one of those keys, else text).
        stdlib: add the Python standard library corpus (:func:`rwkvkit.data.corpus.stdlib_sources`, keys
            ``stdlib/<path>``).
        quiet: no progress bars (they are also off when stderr is not a terminal).

    Every document's ids are followed by the separator: the tokenizer's end-of-document id (0 for World,
    20B and ``bpe:N``), or 0 when it has none (``bytes``: the NUL byte, which no written document
    contains). Documents that are empty, not UTF-8 or contain NUL are skipped and counted in
    ``meta["skipped"]``. Raises DataError / ConfigError / TokenizerError (one line) on bad input.

    Chat examples are rendered in the RWKV World chat format exactly as ``rwkvkit serve`` renders a
    conversation (:func:`rwkvkit.data.chat.world_segments` with ``complete=True``), each segment
    encoded on its own, and a split that holds one gets a **loss mask** ``<split>.mask``: one uint8
    per token, 1 where the token is a training target that counts (the answers' tokens, and the
    separator after a final answer, so the model learns to stop), 0 on the system, user and prompt
    tokens; plain-text documents are 1 throughout. ``meta["splits"][split]`` names it (``"mask"``,
    None without one) and counts ``"target_tokens"`` (tokens with mask 1) and ``"chat_documents"``;
    a folder with masks is ``meta["version"] == 2`` (older rwkvkit refuses it rather than train on
    the prompts), else 1. For chat examples the byte counts are those of the rendered text.
    """
    t0 = time.perf_counter()
    if format not in ("bin", "binidx"):
        raise ConfigError(f"format must be 'bin' or 'binidx', not {format!r}")
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if jsonl_format not in JSONL_FORMATS:
        raise ConfigError(f"jsonl_format must be one of {', '.join(JSONL_FORMATS)}, not {jsonl_format!r}")
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    tokenizer = os.fspath(tokenizer)
    bpe_size = parse_bpe_spec(tokenizer)
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise DataError(f"output {out} exists and is not a folder")

    files = list_sources(sources, extensions=extensions, stdlib=stdlib, avoid=out)
    if not files:
        raise DataError(
            "no documents: the sources hold no files with the extensions "
            f"{' '.join(sorted(set(extensions)))} (choose others with extensions= / --ext)"
        )
    rule = _ValRule(files, val_fraction, seed, val_files)
    total_bytes = sum(f.path.stat().st_size for f in files)
    show = not quiet and sys.stderr.isatty()
    out.mkdir(parents=True, exist_ok=True)

    tmp_tokenizer = out / ".tokenizer.tmp.json"
    writers: dict[str, _SplitWriter] = {}
    try:
        # 1. the tokenizer (a BPE is trained first, on the training documents only)
        if bpe_size is not None:

            def train_texts() -> Iterator[str]:
                with _progress(total_bytes, "reading for BPE", show) as bar:
                    for d in read_documents(files, jsonl_field=jsonl_field, jsonl_format=jsonl_format):
                        bar.update(d.nbytes)
                        if d.skip is None and not rule(d):
                            yield d.text

            raw = train_bpe(train_texts(), bpe_size, show_progress=show)
            raw.save(str(tmp_tokenizer))
            from rwkvkit.tokenizer.hf import HFTokenizer  # deferred: imports `tokenizers` only when needed

            tok: Tokenizer = HFTokenizer(raw, name=f"bpe{bpe_size}")
            tk_meta: dict[str, Any] = {"spec": tokenizer, "name": tok.name, "file": "tokenizer.json"}
        else:
            spec_path = Path(tokenizer).expanduser()
            if tokenizer not in ("world", "bytes") and spec_path.is_dir():
                spec_path = spec_path / "tokenizer.json"
            tok = load_tokenizer(tokenizer if tokenizer in ("world", "bytes") else spec_path)
            if tokenizer in ("world", "bytes"):
                tk_meta = {"spec": tokenizer, "name": tok.name, "file": None}
            else:
                p = str(spec_path.resolve())
                tk_meta = {"spec": p, "name": tok.name, "file": p, "sha256": file_sha256(p)}

        separator = tok.eos_id if tok.eos_id is not None else 0
        np_dtype = choose_dtype(tok.vocab_size, dtype, format)
        table = token_bytes_table(tok)
        encode = _encoder(tok)

        # 2. tokenize every document into its split
        writers = {s: _SplitWriter(out, s, np_dtype, format == "binidx") for s in SPLITS}
        counters = ("tokens", "documents", "chat_documents", "bytes", "source_bytes", "altered_documents")
        stats = {s: dict.fromkeys(counters, 0) for s in SPLITS}
        skipped: dict[str, dict[str, Any]] = {}
        val_keys: list[str] = []
        byte_exact = True

        def skip(d: Document, reason: str) -> None:
            entry = skipped.setdefault(reason, {"count": 0, "examples": []})
            entry["count"] += 1
            if len(entry["examples"]) < _MAX_LISTED:
                entry["examples"].append(d.key)

        with _progress(total_bytes, "tokenizing", show) as bar:
            for chunk in _chunks(read_documents(files, jsonl_field=jsonl_field, jsonl_format=jsonl_format)):
                usable = [d for d in chunk if d.skip is None]
                for d in chunk:
                    if d.skip is not None:
                        skip(d, d.skip)
                # a chat example is encoded segment by segment (as the server encodes a conversation)
                pieces = [d.segments if d.segments is not None else (Segment(d.text, True),) for d in usable]
                piece_ids = iter(encode([p.text for segs in pieces for p in segs]))
                for d, segs in zip(usable, pieces):
                    parts = [np.asarray(next(piece_ids), dtype=np.int64) for _ in segs]
                    a = np.concatenate(parts)
                    if (a == separator).any():  # cannot happen for World/bytes/BPE (see _encoder); be safe
                        skip(d, "encodes to the separator id")
                        continue
                    mask = None
                    if d.segments is not None:  # the answers count, and the separator after a final answer
                        mask = np.concatenate(
                            [np.full(len(p), sg.answer, dtype=bool) for p, sg in zip(parts, segs)]
                            + [np.array([segs[-1].answer])]
                        )
                    ids = a.tolist()
                    decoded = tok.decode_bytes(ids)
                    source = d.text.encode("utf-8")
                    split = "val" if rule(d) else "train"
                    st = stats[split]
                    st["tokens"] += len(a) + 1
                    st["documents"] += 1
                    st["chat_documents"] += d.segments is not None
                    st["bytes"] += len(decoded)
                    st["source_bytes"] += len(source)
                    # a tokenizer that normalizes (the 20B one applies NFC) can change the text
                    st["altered_documents"] += decoded != source
                    byte_exact = byte_exact and int(table[a].sum()) == len(decoded)
                    if split == "val":
                        val_keys.append(d.key)
                    writers[split].add(np.append(a, separator), mask)
                bar.update(sum(d.nbytes for d in chunk))
        rule.check_all_matched()
        if stats["train"]["documents"] == 0:
            n_docs = sum(s["documents"] for s in stats.values())
            reasons = ", ".join(f"{v['count']} {k}" for k, v in skipped.items()) or "none"
            why = f"all {n_docs} went to validation" if n_docs else f"{len(files)} files; skipped: {reasons}"
            raise DataError(f"empty corpus: no training documents ({why})")
        if stats["val"]["documents"] == 0 and (val_fraction > 0 or val_files):
            warnings.warn(
                f"the validation split is empty ({stats['train']['documents']} documents, val_fraction "
                f"{val_fraction}): raise val_fraction or name val_files",
                stacklevel=2,
            )

        # 3. publish: remove the old meta first, so a crash in between never pairs old meta with new tokens
        (out / META_FILE).unlink(missing_ok=True)
        split_meta = {}
        for s, w in writers.items():
            w.close()
            split_meta[s] = {**w.publish(), **stats[s], "target_tokens": w.n_targets}
        if bpe_size is not None:
            os.replace(tmp_tokenizer, out / "tokenizer.json")
            tk_meta["sha256"] = file_sha256(out / "tokenizer.json")
        else:
            (out / "tokenizer.json").unlink(missing_ok=True)  # a stale trained BPE of an earlier run
    except BaseException:
        for w in writers.values():
            w.abort()
        tmp_tokenizer.unlink(missing_ok=True)
        raise

    meta: dict[str, Any] = {
        "format": META_FORMAT,
        "version": META_VERSION if any(m["mask"] for m in split_meta.values()) else 1,
        "storage": format,
        "tokenizer": tk_meta,
        "vocab_size": tok.vocab_size,
        "eos_id": tok.eos_id,
        "separator": separator,
        "dtype": str(np_dtype),
        "byte_exact": byte_exact,
        "splits": split_meta,
        "split_rule": rule.describe(),
        "val_documents": val_keys,
        "sources": [str(Path(s).expanduser().resolve()) for s in sources],
        "stdlib": {"root": str(stdlib_root()), "python": sys.version.split()[0], "key_prefix": STDLIB_PREFIX}
        if stdlib
        else None,
        "extensions": sorted({e.lower() if e.startswith(".") else "." + e.lower() for e in extensions}),
        "jsonl_field": jsonl_field,
        "jsonl_format": jsonl_format,
        "chat_format": "world",
        "skipped": skipped,
        "created_by": f"rwkvkit {__version__}",
        "seconds": round(time.perf_counter() - t0, 3),
    }
    tmp_meta = out / ".meta.tmp.json"
    tmp_meta.write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp_meta, out / META_FILE)
    return meta


__all__ = ["EOT", "choose_dtype", "parse_bpe_spec", "prepare", "train_bpe"]
