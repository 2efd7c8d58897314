"""WKV-7 (RWKV-7 "Goose") in three tiers: ``naive`` (reference loop), ``chunk`` (parallel), ``step``."""

from rwkvkit.ops.rwkv7.chunk import DEFAULT_CHUNK_SIZE, wkv7_chunk
from rwkvkit.ops.rwkv7.naive import wkv7_naive
from rwkvkit.ops.rwkv7.step import wkv7_step

__all__ = ["wkv7_naive", "wkv7_chunk", "wkv7_step", "DEFAULT_CHUNK_SIZE"]
