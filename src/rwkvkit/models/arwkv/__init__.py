"""ARWKV: a transformer with RWKV-7 time mixing in place of attention (the student of distillation)."""

from rwkvkit.models.arwkv.config import ARWKVConfig
from rwkvkit.models.arwkv.model import ARWKV, ARWKVBlock, RMSNorm, SwiGLU

__all__ = ["ARWKV", "ARWKVBlock", "ARWKVConfig", "RMSNorm", "SwiGLU"]
