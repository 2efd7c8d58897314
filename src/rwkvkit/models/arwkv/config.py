"""Configuration of the ARWKV hybrid: a transformer's embeddings, RMSNorms, SwiGLU MLPs and head with
every attention replaced by an RWKV-7 time mix (docs/seed-systems.md#arwkv)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from rwkvkit.errors import ConfigError
from rwkvkit.models.rwkv.config import RWKVConfig
from rwkvkit.models.rwkv.versions import spec_of


@dataclass(frozen=True, kw_only=True)
class ARWKVConfig:
    vocab_size: int
    n_layer: int
    n_embd: int  # the teacher's hidden size
    intermediate_size: int  # the teacher's MLP width
    head_size: int = 64  # RWKV-7 heads of 64 (the paper's configs)
    rms_norm_eps: float = 1e-6
    tie_embeddings: bool = False  # the head shares the embedding matrix (small Qwen2 models do)
    lora_w: int = 0  # RWKV-7 LoRA ranks; 0 means the official default for n_embd
    lora_a: int = 0
    lora_v: int = 0
    lora_g: int = 0
    gate: bool = True  # RWKV-7's output gate in the time mix (ARWKV's released 7B drops it)
    group_norm: bool = True  # the GroupNorm on the WKV output (likewise optional in ARWKV)
    version: str = "7"  # the recurrent state is RWKV-7's (rwkvkit.State, generation)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "n_layer", "n_embd", "intermediate_size", "head_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"ARWKVConfig.{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.head_size:
            raise ConfigError(
                f"ARWKVConfig: n_embd {self.n_embd} is not a multiple of head_size {self.head_size}; "
                "RWKV-7 splits the full width into heads (use head_size 64, or one that divides the width)"
            )
        if self.version != "7":
            raise ConfigError(f"ARWKV uses RWKV-7 time mixing (version '7'), got version {self.version!r}")
        if not self.rms_norm_eps > 0:
            raise ConfigError(f"ARWKVConfig.rms_norm_eps must be > 0, got {self.rms_norm_eps!r}")

    @property
    def n_head(self) -> int:
        return self.n_embd // self.head_size

    def rwkv_config(self):
        """The RWKV-7 config of the time mixes and of the recurrent state (``rwkvkit.State``)."""
        ranks = spec_of("7").default_lora_ranks(self.n_embd)
        for name in ("lora_w", "lora_a", "lora_v", "lora_g"):
            if getattr(self, name):
                ranks[name] = getattr(self, name)
        return RWKVConfig(version="7", n_layer=self.n_layer, n_embd=self.n_embd, vocab_size=self.vocab_size,
                          head_size=self.head_size, **ranks)  # fmt: skip

    def replace(self, **changes) -> ARWKVConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ARWKVConfig:
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - fields)
        if unknown:
            raise ConfigError(f"unknown ARWKVConfig fields {unknown}; known: {sorted(fields)}")
        return cls(**d)

    @classmethod
    def from_transformers(
        cls, hf_config, head_size: int = 64, gate: bool = True, group_norm: bool = True
    ) -> ARWKVConfig:
        """The student config of a transformers causal-LM config (Qwen2, Llama and alike)."""
        need = ("vocab_size", "num_hidden_layers", "hidden_size", "intermediate_size")
        missing = [n for n in need if not hasattr(hf_config, n)]
        if missing:
            raise ConfigError(
                f"the teacher config ({type(hf_config).__name__}) lacks {missing}; ARWKV needs a "
                "Qwen2/Llama-style decoder (RMSNorm, SwiGLU MLP)"
            )
        return cls(vocab_size=hf_config.vocab_size, n_layer=hf_config.num_hidden_layers,
                   n_embd=hf_config.hidden_size, intermediate_size=hf_config.intermediate_size,
                   head_size=head_size, gate=gate, group_norm=group_norm,
                   rms_norm_eps=float(getattr(hf_config, "rms_norm_eps", 1e-6)),
                   tie_embeddings=bool(getattr(hf_config, "tie_word_embeddings", False)))  # fmt: skip
