"""Configuration of the BASED language model (Arora et al., arXiv 2402.18668): sizes and layer mix."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from rwkvkit.errors import ConfigError

MIXERS = ("linear", "swa", "conv")


@dataclass(frozen=True, kw_only=True)
class BasedConfig:
    """Sizes of a BASED LM. ``layer_types`` gives each layer's sequence mixer: ``"linear"`` (Taylor
    linear attention), ``"swa"`` (sliding-window attention) or ``"conv"`` (gated short convolution);
    empty means the published hybrid pattern (:func:`hybrid_pattern`)."""

    n_layer: int
    d_model: int
    n_heads: int
    vocab_size: int
    feature_dim: int = 16  # D: q and k are projected to n_heads x D before the Taylor map
    window: int = 64  # sliding-window attention: tokens each position sees (itself included)
    conv_kernel: int = 3
    conv_expand: int = 2
    mlp_ratio: float = 2.0  # SwiGLU inner width / d_model (the published configs: 2)
    layer_types: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("n_layer", "d_model", "n_heads", "vocab_size", "feature_dim", "window", "conv_kernel"):
            if getattr(self, name) < 1:
                raise ConfigError(f"BasedConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.d_model % self.n_heads:
            raise ConfigError(f"d_model {self.d_model} is not a multiple of n_heads {self.n_heads}")
        if not self.layer_types:
            object.__setattr__(self, "layer_types", hybrid_pattern(self.n_layer))
        types = tuple(self.layer_types)
        object.__setattr__(self, "layer_types", types)
        if len(types) != self.n_layer or any(t not in MIXERS for t in types):
            raise ConfigError(
                f"layer_types must name one of {MIXERS} for each of the {self.n_layer} layers, got {types}"
            )

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def replace(self, **changes) -> BasedConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> BasedConfig:
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - fields
        if unknown:
            raise ConfigError(f"unknown BasedConfig fields {sorted(unknown)}; known: {sorted(fields)}")
        d = dict(d)
        if "layer_types" in d:
            d["layer_types"] = tuple(d["layer_types"])
        return cls(**d)

    @classmethod
    def from_name(cls, name: str) -> BasedConfig:
        if name not in PRESETS:
            raise ConfigError(f"unknown BASED preset {name!r}; known: {', '.join(sorted(PRESETS))}")
        return PRESETS[name]


def hybrid_pattern(n_layer: int) -> tuple[str, ...]:
    """The published layer mix: linear attention at layers 1, 6, 11, ... (``i % 5 == 1``), sliding
    window at 2, 7, 12, ... (``i % 5 == 2``), gated convolutions elsewhere (Based-360M: 27 layers,
    linear at {1, 6, 11, 16, 21}, SWA at {2, 7, 12, 17, 22}, the last layer a convolution; about
    20 / 20 / 60 %). Based-1.4B places its last two pairs differently ({27, 33} and {28, 34} of 36):
    pass ``layer_types`` for that layout."""
    out = []
    for i in range(n_layer):
        last = i == n_layer - 1 and n_layer > 3  # Based-360M's last layer (26) is a convolution
        out.append("conv" if last else "linear" if i % 5 == 1 else "swa" if i % 5 == 2 else "conv")
    return tuple(out)


PRESETS = {
    # HazyResearch/based train/configs/experiment/reference/based-360m.yaml (docs/seed-systems.md#based)
    "based-360m": BasedConfig(n_layer=27, d_model=1024, n_heads=16, vocab_size=50277, window=256),
    "based-tiny": BasedConfig(n_layer=5, d_model=64, n_heads=4, vocab_size=256, feature_dim=8, window=16),
}
