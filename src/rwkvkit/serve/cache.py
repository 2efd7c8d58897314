"""A prefix-state cache: the recurrent state after a prompt prefix, kept to resume later requests.

An RNN's whole context is its fixed-size state (RWKV-7 0.1B: 2.4 MB; 1.5B: 25 MB), so a server can
keep the state after every prompt it served and, when the next turn of the same conversation arrives
(the old prompt and answer, then a new message), prefill only the new tokens. Transformer servers
must keep a KV cache that grows with the context to do the same.

:class:`StateCache` maps ``(namespace, token ids)`` to ``(state, logits)``; a lookup returns the
entry with the longest key that is a prefix of the asked ids. Entries are evicted least recently
used first, to stay under a bound in bytes. The namespace separates models and initial states: the
same ids from a different starting state give a different state.

Thread-safe (one lock): the engine thread inserts and looks up, the HTTP side reads the statistics.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["CacheHit", "StateCache", "state_nbytes"]


def state_nbytes(state: Any, logits: torch.Tensor | None = None) -> int:
    """Bytes held by a :class:`rwkvkit.State` (its tensors and logits) and ``logits``."""
    tensors = list(getattr(state, "tensors", {}).values())
    extra = getattr(state, "logits", None)
    for t in (extra, logits):
        if isinstance(t, torch.Tensor):
            tensors.append(t)
    return sum(t.numel() * t.element_size() for t in tensors)


@dataclass(frozen=True)
class CacheHit:
    """A cached prefix: ``length`` ids of the asked ones, the state after them and the logits."""

    length: int
    state: Any
    logits: torch.Tensor


class StateCache:
    """LRU cache of states keyed by token prefix, bounded in bytes (see the module docstring).

    Args:
        max_bytes: the most bytes of states and logits kept (0 disables the cache).
        min_tokens: prefixes shorter than this are not kept (prefilling them is cheaper than a lookup
            is worth).
    """

    def __init__(self, max_bytes: int, min_tokens: int = 1) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self.min_tokens = max(1, int(min_tokens))
        self._entries: OrderedDict[tuple[str, tuple[int, ...]], tuple[Any, torch.Tensor, int]] = OrderedDict()
        self._lengths: dict[str, dict[int, int]] = {}  # namespace -> key length -> number of entries
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.tokens_saved = 0

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def stats(self) -> dict[str, int]:
        """Entries, bytes, hits, misses and prompt tokens not prefilled thanks to the cache."""
        with self._lock:
            return {
                "entries": len(self._entries),
                "bytes": self._bytes,
                "max_bytes": self.max_bytes,
                "hits": self.hits,
                "misses": self.misses,
                "tokens_saved": self.tokens_saved,
            }

    def put(self, namespace: str, ids: Sequence[int], state: Any, logits: torch.Tensor) -> bool:
        """Keep copies of ``state`` and ``logits`` (``[V]``) as the ones after ``ids``; False if not
        kept (cache off, prefix too short, or one entry larger than the whole cache)."""
        if not self.enabled or len(ids) < self.min_tokens:
            return False
        state = state.clone()
        logits = logits.detach().reshape(-1).float().clone()
        size = state_nbytes(state, logits)
        if size > self.max_bytes:
            return False
        key = (namespace, tuple(ids))
        with self._lock:
            if key in self._entries:
                self._remove(key)
            self._entries[key] = (state, logits, size)
            lengths = self._lengths.setdefault(namespace, {})
            lengths[len(ids)] = lengths.get(len(ids), 0) + 1
            self._bytes += size
            while self._bytes > self.max_bytes:
                self._remove(next(iter(self._entries)))
        return True

    def get(self, namespace: str, ids: Sequence[int]) -> CacheHit | None:
        """The entry with the longest key that is a prefix of ``ids`` (marked most recently used), or
        None. The returned state is a copy: the caller may hand it to a model."""
        if not self.enabled:
            return None
        ids = tuple(ids)
        with self._lock:
            for n in sorted(self._lengths.get(namespace, ()), reverse=True):
                if n > len(ids):
                    continue
                key = (namespace, ids[:n])
                entry = self._entries.get(key)
                if entry is not None:
                    self._entries.move_to_end(key)
                    self.hits += 1
                    self.tokens_saved += n
                    state, logits, _ = entry
                    return CacheHit(n, state.clone(), logits.clone())
            self.misses += 1
            return None

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._lengths.clear()
            self._bytes = 0

    def _remove(self, key: tuple[str, tuple[int, ...]]) -> None:
        _, _, size = self._entries.pop(key)
        self._bytes -= size
        namespace, ids = key
        lengths = self._lengths[namespace]
        lengths[len(ids)] -= 1
        if not lengths[len(ids)]:
            del lengths[len(ids)]
