"""Configuration of the RWKV language models (v4 to v7): one frozen dataclass, named presets.

Sizes are read from checkpoint shapes (``rwkvkit.formats``), never from formulas: the official
LoRA ranks do not always follow the published formula (docs/checkpoints.md#lora-ranks).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from rwkvkit.errors import ConfigError
from rwkvkit.models.rwkv.versions import VERSIONS, VersionSpec, spec_of

__all__ = ["PRESETS", "VERSIONS", "RWKVConfig"]


@dataclass(frozen=True, kw_only=True)
class RWKVConfig:
    """Sizes of an RWKV language model.

    ``version``: ``"4"``, ``"5.0"``, ``"5.1"``, ``"5.2"`` (Eagle), ``"6"`` (Finch) or ``"7"`` (Goose).
    """

    version: str
    n_layer: int
    n_embd: int  # C
    vocab_size: int  # V (rows of emb / head); need not be a multiple of 64
    head_size: int = 64  # N; 64 in every official v5/v6/v7 model; unused by v4 (no heads)
    dim_att: int = 0  # A, width of the v4-v6 time mix; 0 means C (every official model)
    dim_ffn: int = 0  # F; 0 means the version's default (v4, v7: 4C; v5, v6: int(3.5C) // 32 * 32)
    # RWKV-5: the bonus is stored as its log (``time_first``, u = exp) instead of ``time_faaaa`` (u)
    v5_log_bonus: bool = False
    # RWKV-6 low-rank ranks of the data-dependent lerp (D_mix, 32 officially) and decay (D_dec, 64)
    lora_mix: int = 0
    lora_decay: int = 0
    # RWKV-7 low-rank (LoRA) ranks of the decay, in-context learning rate, value residual and gate
    lora_w: int = 0
    lora_a: int = 0
    lora_v: int = 0
    lora_g: int = 0

    def __post_init__(self) -> None:
        spec = spec_of(self.version)
        for name in ("n_layer", "n_embd", "vocab_size", "head_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"RWKVConfig.{name} must be >= 1, got {getattr(self, name)}")
        # derived values are filled in once here and never changed later
        if self.dim_att == 0:
            object.__setattr__(self, "dim_att", self.n_embd)
        if self.dim_ffn == 0:
            object.__setattr__(self, "dim_ffn", spec.default_dim_ffn(self.n_embd))
        if spec.dim_att_is_n_embd and self.dim_att != self.n_embd:
            raise ConfigError(
                f"RWKV-{self.version} has dim_att == n_embd, got dim_att {self.dim_att}, n_embd {self.n_embd}"
            )
        if spec.has_heads and self.dim_att % self.head_size:
            raise ConfigError(
                f"dim_att {self.dim_att} is not a multiple of head_size {self.head_size}; "
                "RWKV splits the channels into heads of head_size"
            )
        if self.v5_log_bonus and not spec.log_bonus:
            raise ConfigError(f"v5_log_bonus is an RWKV-5 setting; RWKV-{self.version} has no log bonus")
        for name in spec.lora_fields:
            if getattr(self, name) < 1:
                raise ConfigError(
                    f"RWKV-{self.version} needs RWKVConfig.{name} >= 1, got {getattr(self, name)}"
                )

    @property
    def spec(self) -> VersionSpec:
        """What this version is (:mod:`rwkvkit.models.rwkv.versions`)."""
        return spec_of(self.version)

    @property
    def n_head(self) -> int:
        """H = A / N (v5-v7; 0 for v4, which has no heads)."""
        return self.dim_att // self.head_size if self.spec.has_heads else 0

    def replace(self, **changes) -> RWKVConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> RWKVConfig:
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - fields
        if unknown:
            raise ConfigError(f"unknown RWKVConfig fields {sorted(unknown)}; known: {sorted(fields)}")
        return cls(**d)

    @classmethod
    def from_name(cls, name: str) -> RWKVConfig:
        """A named preset (exact match), e.g. ``"rwkv7-0.1b"``."""
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}")
        return PRESETS[name]


def _v7(n_layer: int, n_embd: int, lw: int, la: int, lv: int, lg: int, vocab: int = 65536) -> RWKVConfig:
    return RWKVConfig(
        version="7", n_layer=n_layer, n_embd=n_embd, vocab_size=vocab,
        lora_w=lw, lora_a=la, lora_v=lv, lora_g=lg,
    )  # fmt: skip


# Official RWKV-7 World sizes (docs/checkpoints.md#lora-ranks; vocab 65536, F = 4C).
PRESETS: dict[str, RWKVConfig] = {
    "rwkv7-0.1b": _v7(12, 768, 64, 64, 32, 128),
    "rwkv7-0.4b": _v7(24, 1024, 64, 64, 32, 128),
    "rwkv7-1.5b": _v7(24, 2048, 96, 96, 64, 256),
    "rwkv7-2.9b": _v7(32, 2560, 96, 96, 64, 320),
    "rwkv7-7.2b": _v7(32, 4096, 128, 128, 96, 480),
}
