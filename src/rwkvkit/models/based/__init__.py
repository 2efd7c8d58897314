"""BASED: linear attention + sliding window + gated convolutions (see :mod:`rwkvkit.models.based.model`)."""

from rwkvkit.models.based.config import BasedConfig, hybrid_pattern
from rwkvkit.models.based.model import BasedLM

__all__ = ["BasedConfig", "BasedLM", "hybrid_pattern"]
