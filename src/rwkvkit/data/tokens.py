"""Reading prepared token files, and the windows that training and evaluation take from them.

::

    from rwkvkit.data import open_tokens, WindowSampler, iter_eval_windows

    train = open_tokens("data/stdlib", split="train")  # memory-mapped; len(train) tokens
    sampler = WindowSampler(train, ctx_len=512, seed=0)
    batch = sampler.next_batch(8)      # LongTensor [8, 513]: inputs [:, :-1], targets [:, 1:]
    state = sampler.state_dict()       # save with the checkpoint; load_state_dict() resumes
    batch, mask = sampler.next_batch_with_mask(8)   # fine-tuning data: mask BoolTensor [8, 512] of the
                                                    # targets that count (the answers; all True for text)

    val = open_tokens("data/stdlib", split="val")
    table = torch.from_numpy(val.token_bytes_table())      # [vocab_size] UTF-8 bytes per id (separator: 0)
    for x, y, mask in iter_eval_windows(val, ctx_len=512, batch_size=8):
        ...  # x, y: LongTensor [B, 512], mask: BoolTensor [B, 512]; every token is a target exactly once
    # bits per byte = sum(nats of the masked targets) / ln 2 / table[targets][mask].sum()
    for x, y, mask in iter_eval_windows(val, 512, 8, loss_mask=val.loss_mask):
        ...  # mask: only the answer tokens of fine-tuning data (val.loss_mask None: every token)
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from rwkvkit.data.binidx import DataError, binidx_prefix, read_binidx
from rwkvkit.tokenizer import Tokenizer, load_tokenizer

META_FILE = "meta.json"
META_FORMAT = "rwkvkit.tokens"
META_VERSION = 2  # written when a split has a loss mask (version 1 otherwise: older rwkvkit reads it)
META_VERSIONS = (1, 2)  # versions this rwkvkit reads
SPLITS = ("train", "val")


def token_bytes_table(tokenizer: Tokenizer) -> np.ndarray:
    """int64 [vocab_size]: the number of UTF-8 bytes each id decodes to (0 for ids the vocabulary lacks).

    Byte-level tokenizers (World, bytes, byte-level BPE such as GPT-NeoX 20B or a trained ``bpe:N``) are
    exact: the bytes of a sequence are the concatenation of its tokens' bytes, so
    ``table[ids].sum() == len(decode_bytes(ids))``; special tokens (World id 0, ``<|endoftext|>``) are 0.
    For other Hugging Face decoders (which add or strip spaces by context) it is the byte length of each
    token decoded alone, an approximation.
    """
    table = np.zeros(tokenizer.vocab_size, dtype=np.int64)
    token_bytes = getattr(tokenizer, "token_bytes", None)  # World and bytes tokenizers
    one = token_bytes if token_bytes is not None else (lambda i: tokenizer.decode_bytes([i]))
    for i in range(tokenizer.vocab_size):
        try:
            table[i] = len(one(i))
        except Exception:  # an id the vocabulary does not define (e.g. a hole in a World vocab)
            table[i] = 0
    return table


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file (tokenizer files are a few MB: read at once)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def read_meta(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """``meta.json`` of a prepared folder, checked for the format tag and version."""
    path = Path(directory) / META_FILE
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{directory} has no {META_FILE}: prepare it with `rwkvkit data prepare`") from None
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read {path}: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != META_FORMAT:
        raise DataError(f"{path} is not an rwkvkit token folder description (format {META_FORMAT!r})")
    if meta.get("version") not in META_VERSIONS:
        raise DataError(
            f"{path} has version {meta.get('version')}, this rwkvkit reads versions "
            f"{', '.join(map(str, META_VERSIONS))}: prepare the data again"
        )
    return meta


def load_meta_tokenizer(meta: dict[str, Any], directory: str | os.PathLike[str]) -> Tokenizer:
    """The tokenizer a ``meta.json`` names: ``world``/``bytes``, a file path, or the trained file beside it.

    A tokenizer file whose SHA-256 differs from the one recorded at preparation raises DataError (the
    ids would mean different text).
    """
    tk = meta["tokenizer"]
    if tk.get("file") is None:
        return load_tokenizer(tk["spec"])
    path = Path(directory) / tk["file"]  # an absolute "file" stays as it is
    if not path.is_file():
        raise DataError(
            f"the tokenizer file {path} of {directory} is missing; pass tokenizer= (the file the data was "
            "prepared with) to open_tokens"
        )
    if tk.get("sha256") and file_sha256(path) != tk["sha256"]:
        raise DataError(
            f"the tokenizer file {path} changed since {directory} was prepared (SHA-256 differs): "
            "prepare the data again, or pass tokenizer= to open_tokens to override"
        )
    return load_tokenizer(path)


class TokenFile:
    """One split of prepared tokens, memory-mapped.

    ``tokens``: np.memmap [N] (uint16/uint32/int32; never loaded whole). ``len(tf)`` = N, ``tf[a:b]``
    reads a slice. ``meta``: the folder's ``meta.json`` (None for a bare binidx dataset). ``separator``:
    the end-of-document id that follows every document (0 for World, 20B, ``bpe:N`` and ``bytes``).
    ``tokenizer``: loaded on first use (DataError when unknown: pass ``tokenizer=`` to open_tokens).
    ``loss_mask``: np.memmap uint8 [N], 1 where the token is a training target that counts (the answers
    of fine-tuning data, ``<split>.mask``), or None when the split has none (every token counts).
    """

    def __init__(
        self,
        tokens: np.ndarray,
        *,
        path: Path,
        split: str,
        meta: dict[str, Any] | None,
        doc_offsets: np.ndarray | None = None,
        tokenizer: Tokenizer | str | os.PathLike[str] | None = None,
        loss_mask: np.ndarray | None = None,
    ) -> None:
        if loss_mask is not None and len(loss_mask) != len(tokens):
            raise DataError(f"{path}: the loss mask has {len(loss_mask)} entries for {len(tokens)} tokens")
        self.tokens = tokens
        self.loss_mask = loss_mask
        self.path = path
        self.split = split
        self.meta = meta
        self._doc_offsets = doc_offsets
        self._tokenizer_arg = tokenizer
        self.separator: int = int(meta["separator"]) if meta else 0
        self._table: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, index: slice | int) -> np.ndarray:
        return self.tokens[index]

    def __repr__(self) -> str:
        return f"TokenFile({str(self.path)!r}, split={self.split!r}, tokens={len(self)}, dtype={self.dtype})"

    @property
    def dtype(self) -> np.dtype:
        return self.tokens.dtype

    @cached_property
    def tokenizer(self) -> Tokenizer:
        """The tokenizer of these ids (the ``tokenizer=`` given to open_tokens wins over meta.json)."""
        arg = self._tokenizer_arg
        if arg is not None:
            return load_tokenizer(arg) if isinstance(arg, (str, os.PathLike)) else arg
        if self.meta is None:
            raise DataError(
                f"{self.path} has no {META_FILE}, so its tokenizer is unknown: pass tokenizer= to "
                "open_tokens (e.g. 'world' for data made by RWKV-LM's make_data.py)"
            )
        return load_meta_tokenizer(self.meta, self.path.parent)

    @property
    def vocab_size(self) -> int:
        """The vocabulary size recorded at preparation (else the tokenizer's)."""
        if self.meta is not None:
            return int(self.meta["vocab_size"])
        return self.tokenizer.vocab_size

    def token_bytes_table(self) -> np.ndarray:
        """int64 [vocab_size]: UTF-8 bytes per id (see :func:`token_bytes_table`), with the separator at 0.

        In a prepared file the separator only ever ends a document, even where the tokenizer gives it
        bytes (id 0 is the NUL byte of the ``bytes`` tokenizer; documents with NUL are never written), so
        it stands for no text. The sum over a document's tokens is its UTF-8 length.
        """
        if self._table is None:
            table = token_bytes_table(self.tokenizer)
            if 0 <= self.separator < len(table):
                table[self.separator] = 0
            self._table = table
        return self._table.copy()  # a copy: callers may modify theirs

    def doc_offsets(self) -> np.ndarray:
        """int64 [docs + 1]: where each document starts (its separator is its last token), then N.

        From the binidx index when there is one, else from the positions of the separator.
        """
        if self._doc_offsets is None:
            ends = np.flatnonzero(np.asarray(self.tokens) == self.separator) + 1
            if len(ends) == 0 or ends[-1] != len(self.tokens):
                ends = np.append(ends, len(self.tokens))  # a last document without separator
            self._doc_offsets = np.concatenate([[0], ends]).astype(np.int64)
            if len(self.tokens) == 0:
                self._doc_offsets = np.zeros(1, np.int64)
        return self._doc_offsets

    def documents(self) -> Iterator[np.ndarray]:
        """Each document's tokens, separator included (views into the memmap)."""
        off = self.doc_offsets()
        for a, b in zip(off[:-1], off[1:]):
            yield self.tokens[a:b]


def _flat_memmap(path: Path, dtype: np.dtype) -> np.ndarray:
    size = path.stat().st_size
    if size % dtype.itemsize:
        raise DataError(
            f"{path}: size {size} is not a multiple of the {dtype} item size: truncated or wrong dtype"
        )
    if size == 0:  # np.memmap refuses empty files
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")


def open_tokens(
    path: str | os.PathLike[str],
    split: str = "train",
    *,
    tokenizer: Tokenizer | str | os.PathLike[str] | None = None,
) -> TokenFile:
    """Open prepared tokens for reading (memory-mapped).

    ``path`` is a folder written by :func:`rwkvkit.data.prepare` (``split`` picks ``train`` or ``val``), the
    ``.bin`` of such a folder, or a binidx prefix / ``.bin`` / ``.idx`` (e.g. made by RWKV-LM's
    ``make_data.py``; its tokenizer is unknown unless a ``meta.json`` lies beside it or ``tokenizer=`` is
    given). ``tokenizer`` overrides the one the folder names. The split's loss mask, when the folder
    has one, is :attr:`TokenFile.loss_mask` (DataError when its file is missing or of another length).
    """
    p = Path(path).expanduser()
    if p.is_dir():
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
        meta = read_meta(p)
        file = p / meta["splits"][split]["file"]
    elif p.suffix == ".bin" and p.is_file() and (p.parent / META_FILE).is_file() and binidx_prefix(p) is None:
        meta, file = read_meta(p.parent), p
    else:
        prefix = binidx_prefix(p)
        if prefix is None:
            raise DataError(
                f"{path} is neither a prepared token folder (with {META_FILE}) nor a binidx dataset "
                "(.bin + .idx)"
            )
        meta = read_meta(prefix.parent) if (prefix.parent / META_FILE).is_file() else None
        file = Path(os.fspath(prefix) + ".bin")
    if not file.is_file():
        raise DataError(f"token file {file} is missing")
    mask = None
    if meta is not None:  # name the split after the file when a .bin was given directly
        split = next((s for s, d in meta["splits"].items() if d["file"] == file.name), split)
        mask_name = meta["splits"].get(split, {}).get("mask")  # absent in folders of older rwkvkit
        if mask_name:
            mask_file = file.parent / mask_name
            if not mask_file.is_file():
                raise DataError(f"loss mask file {mask_file} is missing: prepare the data again")
            mask = _flat_memmap(mask_file, np.dtype(np.uint8))
    if binidx_prefix(file) is not None and (meta is None or meta.get("storage") == "binidx"):
        b = read_binidx(file)
        if meta is not None and b.dtype != np.dtype(meta["dtype"]):
            raise DataError(f"{file}: index dtype {b.dtype} differs from meta.json's {meta['dtype']}")
        return TokenFile(
            b.tokens,
            path=file,
            split=split,
            meta=meta,
            doc_offsets=b.doc_offsets(),
            tokenizer=tokenizer,
            loss_mask=mask,
        )
    assert meta is not None
    return TokenFile(
        _flat_memmap(file, np.dtype(meta["dtype"])),
        path=file,
        split=split,
        meta=meta,
        tokenizer=tokenizer,
        loss_mask=mask,
    )


# --------------------------------------------------------------------------------------------------
# Training windows: a seeded permutation per epoch, with O(1) memory and an exact resume point

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    """SplitMix64's finalizer on a Python int (the round keys of the permutation)."""
    x &= _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _mix(x: np.ndarray) -> np.ndarray:
    """The same finalizer on a uint64 array (numpy wraps uint64 products modulo 2**64)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def permute(index: np.ndarray, n: int, seed: int, epoch: int, rounds: int = 4) -> np.ndarray:
    """A seeded pseudo-random permutation of ``range(n)`` evaluated at ``index`` (int64 [k] -> int64 [k]).

    A 4-round Feistel network on ``2h`` bits (the smallest even width with ``4**h >= n``) is a bijection
    of ``range(4**h)``; cycle-walking (apply it again while the value is ``>= n``) restricts it to
    ``range(n)``, with fewer than 4 steps on average. So ``permute(arange(n), n, ...)`` visits every
    index exactly once, needs no table (any ``n``, O(1) memory), and depends on nothing but this code:
    the same seed and epoch give the same order with any numpy or torch version.
    """
    if n <= 0:
        return np.zeros(0, dtype=np.int64)
    half = max(1, math.ceil(math.log2(n) / 2)) if n > 1 else 1
    lo_mask = np.uint64((1 << half) - 1)
    shift = np.uint64(half)
    keys = [np.uint64(_splitmix64(_splitmix64(_splitmix64(seed) ^ epoch) ^ r)) for r in range(rounds)]

    def feistel(x: np.ndarray) -> np.ndarray:
        left, right = x >> shift, x & lo_mask
        for k in keys:
            left, right = right, left ^ (_mix(right ^ k) & lo_mask)
        return (left << shift) | right

    with np.errstate(over="ignore"):
        y = feistel(np.asarray(index, dtype=np.uint64))
        out = y >= np.uint64(n)
        while out.any():
            y[out] = feistel(y[out])
            out = y >= np.uint64(n)
    return y.astype(np.int64)


class WindowSampler:
    """Training windows of ``ctx_len + 1`` tokens, in a seeded order per epoch, resumable exactly.

    Window ``w`` is ``tokens[w * ctx_len : w * ctx_len + ctx_len + 1]`` (inputs ``[:-1]``, targets
    ``[1:]``), for ``w`` in ``range(n_windows)``, ``n_windows = (len(tokens) - 1) // ctx_len``. Windows
    share only their boundary token (the last target of one is the first input of the next), so in one
    epoch every token after the first is a target exactly once, up to the unfilled tail. This is the
    grid of RWKV-LM's trainer; its order here is :func:`permute` with ``(seed, epoch)``.

    The position is one counter of windows handed out (``epoch``, ``cursor`` within the epoch); a batch
    that crosses the end of an epoch continues in the next epoch's order. With ``world_size > 1`` each
    call consumes ``world_size * batch_size`` windows and rank ``r`` gets the ``r``-th block of them, so
    every rank keeps the same state and any rank's ``state_dict()`` resumes all of them.

    ``loss_mask`` (uint8 or bool [N], default: the TokenFile's own, if any) is read by
    :meth:`next_batch_with_mask` only (which may also be given one per call); :meth:`next_batch`
    returns tokens alone.
    """

    def __init__(
        self,
        tokens: np.ndarray | TokenFile,
        ctx_len: int,
        seed: int = 0,
        *,
        rank: int = 0,
        world_size: int = 1,
        loss_mask: np.ndarray | None = None,
    ) -> None:
        if loss_mask is None and isinstance(tokens, TokenFile):
            loss_mask = tokens.loss_mask
        self.tokens = tokens.tokens if isinstance(tokens, TokenFile) else tokens
        if loss_mask is not None and len(loss_mask) != len(self.tokens):
            raise DataError(f"the loss mask has {len(loss_mask)} entries for {len(self.tokens)} tokens")
        self.loss_mask = loss_mask
        if ctx_len < 1:
            raise DataError(f"ctx_len must be at least 1, got {ctx_len}")
        if not 0 <= rank < world_size:
            raise DataError(f"rank {rank} is not in 0..world_size-1 (world_size {world_size})")
        self.ctx_len, self.seed = int(ctx_len), int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        self.n_tokens = len(self.tokens)
        self.n_windows = max(0, (self.n_tokens - 1) // self.ctx_len)
        if self.n_windows == 0:
            raise DataError(
                f"{self.n_tokens} tokens do not fill one window of ctx_len + 1 = {self.ctx_len + 1} tokens: "
                "use a larger corpus or a smaller ctx_len"
            )
        self._consumed = 0  # windows handed out so far, over all ranks and epochs

    @property
    def epoch(self) -> int:
        """The epoch the next window comes from (0-based)."""
        return self._consumed // self.n_windows

    @property
    def cursor(self) -> int:
        """How many windows of the current epoch are already handed out."""
        return self._consumed % self.n_windows

    def next_starts(self, batch_size: int) -> np.ndarray:
        """int64 [batch_size]: token offsets of this rank's next windows; advances the position."""
        if batch_size < 1:
            raise DataError(f"batch_size must be at least 1, got {batch_size}")
        first = self._consumed + self.rank * batch_size
        g = np.arange(first, first + batch_size, dtype=np.int64)  # global positions of this rank's rows
        epoch, j = np.divmod(g, self.n_windows)
        w = np.empty(batch_size, dtype=np.int64)
        for e in np.unique(epoch):  # at most two epochs unless batch_size > n_windows
            sel = epoch == e
            w[sel] = permute(j[sel], self.n_windows, self.seed, int(e))
        self._consumed += self.world_size * batch_size
        return w * self.ctx_len

    def _windows(self, starts: np.ndarray) -> torch.Tensor:
        T = self.ctx_len + 1
        out = np.empty((len(starts), T), dtype=np.int64)
        for i, s in enumerate(starts.tolist()):  # one small memmap read per row
            out[i] = self.tokens[s : s + T]
        return torch.from_numpy(out)

    def next_batch(self, batch_size: int) -> torch.Tensor:
        """LongTensor [B, ctx_len + 1]: the next windows (inputs ``[:, :-1]``, targets ``[:, 1:]``)."""
        return self._windows(self.next_starts(batch_size))

    def next_batch_with_mask(
        self, batch_size: int, loss_mask: np.ndarray | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The next windows and which of their targets count: ``(tokens, mask)``.

        ``tokens``: LongTensor [B, ctx_len + 1], exactly what :meth:`next_batch` would have returned
        (the position advances the same way, so the two can be mixed and resume alike). ``mask``:
        BoolTensor [B, ctx_len], ``mask[:, t]`` is the loss mask of target ``tokens[:, t + 1]``; all
        True without a loss mask. ``loss_mask`` (uint8 or bool [N]) overrides the sampler's own.
        """
        lm = self.loss_mask if loss_mask is None else loss_mask
        if lm is not None and len(lm) != self.n_tokens:
            raise DataError(f"the loss mask has {len(lm)} entries for {self.n_tokens} tokens")
        starts = self.next_starts(batch_size)
        T = self.ctx_len
        mask = np.ones((batch_size, T), dtype=bool)
        if lm is not None:
            for i, s in enumerate(starts.tolist()):
                mask[i] = lm[s + 1 : s + 1 + T]
        return self._windows(starts), torch.from_numpy(mask)

    def state_dict(self) -> dict[str, int]:
        """The position (``epoch``, ``cursor``) and what it is only valid for (seed, sizes)."""
        return {
            "epoch": self.epoch,
            "cursor": self.cursor,
            "seed": self.seed,
            "ctx_len": self.ctx_len,
            "n_tokens": self.n_tokens,
            "world_size": self.world_size,
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from a :meth:`state_dict`; DataError if it was made for other data or settings."""
        for k in ("seed", "ctx_len", "n_tokens", "world_size"):
            if k in state and int(state[k]) != getattr(self, k):
                raise DataError(
                    f"sampler state was saved with {k}={state[k]}, this sampler has {k}={getattr(self, k)}: "
                    "resume with the same data and settings"
                )
        epoch, cursor = int(state["epoch"]), int(state["cursor"])
        if epoch < 0 or not 0 <= cursor < self.n_windows:
            raise DataError(
                f"sampler state epoch={epoch} cursor={cursor} is out of range ({self.n_windows} windows)"
            )
        self._consumed = epoch * self.n_windows + cursor


# --------------------------------------------------------------------------------------------------
# Evaluation windows: sequential, covering the split once


class EvalBatch(NamedTuple):
    """One batch of evaluation windows (unpacks as ``x, y, mask``).

    ``inputs``, ``targets``: LongTensor [B, T] (T = ctx_len; padding is 0); ``mask``: BoolTensor [B, T],
    True where ``targets`` holds a real token to score (and, with a
    ``loss_mask``, one whose loss counts). Row ``r`` of the whole sequence of batches
    scores ``tokens[first + r*T : first + (r+1)*T]`` (``first`` = 0, or 1 with ``context_token=None``).
    """

    inputs: torch.Tensor
    targets: torch.Tensor
    mask: torch.Tensor


def iter_eval_windows(
    tokens: np.ndarray | TokenFile,
    ctx_len: int,
    batch_size: int,
    *,
    context_token: int | None = 0,
    limit: int | None = None,
    loss_mask: np.ndarray | None = None,
) -> Iterator[EvalBatch]:
    """Sequential, non-overlapping windows over the whole split: every token is a target exactly once.

    Row ``k`` (over all batches) scores the targets ``tokens[k*T : (k+1)*T]`` (T = ``ctx_len``) from the
    inputs one position earlier. Before ``tokens[0]`` stands ``context_token``: the end-of-document
    separator 0 by default, which is what precedes every document of a prepared split, so the first token
    is predicted like any document start. With ``context_token=None`` the first token is only context and
    the targets are ``tokens[1:]``. The last window is shorter: its padding is masked out. The final
    batch may have fewer than ``batch_size`` rows. ``limit`` scores only the first ``limit`` targets
    (a quicker estimate on a prefix of the split); None scores all.

    ``loss_mask`` (uint8 or bool [N], e.g. ``TokenFile.loss_mask``): only the targets whose mask is
    nonzero are scored (``mask`` is also False elsewhere), so the loss of fine-tuning data counts
    the answer tokens only; ``limit`` still counts positions. Not taken from a TokenFile unless given.
    """
    a = tokens.tokens if isinstance(tokens, TokenFile) else tokens
    if loss_mask is not None and len(loss_mask) != len(a):
        raise DataError(f"the loss mask has {len(loss_mask)} entries for {len(a)} tokens")
    if ctx_len < 1 or batch_size < 1:
        raise DataError(f"ctx_len and batch_size must be at least 1 (got {ctx_len}, {batch_size})")
    T = int(ctx_len)
    first = 0 if context_token is not None else 1  # offset of the first target
    end = len(a) if limit is None else min(len(a), first + max(0, int(limit)))  # one past the last target
    n_rows = -(-max(0, end - first) // T)
    for r0 in range(0, n_rows, batch_size):
        rows = min(batch_size, n_rows - r0)
        x = np.zeros((rows, T), dtype=np.int64)
        y = np.zeros((rows, T), dtype=np.int64)
        m = np.zeros((rows, T), dtype=bool)
        for i in range(rows):
            s = first + (r0 + i) * T
            e = min(s + T, end)
            n = e - s
            y[i, :n] = a[s:e]
            m[i, :n] = True if loss_mask is None else loss_mask[s:e] != 0
            if s == 0:  # the virtual context token before the split
                x[i, 0] = context_token
                x[i, 1:n] = a[0 : n - 1]
            else:
                x[i, :n] = a[s - 1 : e - 1]
        yield EvalBatch(torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(m))


__all__ = [
    "META_FILE",
    "META_VERSIONS",
    "EvalBatch",
    "TokenFile",
    "WindowSampler",
    "file_sha256",
    "iter_eval_windows",
    "load_meta_tokenizer",
    "open_tokens",
    "permute",
    "read_meta",
    "token_bytes_table",
]
