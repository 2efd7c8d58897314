"""BASED linear attention (second-order Taylor feature map) in three tiers: ``naive`` (quadratic
reference), ``chunk`` (chunked parallel, carries a state) and ``step`` (one token)."""

from rwkvkit.ops.based.chunk import DEFAULT_CHUNK_SIZE, based_chunk
from rwkvkit.ops.based.naive import based_naive, feature_size, taylor_feature_map
from rwkvkit.ops.based.step import based_state_size, based_step

__all__ = [
    "taylor_feature_map",
    "feature_size",
    "based_naive",
    "based_chunk",
    "based_step",
    "based_state_size",
    "DEFAULT_CHUNK_SIZE",
]
