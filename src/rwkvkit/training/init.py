"""The official training initialisation: it lives with the models, in :mod:`rwkvkit.models.rwkv.init`
(the per-parameter formulas beside the parameters, in each mix's ``official_init``); the trainer and
older callers import it from here. Formulas and sources: ``docs/init.md``."""

from rwkvkit.layers.official_init import layer_ratios, orthogonal
from rwkvkit.models.rwkv.init import (
    EMB_RANGE,
    official_init_,
    official_init_blocks_,
    official_init_time_mixes_,
)

__all__ = [
    "EMB_RANGE",
    "layer_ratios",
    "official_init_",
    "official_init_blocks_",
    "official_init_time_mixes_",
    "orthogonal",
]
