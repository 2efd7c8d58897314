"""GPT-2-style transformer baseline (the yardstick RWKV models are compared against)."""

from rwkvkit.models.gpt.config import GPTConfig
from rwkvkit.models.gpt.model import GPT

__all__ = ["GPT", "GPTConfig"]
