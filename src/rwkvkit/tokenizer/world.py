"""The RWKV World tokenizer (``rwkv_vocab_v20230424.txt``, docs/tokenizer.md#world-tokenizer).

Vocabulary file: one token per line, ``<id> <python literal: 'str' or b'bytes'> <byte length>``;
a str literal stands for its UTF-8 bytes. The World file has ids 1..65529; id 0 is not in the file
and is the end-of-document token. Every single byte is a token, so any input can be encoded.

Encoding is greedy longest-prefix matching over the UTF-8 bytes, left to right, with no
normalization, pre-splitting or special-token parsing: from position p, take the longest token that
is a prefix of ``data[p:]`` and continue after it. This gives exactly the ids of the official
``TRIE_TOKENIZER`` (``rwkv/rwkv_tokenizer.py``); the tests check it.

How it is fast (the official per-byte Python trie walk does 2-4 MB/s; this does 10-20 MB/s):

1. ``_Segments`` cuts the input between byte pairs that occur inside no token (no token can span
   such a gap, so the greedy path has a boundary there and the pieces are independent). Real text
   has a cut every ~5 bytes and its pieces repeat a lot, so only the distinct pieces (~10% of the
   bytes of source code or prose) are tokenized. Pieces are grouped by a 64-bit hash and then
   compared byte for byte with their group's representative, so a hash collision can never give a
   wrong result (the block is then tokenized without sharing).
2. ``_TrieMatcher`` computes, for *every* byte position at once, the length and id of the longest
   token starting there. It walks the token trie one depth per step for all positions together in
   numpy: depths 2 and 3 through dense transition tables over whole arrays, deeper ones through a
   bitmap-rank trie (256 child bits per node plus a running child count) on the shrinking set of
   positions whose prefix is still in the trie. This is exact integer work (no hashing).
3. ``_greedy_path`` picks the positions the greedy walk visits (p -> p + L[p]) with walkers started
   at fixed chunk offsets and advanced together in numpy; greedy paths merge quickly, so a short
   Python pass per chunk finds where the true path joins each walker.

Input is processed in blocks of ``_BLOCK`` bytes (plus max-token-length look-ahead), so memory stays
bounded for large inputs. Inputs shorter than ``_SMALL`` bytes take a plain Python walk over a dict of
trie prefixes instead (numpy's fixed costs dominate for a few tokens); so do blocks where almost
every position starts a very long match (e.g. a long run of spaces, see ``_DEEP_BUDGET``), where
matching at every position would cost up to 128 steps per byte.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path

import numpy as np

from rwkvkit.errors import TokenizerError
from rwkvkit.tokenizer.byte_level import ByteLevelTokenizer

WORLD_VOCAB_FILE = "rwkv_vocab_v20230424.txt"

# Ids above this are refused: the id -> bytes table is a dense list.
_MAX_ID = 1 << 24
# Positions matched per numpy block (the block's arrays are a few MB).
_BLOCK = 1 << 18
# Inputs shorter than this use the pure-Python walk.
_SMALL = 8192
# Chunk length of the vectorized greedy walk; ranges shorter than 4 chunks are walked in Python.
_WALK_CHUNK = 256
# The matcher gives up on a block once its deep work (positions x depths beyond the dense tables)
# exceeds this many steps per byte, and the block is walked in Python instead. Real text needs about
# 2-4; long runs of a byte that forms long tokens (128 spaces is one token) would need up to 125,
# where the position-by-position Python walk is much cheaper.
_DEEP_BUDGET = 12
# Dense transition tables are used for trie depths 2..3 while a table has at most this many entries.
_DENSE_MAX = 1 << 22

_BITS = np.left_shift(np.uint64(1), np.arange(64, dtype=np.uint64))  # 1 << k for k in 0..63
_ONE = np.uint64(1)
_LEN_MIX = np.uint64(0xBF58476D1CE4E5B9)  # mixes a piece's length into its hash
_POP8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def _popcount_bytes(x: np.ndarray) -> np.ndarray:
    """Set bits per element of a uint64 array, for numpy < 2.0 (which has no ``np.bitwise_count``)."""
    x = np.ascontiguousarray(x, dtype=np.uint64)
    return _POP8[x.view(np.uint8)].reshape(*x.shape, 8).sum(axis=-1, dtype=np.uint8)


_popcount = getattr(np, "bitwise_count", _popcount_bytes)


# --------------------------------------------------------------------------------------------------
# Vocabulary file


def _malformed(path: Path, lineno: int, what: str) -> TokenizerError:
    return TokenizerError(
        f"malformed line {lineno} of vocabulary file {path}: {what}; each line must be "
        f"'<id> <python str or bytes literal> <byte length>' as in {WORLD_VOCAB_FILE}"
    )


def _parse_literal(lit: str) -> object:
    """The value of a Python str/bytes literal, without ``eval``.

    Almost every World line is a plain quoted string with no backslash; that is read directly
    (about 5x faster than ``ast.literal_eval``, which matters for start-up). Anything else goes
    through ``ast.literal_eval``, which accepts literals only.
    """
    if len(lit) >= 2 and "\\" not in lit:
        q = lit[0]
        if q in "'\"" and lit[-1] == q and q not in lit[1:-1]:
            return lit[1:-1]
        if q == "b" and len(lit) >= 3 and lit[1] in "'\"" and lit[-1] == lit[1] and lit[1] not in lit[2:-1]:
            body = lit[2:-1]
            if body.isascii():  # a bytes literal can only hold ASCII characters
                return body.encode("ascii")
    return ast.literal_eval(lit)


def read_vocab(path: str | Path) -> dict[int, bytes]:
    """Read a World-format vocabulary file into ``{id: token bytes}``.

    Raises TokenizerError (one line: file, line number, problem) if the file is missing, unreadable,
    not UTF-8, or has a malformed line, a length that does not match, a duplicate id or token, an
    empty token, or no tokens at all.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise TokenizerError(f"vocabulary file not found: {path}") from None
    except IsADirectoryError:
        raise TokenizerError(f"vocabulary path {path} is a directory; pass the .txt file itself") from None
    except OSError as e:
        raise TokenizerError(f"cannot read vocabulary file {path}: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise TokenizerError(
            f"vocabulary file {path} is not UTF-8 text (bad byte at offset {e.start}); "
            f"expected a World vocabulary like {WORLD_VOCAB_FILE}"
        ) from None
    # Same line splitting as the official reader (text mode, universal newlines); the package copy
    # has CRLF endings.
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    vocab: dict[int, bytes] = {}
    seen: dict[bytes, int] = {}
    for lineno, line in enumerate(lines, 1):
        if not line:
            continue
        first, last = line.find(" "), line.rfind(" ")
        if first <= 0 or last <= first:
            raise _malformed(path, lineno, "expected three space-separated fields")
        id_str, lit, len_str = line[:first], line[first + 1 : last], line[last + 1 :]
        if not (id_str.isascii() and id_str.isdigit()):
            raise _malformed(path, lineno, f"id {id_str[:20]!r} is not a non-negative integer")
        if not (len_str.isascii() and len_str.isdigit()):
            raise _malformed(path, lineno, f"byte length {len_str[:20]!r} is not a non-negative integer")
        idx = int(id_str)
        if idx >= _MAX_ID:
            raise _malformed(path, lineno, f"id {idx} is too large (at most {_MAX_ID - 1})")
        try:
            value = _parse_literal(lit)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            raise _malformed(path, lineno, f"{lit[:40]!r} is not a Python str or bytes literal") from None
        if isinstance(value, str):
            try:
                value = value.encode("utf-8")
            except UnicodeEncodeError:  # e.g. '\ud800'
                raise _malformed(path, lineno, f"{lit[:40]!r} is not encodable as UTF-8") from None
        elif not isinstance(value, bytes):
            raise _malformed(path, lineno, f"{lit[:40]!r} is a {type(value).__name__}, not str or bytes")
        if len(value) != int(len_str):
            raise _malformed(path, lineno, f"token is {len(value)} bytes long, but the line says {len_str}")
        if not value:
            raise _malformed(path, lineno, "empty token")
        if idx in vocab:
            raise _malformed(path, lineno, f"duplicate id {idx}")
        if value in seen:
            raise _malformed(path, lineno, f"token {value!r} already has id {seen[value]}")
        vocab[idx] = value
        seen[value] = idx
    if not vocab:
        raise TokenizerError(
            f"vocabulary file {path} has no tokens; expected a World vocabulary like {WORLD_VOCAB_FILE}"
        )
    return vocab


# --------------------------------------------------------------------------------------------------
# Vectorized longest match


class _TrieMatcher:
    """Longest-token-match length and id at every position of a byte string, computed in numpy.

    The trie is stored level by level. A node at depth l has a *local* id (1-based, 0 = "no node")
    among the nodes of depth l, numbered in sorted (parent local id, byte) order.

    * Depths 2..``self.dense_depth``: dense tables ``dense[l][parent_local * 256 + byte] -> local``
      (row 0 is all zeros, so "no node" stays "no node").
    * Deeper: each node of depth >= ``dense_depth`` gets a *global* id (depth by depth, so children
      are numbered consecutively in (parent, byte) order). ``bits[4 g + w]`` holds child bits
      64w..64w+63 of node g and ``base[4 g + w]`` the global id its first child in that word would
      have, so the child of g on byte b is ``base[..] + popcount(bits[..] & ((1 << (b & 63)) - 1))``.
    * ``term`` arrays give ``token id + 1`` for nodes that end a token (0 otherwise).
    """

    def __init__(self, vocab: Mapping[int, bytes]) -> None:
        ids = np.fromiter(vocab.keys(), dtype=np.int64, count=len(vocab))
        lens = np.fromiter(map(len, vocab.values()), dtype=np.int64, count=len(vocab))
        order = np.argsort(lens, kind="stable")  # by length, so "tokens of length >= l" is a suffix
        values = list(vocab.values())
        blob = np.frombuffer(b"".join([values[i] for i in order.tolist()]), dtype=np.uint8)
        ids, lens = ids[order], lens[order]
        starts = np.zeros(len(lens), dtype=np.int64)
        np.cumsum(lens[:-1], out=starts[1:])
        self.maxlen = maxlen = int(lens[-1])

        keys: list[np.ndarray] = []  # per depth l (index l - 1): sorted parent_local * 256 + byte
        terms: list[np.ndarray] = []  # per depth: token id + 1 at each local id (index 0: none)
        parent = np.zeros(len(lens), dtype=np.int64)  # local id of each token's prefix of length l - 1
        for depth in range(1, maxlen + 1):
            lo = int(np.searchsorted(lens, depth, "left"))  # tokens [lo:] are at least `depth` long
            hi = int(np.searchsorted(lens, depth, "right"))  # tokens [lo:hi] are exactly `depth` long
            key = parent[lo:] * 256 + blob[starts[lo:] + depth - 1]
            uniq, inv = np.unique(key, return_inverse=True)
            term = np.zeros(len(uniq) + 1, dtype=np.int64)
            term[inv[: hi - lo] + 1] = ids[lo:hi] + 1
            parent[lo:] = inv + 1
            keys.append(uniq)
            terms.append(term)
        if len(keys[0]) != 256:  # read_vocab's callers check this; a guard for direct use
            raise TokenizerError("the vocabulary must contain every single byte as a token")
        # depth 1: all 256 bytes exist, so local(b) = b + 1
        self.term1 = terms[0]
        self.dense: dict[int, np.ndarray] = {}
        self.dterm: dict[int, np.ndarray] = {}
        self.dense_depth = 1
        for depth in (2, 3):
            if depth > maxlen or (len(keys[depth - 2]) + 1) * 256 > _DENSE_MAX:
                break
            table = np.zeros((len(keys[depth - 2]) + 1) * 256, dtype=np.int64)
            table[keys[depth - 1]] = np.arange(1, len(keys[depth - 1]) + 1)
            self.dense[depth], self.dterm[depth] = table, terms[depth - 1]
            self.dense_depth = depth

        # bitmap-rank trie for depths dense_depth .. maxlen
        d0 = self.dense_depth
        goff = {}  # global id = goff[depth] + local id
        total = 0
        for depth in range(d0, maxlen + 1):
            goff[depth] = total
            total += len(keys[depth - 1])
        bits = np.zeros((total + 1) * 4, dtype=np.uint64)
        term = np.zeros(total + 1, dtype=np.int64)
        for depth in range(d0, maxlen + 1):
            term[goff[depth] + 1 : goff[depth] + 1 + len(keys[depth - 1])] = terms[depth - 1][1:]
            if depth > d0:
                k = keys[depth - 1]
                byte = k & 255
                word = (goff[depth - 1] + (k >> 8)) * 4 + (byte >> 6)
                np.bitwise_or.at(bits, word, _BITS[byte & 63])
        count = _popcount(bits).astype(np.int64)
        first_child = goff[d0 + 1] + 1 if d0 < maxlen else 0
        self.base = np.cumsum(count) - count + first_child
        self.bits, self.term = bits, term
        self.goff_dense = goff[d0]  # 0: local ids at depth d0 are already global ids

    def longest(self, data: bytes, count: int, budget: float) -> tuple[np.ndarray, np.ndarray] | None:
        """Longest match at positions ``0..count-1`` of ``data`` (which may extend further as look-ahead).

        Returns ``(length, ids)``, both shape ``[count]``: ``length[i]`` (int64, >= 1) is the byte
        length and ``ids[i]`` (int64) the id of the longest token that is a prefix of ``data[i:]``.
        Returns None once the deep levels have processed more than ``budget`` (position, depth) pairs,
        or when over half of the positions still match at depth 8 (real text: about 10%).
        """
        a = np.frombuffer(data, dtype=np.uint8)
        n = len(a)
        ai = a.astype(np.intp)
        ids = self.term1[ai[:count] + 1] - 1  # every byte is a token
        length = np.ones(count, dtype=np.int64)
        s = ai[:count] + 1  # local ids at depth 1
        for depth in range(2, self.dense_depth + 1):
            c = min(count, n - depth + 1)  # positions with `depth` bytes left
            if c <= 0:
                return length, ids
            s = self.dense[depth][s[:c] * 256 + ai[depth - 1 : depth - 1 + c]]
            t = self.dterm[depth][s]
            hit = np.flatnonzero(t)
            length[hit] = depth
            ids[hit] = t[hit] - 1
        pos = np.flatnonzero(s)  # positions whose first dense_depth bytes are still a trie node
        node4 = (s[pos] + self.goff_dense) * 4
        bits, base, term = self.bits, self.base, self.term
        hi6 = ai >> 6  # which 64-bit word of the child bitmap a byte falls in
        bit = _BITS[ai & 63]  # the byte's bit within that word
        work = 0
        for depth in range(self.dense_depth + 1, self.maxlen + 1):
            lim = n - depth + 1  # positions >= lim have fewer than `depth` bytes left
            if len(pos) and pos[-1] >= lim:
                cut = int(np.searchsorted(pos, lim))
                pos, node4 = pos[:cut], node4[:cut]
            if not len(pos):
                break
            work += len(pos)
            if work > budget or (depth >= 8 and 2 * len(pos) > count):
                return None  # long matches nearly everywhere: the caller walks position by position
            j = pos + (depth - 1)  # index of the byte that extends the prefix
            widx = node4 + hi6[j]
            word = bits[widx]
            keep = np.flatnonzero(word & bit[j])
            pos, widx, word, j = pos[keep], widx[keep], word[keep], j[keep]
            node = base[widx] + _popcount(word & (bit[j] - _ONE))
            t = term[node]
            hit = np.flatnonzero(t)
            ph = pos[hit]
            length[ph] = depth
            ids[ph] = t[hit] - 1
            node4 = node * 4
        return length, ids


def _greedy_path(length: np.ndarray) -> tuple[np.ndarray, int]:
    """Positions visited by ``p = 0; while p < n: p += length[p]`` (n = ``len(length)``).

    Returns ``(positions, end)``: the visited positions (sorted, int64) and the first position
    ``>= n``. Walkers start at every ``_WALK_CHUNK`` offset and advance together in numpy until they
    leave their chunk; then one Python pass follows the true path from chunk to chunk, stepping
    itself only until it lands on a position the chunk's walker visited (from there on the two paths
    coincide, so the walker's positions are taken as they are). Greedy paths merge within a few
    tokens, so that pass is short.
    """
    n = len(length)
    size = _WALK_CHUNK
    if n <= 4 * size:
        lens = length.tolist()
        out, p = [], 0
        while p < n:
            out.append(p)
            p += lens[p]
        return np.asarray(out, dtype=np.int64), p
    starts = np.arange(0, n, size, dtype=np.int64)
    ends = np.minimum(starts + size, n)
    cur = starts.copy()
    visited = np.zeros(n, dtype=bool)
    active = np.arange(len(starts))
    while len(active):
        c = cur[active]
        visited[c] = True
        c = c + length[c]
        cur[active] = c
        active = active[c < ends[active]]
    # Follow the true path; sync[j] = first position from which walker j's positions are on it.
    exits = cur.tolist()
    sync = ends.copy()
    extra: list[int] = []
    p = 0
    for j, end in enumerate(ends.tolist()):
        while p < end and not visited[p]:
            extra.append(p)
            p += int(length[p])
        if p < end:  # landed on walker j's path: the rest of the chunk follows it
            sync[j] = p
            p = exits[j]
        # else the true path crossed chunk j without meeting walker j: none of its positions count
    vpos = np.flatnonzero(visited)
    visited[vpos[vpos < sync[vpos // size]]] = False
    visited[extra] = True
    return np.flatnonzero(visited), p


class _Segments:
    """Splits input where no token can cross, and deduplicates the pieces.

    ``cross[x * 256 + y]`` is True when the byte pair (x, y) occurs inside some token. Where a pair
    does not, no token spans the gap between its two bytes, so the greedy path has a token boundary
    there and the two sides can be tokenized independently. In real text these cuts are frequent
    (before most spaces and punctuation: about 1 byte in 5 for English or code, every character for
    Chinese) and the pieces repeat a lot (about 10% of the bytes of 1 MB of Python source are in
    distinct pieces). So each distinct piece is tokenized once.

    Pieces are grouped by a 64-bit polynomial hash, then every piece is compared byte for byte with
    its group's representative, so a hash collision can never give a wrong result (it only makes
    the caller tokenize that block without deduplication). The distinct pieces are tokenized as one
    string, joined by a separator byte that never occurs next to any other byte inside a token (so
    it is a cut on both sides and a token of its own).
    """

    _BASE = 0x9E3779B97F4A7C15  # odd, so invertible modulo 2**64

    def __init__(self, vocab: Mapping[int, bytes]) -> None:
        blob = np.frombuffer(b"".join(vocab.values()), dtype=np.uint8).astype(np.intp)
        last = np.cumsum(np.fromiter(map(len, vocab.values()), dtype=np.int64, count=len(vocab))) - 1
        pair = blob[:-1] * 256 + blob[1:]
        inner = np.ones(len(pair), dtype=bool)
        inner[last[:-1]] = False  # the pair that straddles two tokens of the join is not inside a token
        self.cross = np.zeros(65536, dtype=bool)
        self.cross[pair[inner]] = True
        grid = self.cross.reshape(256, 256)
        free = np.flatnonzero(~grid.any(axis=0) & ~grid.any(axis=1))  # bytes with no neighbour inside tokens
        self.sep: int | None = int(free[0]) if len(free) else None
        self._powers(1 << 16)

    def _powers(self, size: int) -> None:
        """Cache BASE**k and BASE**-k (mod 2**64, by uint64 wrap-around) for k < size."""
        inv = pow(self._BASE, -1, 1 << 64)
        fwd, back = np.ones(size, dtype=np.uint64), np.ones(size, dtype=np.uint64)
        np.cumprod(np.full(size - 1, self._BASE, dtype=np.uint64), out=fwd[1:])
        np.cumprod(np.full(size - 1, inv, dtype=np.uint64), out=back[1:])
        # swapped in whole: a thread hashing meanwhile sees either table (both are valid prefixes)
        self.ipow, self.pow = back, fwd

    def cuts(self, a: np.ndarray) -> np.ndarray:
        """Indices i (1 <= i < len(a)) where no token can contain both ``a[i-1]`` and ``a[i]``."""
        ai = a.astype(np.intp)
        return np.flatnonzero(~self.cross[ai[:-1] * 256 + ai[1:]]) + 1

    def group(self, a: np.ndarray, cuts: np.ndarray) -> tuple[np.ndarray, ...] | None:
        """Group the pieces of ``a`` between ``cuts`` by content.

        Returns ``(starts, lens, rep, inv)``: piece k is ``a[starts[k] : starts[k] + lens[k]]``;
        ``rep[d]`` is the index of one piece with distinct content d, and ``inv[k]`` the distinct
        index of piece k. None if two different pieces share a hash (every piece is compared with its
        representative, so a collision is always detected).
        """
        m = len(a)
        if len(self.pow) < m + 1:
            self._powers(max(m + 1, 2 * len(self.pow)))
        starts = np.concatenate(([0], cuts))
        ends = np.concatenate((cuts, [m]))
        lens = ends - starts
        # prefix sums of (byte + 1) * BASE**k; the +1 keeps zero bytes from vanishing
        h = np.zeros(m + 1, dtype=np.uint64)
        np.cumsum((a.astype(np.uint64) + np.uint64(1)) * self.pow[:m], out=h[1:])
        key = (h[ends] - h[starts]) * self.ipow[starts] + lens.astype(np.uint64) * _LEN_MIX
        _, rep, inv = np.unique(key, return_index=True, return_inverse=True)
        # exact check: every piece has its representative's length and bytes
        rep_of = rep[inv]
        if not np.array_equal(lens[rep_of], lens):
            return None
        piece = np.zeros(m, dtype=np.int64)
        piece[cuts] = 1
        np.cumsum(piece, out=piece)  # piece index of every byte
        shift = (starts[rep_of] - starts)[piece]  # offset of the same byte in the representative
        if not np.array_equal(a[np.arange(m) + shift], a):
            return None
        return starts, lens, rep, inv


# --------------------------------------------------------------------------------------------------
# Tokenizer


class WorldTokenizer(ByteLevelTokenizer):
    """Greedy longest-match byte tokenizer over a World-format vocabulary.

    ``vocab_size`` is the largest id + 1 (65530 for the World vocabulary). ``eos_id`` is 0 when the
    vocabulary does not define id 0 (the World convention: id 0 ends a document and decodes to
    nothing), else None. ``encode`` never returns ``eos_id``.
    """

    def __init__(self, vocab: Mapping[int, bytes], name: str = "world") -> None:
        """``vocab``: ``{id: token bytes}`` (ids >= 0, tokens non-empty and distinct, all 256 single
        bytes present); raises TokenizerError otherwise."""
        if not vocab:
            raise TokenizerError(f"tokenizer {name!r}: the vocabulary is empty")
        if min(vocab) < 0 or max(vocab) >= _MAX_ID:
            raise TokenizerError(f"tokenizer {name!r}: ids must be in 0..{_MAX_ID - 1}")
        if any(not t for t in vocab.values()) or len(set(vocab.values())) != len(vocab):
            raise TokenizerError(f"tokenizer {name!r}: tokens must be non-empty and distinct")
        missing = sorted(set(range(256)) - {t[0] for t in vocab.values() if len(t) == 1})
        if missing:
            shown = ", ".join(f"0x{b:02x}" for b in missing[:8]) + (", ..." if len(missing) > 8 else "")
            raise TokenizerError(
                f"tokenizer {name!r}: the vocabulary has no single-byte token for {len(missing)} byte "
                f"value(s) ({shown}); every byte must be a token so that any text can be encoded"
            )
        self.name = name
        self.eos_id = None if 0 in vocab else 0
        table: list[bytes | None] = [None] * (max(vocab) + 1)
        for i, t in vocab.items():
            table[i] = bytes(t)
        if self.eos_id == 0:
            table[0] = b""
        self._table = table
        self.vocab_size = len(table)
        self._matcher = _TrieMatcher(vocab)
        self._maxlen = self._matcher.maxlen
        self._segments = _Segments(vocab)

    @classmethod
    def from_file(cls, path: str | Path, name: str | None = None) -> WorldTokenizer:
        """Load a World-format ``.txt`` vocabulary (:func:`read_vocab`), named after the file by default."""
        path = Path(path)
        return cls(read_vocab(path), name=name or path.stem)

    # -- short inputs: Python walk ------------------------------------------------------------------

    @cached_property
    def _prefixes(self) -> dict[bytes, int]:
        """Every prefix of every token -> its id, or -1 if that prefix is not itself a token."""
        out: dict[bytes, int] = {}
        for t in self._table:
            if t:
                for k in range(1, len(t)):
                    out.setdefault(t[:k], -1)
        for i, t in enumerate(self._table):
            if t:
                out[t] = i
        return out

    def _walk(self, data: bytes, stop: int) -> tuple[list[int], list[int], int]:
        """Greedy walk in Python from position 0 over the positions ``< stop`` (``data`` after ``stop``
        is look-ahead). Returns ``(positions, ids, end)``, end = first path position ``>= stop``."""
        prefixes = self._prefixes
        n = len(data)
        positions: list[int] = []
        ids: list[int] = []
        p = 0
        while p < stop:
            best, end = prefixes[data[p : p + 1]], p + 1
            limit = min(p + self._maxlen, n)
            q = p + 2
            while q <= limit:  # extend while data[p:q] is still a trie node; remember the last token
                v = prefixes.get(data[p:q])
                if v is None:
                    break
                if v >= 0:
                    best, end = v, q
                if q - p >= 16 and q < limit:
                    # A long match (e.g. a run of spaces): trie nodes along data[p:] are exactly the
                    # prefixes up to some length, so bisect for it, then step back to the last token.
                    lo, hi = q, limit
                    while lo < hi:
                        mid = (lo + hi + 1) >> 1
                        if data[p:mid] in prefixes:
                            lo = mid
                        else:
                            hi = mid - 1
                    for r in range(lo, q, -1):
                        if prefixes[data[p:r]] >= 0:
                            best, end = prefixes[data[p:r]], r
                            break
                    break
                q += 1
            positions.append(p)
            ids.append(best)
            p = end
        return positions, ids, p

    # -- long inputs: numpy --------------------------------------------------------------------------

    def _path(self, data: bytes, stop: int) -> tuple[np.ndarray, np.ndarray, int]:
        """Greedy path from position 0 over the positions ``< stop`` of ``data`` (bytes after ``stop``
        are look-ahead only). Returns ``(positions, ids, end)``, end = first path position ``>= stop``."""
        pos_parts, id_parts = [], []
        p = 0
        while p < stop:
            count = min(_BLOCK, stop - p)
            chunk = data[p : p + count + self._maxlen - 1]
            found = self._matcher.longest(chunk, count, budget=_DEEP_BUDGET * count)
            if found is None:  # very long matches everywhere: walk this block position by position
                walked, ids, end = self._walk(chunk, count)
                pos_parts.append(np.asarray(walked, dtype=np.int64) + p)
                id_parts.append(np.asarray(ids, dtype=np.int64))
            else:
                length, ids = found
                pos, end = _greedy_path(length)
                pos_parts.append(pos + p)
                id_parts.append(ids[pos])
            p += end
        if not pos_parts:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), p
        return np.concatenate(pos_parts), np.concatenate(id_parts), p

    def _encode_pieces(self, block: bytes, cuts: np.ndarray) -> np.ndarray:
        """Ids of ``block``, which must start on the greedy path and end at a cut (or the input's end);
        ``cuts`` are the cut indices inside it. Tokenizes each distinct piece once (see ``_Segments``)."""
        a = np.frombuffer(block, dtype=np.uint8)
        sep = self._segments.sep
        grouped = self._segments.group(a, cuts) if sep is not None and len(cuts) else None
        if grouped is None:  # nothing to share (or a hash collision): tokenize the block directly
            return self._path(block, len(block))[1]
        starts, lens, rep, inv = grouped
        # the distinct pieces, each followed by the separator byte
        rlen = lens[rep]
        roff = np.cumsum(rlen + 1) - (rlen + 1)  # offset of each distinct piece in `joined`
        total = int(roff[-1] + rlen[-1] + 1)
        joined = np.full(total, sep, dtype=np.uint8)
        body = np.ones(total, dtype=bool)
        body[roff + rlen] = False
        # source index of every body byte: a ragged concatenation of ranges starts[rep] + 0..rlen-1
        src = np.repeat(starts[rep] - (np.cumsum(rlen) - rlen), rlen) + np.arange(int(rlen.sum()))
        joined[body] = a[src]
        pos, ids, _ = self._path(joined.tobytes(), total)
        # tokens of distinct piece d: path positions in [roff[d], roff[d] + rlen[d])
        tfirst = np.searchsorted(pos, roff)
        tcount = np.searchsorted(pos, roff + rlen) - tfirst
        # output: for each piece in order, the token run of its distinct piece
        cnt = tcount[inv]
        out_off = np.cumsum(cnt) - cnt
        idx = np.repeat(tfirst[inv] - out_off, cnt) + np.arange(int(cnt.sum()))
        return ids[idx]

    def encode_bytes(self, data: bytes | bytearray | memoryview) -> list[int]:
        """Token ids of raw bytes: greedy longest-prefix match, left to right."""
        data = bytes(data)
        n = len(data)
        if n < _SMALL:
            return self._walk(data, n)[1]
        parts: list[np.ndarray] = []
        p = 0  # always a position on the greedy path
        while p < n:
            stop = min(p + _BLOCK, n)
            # cuts in (p, stop]; a cut at stop (a gap inside the data) can end the block too
            window = np.frombuffer(data, dtype=np.uint8, count=min(stop + 1, n) - p, offset=p)
            cuts = self._segments.cuts(window)
            if stop == n:
                parts.append(self._encode_pieces(data[p:n], cuts))
                p = n
            elif len(cuts):
                q = int(cuts[-1])
                parts.append(self._encode_pieces(data[p : p + q], cuts[:-1]))
                p += q
            else:  # no cut in a whole block (e.g. a very long run of spaces): plain walk with look-ahead
                _, ids, end = self._path(data[p : stop + self._maxlen - 1], stop - p)
                parts.append(ids)
                p += end
        return np.concatenate(parts).tolist() if parts else []


__all__ = ["WORLD_VOCAB_FILE", "WorldTokenizer", "read_vocab"]
