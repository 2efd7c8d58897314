"""Small model configurations for tests: every version, vocabularies that are not multiples of 64."""

from __future__ import annotations

from rwkvkit.models.rwkv.config import RWKVConfig

# Two sizes per version: L >= 2 (the official package's version detection needs it for v5),
# odd vocabulary sizes, head sizes 16 to 64, uneven LoRA ranks.
PARITY_CONFIGS: dict[str, RWKVConfig] = {
    "v4-L2-C64": RWKVConfig(version="4", n_layer=2, n_embd=64, vocab_size=301),
    "v4-L3-C96": RWKVConfig(version="4", n_layer=3, n_embd=96, vocab_size=1001, dim_ffn=200),
    "v5.0-L2-C64": RWKVConfig(version="5.0", n_layer=2, n_embd=64, vocab_size=301, head_size=16,
                              v5_log_bonus=True),
    "v5.1-L2-C64": RWKVConfig(version="5.1", n_layer=2, n_embd=64, vocab_size=517, head_size=32,
                              v5_log_bonus=True),
    "v5.2-L2-C64": RWKVConfig(version="5.2", n_layer=2, n_embd=64, vocab_size=301, head_size=16),
    "v5.2-L3-C128": RWKVConfig(version="5.2", n_layer=3, n_embd=128, vocab_size=1001, head_size=64),
    "v6-L2-C64": RWKVConfig(version="6", n_layer=2, n_embd=64, vocab_size=301, head_size=16,
                            lora_mix=8, lora_decay=12),
    "v6-L3-C128": RWKVConfig(version="6", n_layer=3, n_embd=128, vocab_size=1001, head_size=32,
                             lora_mix=16, lora_decay=24),
    "v7-L2-C128": RWKVConfig(version="7", n_layer=2, n_embd=128, vocab_size=1001, head_size=64,
                             lora_w=16, lora_a=16, lora_v=8, lora_g=32),
    "v7-L3-C192": RWKVConfig(version="7", n_layer=3, n_embd=192, vocab_size=517, head_size=32,
                             lora_w=24, lora_a=20, lora_v=12, lora_g=40),
    "v7-L4-C256": RWKVConfig(version="7", n_layer=4, n_embd=256, vocab_size=2050, head_size=64,
                             lora_w=32, lora_a=32, lora_v=16, lora_g=64),
}  # fmt: skip

# one per version, for the cheaper consistency tests
ONE_PER_VERSION = {name.split("-")[0]: cfg for name, cfg in PARITY_CONFIGS.items() if "-L2-" in name}
