"""What each RWKV version is, in one place: the registry of version specs.

A :class:`VersionSpec` says everything about a version that code outside its layers needs: its
block classes, the shape and official layout of its recurrent state, its default LoRA ranks, the
official learning-rate multipliers and matrix gains of its training recipe, how to read its sizes
from a checkpoint, and the parameter packing of the fused CPU decoding path. The per-parameter
initial values live beside the parameters (``official_init`` of each mix in ``rwkvkit.layers``).

Adding a version means adding its layers and one :class:`VersionSpec` to :data:`SPECS`; nothing
else in the library branches on the version string. The math of each version: ``docs/rwkv4.md``
to ``docs/rwkv7.md``; the state layout: ``docs/skeleton.md``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch
import torch.nn as nn

from rwkvkit.errors import ConfigError
from rwkvkit.layers.official_init import matrix_gain_v4, matrix_gain_v5
from rwkvkit.layers.rwkv4 import RWKV4ChannelMix, RWKV4TimeMix
from rwkvkit.layers.rwkv5 import RWKV5TimeMix
from rwkvkit.layers.rwkv6 import RWKV6ChannelMix, RWKV6TimeMix
from rwkvkit.layers.rwkv7 import RWKV7ChannelMix, RWKV7TimeMix

PP_INIT = -1e30  # RWKV-4 "minus infinity" exponent of a fresh state (the official package's value)

Tensor = torch.Tensor


@dataclass(frozen=True)
class VersionSpec:
    """Everything rwkvkit needs to know about one RWKV version (see the module docstring)."""

    version: str  # "4", "5.0", "5.1", "5.2", "6", "7"
    title: str  # e.g. "RWKV-7 (Goose)"
    time_mix: type[nn.Module]
    channel_mix: type[nn.Module]
    time_mix_options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    # ---- sizes
    has_heads: bool = True  # v4 has no heads (its WKV is per channel)
    dim_att_is_n_embd: bool = False  # v7: the attention width is C
    default_dim_ffn: Callable[[int], int] = lambda C: int(3.5 * C) // 32 * 32
    lora_fields: tuple[str, ...] = ()  # the RWKVConfig LoRA ranks this version needs, CLI order
    lora_labels: tuple[str, ...] = ()  # what each rank is, for `rwkvkit info`
    default_lora_ranks: Callable[[int], dict[str, int]] = lambda C: {}  # training from scratch
    log_bonus: bool = False  # files may store the bonus as its log (v5: time_first)
    # ---- training recipe
    trainable: bool = True  # the trainer trains it from scratch (5.0 / 5.1 only load)
    matrix_gain: Callable[[str, int, int], float] = matrix_gain_v5  # orthogonal init gain of a Linear
    lr_scale: Callable[[str, bool], float] = lambda name, layerwise: 1.0
    # ---- state
    # the WKV state of one layer, [B, ...]; the official package's layout of it: "key-major"
    # (S[key, value], v5 / v6), "value-major" (v7 stores S transposed) or "aa-bb-pp" (v4's 3 vectors)
    wkv_shape: Callable[[Any, int], tuple[int, ...]] = lambda cfg, B: (
        B,
        cfg.n_head,
        cfg.head_size,
        cfg.head_size,
    )
    official_state: str = "key-major"
    # ---- checkpoints and the official package
    sizes_from_state_dict: Callable[[dict], dict[str, Any]] = lambda sd: {}
    complete_state_dict: Callable[[dict, Any], None] | None = None  # fills what old files lack
    official_env: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    # ---- the fused CPU decoding step (rwkvkit.inference.fused), None where there is none
    fused_params: tuple[str, ...] | None = None

    # ---- the recurrent state (rwkvkit.State)
    def initial_wkv(self, config, batch_size: int, n_layer: int, device) -> Tensor:
        """The WKV state before any token, ``[L, B, ...]`` fp32 (zeros; v4's ``pp`` is -1e30)."""
        wkv = torch.zeros((n_layer, *self.wkv_shape(config, batch_size)), dtype=torch.float32, device=device)
        if self.official_state == "aa-bb-pp":
            wkv[:, :, 2] = PP_INIT
        return wkv

    def wkv_to_official(self, wkv: Tensor) -> list[Tensor]:
        """One layer's WKV state of one sequence -> the official package's tensors for it."""
        if self.official_state == "aa-bb-pp":
            return [t.clone() for t in wkv.unbind(0)]
        if self.official_state == "value-major":
            return [wkv.transpose(-1, -2).contiguous()]  # [H, K, V] -> [H, V, K]
        return [wkv.clone()]

    def wkv_from_official(self, tensors: list[Tensor]) -> Tensor:
        """The inverse of :meth:`wkv_to_official` (fp32)."""
        if self.official_state == "aa-bb-pp":
            return torch.stack([t.float() for t in tensors])
        if self.official_state == "value-major":
            return tensors[0].float().transpose(-1, -2)
        return tensors[0].float()

    @property
    def official_wkv_count(self) -> int:
        """How many tensors of the official per-layer state list hold the WKV state."""
        return 3 if self.official_state == "aa-bb-pp" else 1


# ---- the versions ----------------------------------------------------------------------------------


def _lr_scale_v4_to_v6(name: str, layerwise: bool) -> float:
    """v4-v6 (``layerwise_lr``): time_decay 2x, time_first 3x (the v6 LoRA factors keep 1x)."""
    leaf = name.rpartition(".")[2]
    if not layerwise or leaf.endswith(("_w1", "_w2")):
        return 1.0
    if leaf.startswith("time_decay"):
        return 2.0
    if leaf.startswith("time_first"):
        return 3.0
    return 1.0


def _lr_scale_v7(name: str, layerwise: bool) -> float:
    """v7: ``att.w0`` 2x, always."""
    return 2.0 if name.endswith("att.w0") else 1.0


def _sizes_v4(sd: dict) -> dict[str, Any]:
    return {"dim_att": sd["blocks.0.att.key.weight"].shape[0]}


def _sizes_v5_per_head(sd: dict) -> dict[str, Any]:
    dim_att = sd["blocks.0.att.key.weight"].shape[0]
    n_head = sd["blocks.0.att.time_decay"].shape[0]  # per-head decay (H,): the head size is A / H
    return {"dim_att": dim_att, "head_size": dim_att // n_head, "v5_log_bonus": _log_bonus(sd)}


def _sizes_v52(sd: dict) -> dict[str, Any]:
    return {
        "dim_att": sd["blocks.0.att.key.weight"].shape[0],
        "head_size": sd["blocks.0.att.time_decay"].shape[-1],  # (H, N)
        "v5_log_bonus": _log_bonus(sd),
    }


def _log_bonus(sd: dict) -> bool:
    return "blocks.0.att.time_faaaa" not in sd  # v5 files store u (time_faaaa) or log u (time_first)


def _sizes_v6(sd: dict) -> dict[str, Any]:
    return {
        "dim_att": sd["blocks.0.att.key.weight"].shape[0],
        "head_size": sd["blocks.0.att.time_faaaa"].shape[-1],  # (H, N)
        "lora_mix": sd["blocks.0.att.time_maa_w1"].shape[1] // 5,
        "lora_decay": sd["blocks.0.att.time_decay_w1"].shape[1],
    }


def _sizes_v7(sd: dict) -> dict[str, Any]:
    v1 = "blocks.1.att.v1" if "blocks.1.att.v1" in sd else "blocks.0.att.v1"
    return {
        "head_size": sd["blocks.0.att.r_k"].shape[1],
        "lora_w": sd["blocks.0.att.w1"].shape[1],
        "lora_a": sd["blocks.0.att.a1"].shape[1],
        "lora_v": sd[v1].shape[1],
        "lora_g": sd["blocks.0.att.g1"].shape[1],
    }


def _complete_v7(sd: dict, config) -> None:
    """Old RWKV-7 files have no layer-0 value-residual LoRA; it is unused at layer 0 anyway."""
    if "blocks.0.att.v1" in sd:
        return
    C, D = config.n_embd, config.lora_v
    ref = sd["blocks.0.att.w0"]
    sd["blocks.0.att.v0"] = ref.new_zeros(1, 1, C)
    sd["blocks.0.att.v1"] = ref.new_zeros(C, D)
    sd["blocks.0.att.v2"] = ref.new_zeros(D, C)


def _default_lora_v7(C: int) -> dict[str, int]:
    """The official trainer's formulas (rounded to a multiple of 32, at least 32)."""
    r32 = lambda x: max(32, round(x / 32) * 32)  # noqa: E731
    return {
        "lora_w": r32(1.8 * math.sqrt(C)),
        "lora_a": r32(1.8 * math.sqrt(C)),
        "lora_v": r32(1.3 * math.sqrt(C)),
        "lora_g": r32(0.6 * C**0.8),
    }


# The order of ``params`` of the fused RWKV-7 decoding step (rwkvkit.inference.fused.pack_block):
# block parameter names, ``^T`` marking LoRA matrices stored transposed ([out, in] gemv weights), ``^H``
# the up-projections [rank, C] stored head-major ([H, rank, head size]).
FUSED_PARAMS_V7 = (
    "ln1.weight", "ln1.bias", "ln2.weight", "ln2.bias",
    "att.x_r", "att.x_w", "att.x_k", "att.x_v", "att.x_a", "att.x_g",
    "att.w0", "att.w1^T", "att.w2^H",
    "att.a0", "att.a1^T", "att.a2^H",
    "att.v0", "att.v1^T", "att.v2^H",
    "att.g1^T", "att.g2^H",
    "att.k_k", "att.k_a", "att.r_k",
    "att.ln_x.weight", "att.ln_x.bias",
    "att.receptance", "att.key", "att.value", "att.output",
    "ffn.x_k", "ffn.key", "ffn.value",
)  # fmt: skip

_V4_STATE = {"wkv_shape": lambda cfg, B: (B, 3, cfg.dim_att), "official_state": "aa-bb-pp"}
_V5 = {"time_mix": RWKV5TimeMix, "channel_mix": RWKV4ChannelMix, "log_bonus": True,
       "lr_scale": _lr_scale_v4_to_v6}  # fmt: skip

SPECS: dict[str, VersionSpec] = {
    s.version: s
    for s in (
        VersionSpec(
            version="4", title="RWKV-4", time_mix=RWKV4TimeMix, channel_mix=RWKV4ChannelMix,
            has_heads=False, default_dim_ffn=lambda C: 4 * C, matrix_gain=matrix_gain_v4,
            lr_scale=_lr_scale_v4_to_v6, sizes_from_state_dict=_sizes_v4, **_V4_STATE,
        ),
        VersionSpec(
            version="5.0", title="RWKV-5.0 (preview)", **_V5, trainable=False,
            time_mix_options=MappingProxyType({"gate": False, "per_channel": False}),
            sizes_from_state_dict=_sizes_v5_per_head,
        ),
        VersionSpec(
            version="5.1", title="RWKV-5.1 (preview)", **_V5, trainable=False,
            time_mix_options=MappingProxyType({"gate": True, "per_channel": False}),
            sizes_from_state_dict=_sizes_v5_per_head,
        ),
        VersionSpec(
            version="5.2", title="RWKV-5.2 (Eagle)", **_V5,
            time_mix_options=MappingProxyType({"gate": True, "per_channel": True}),
            sizes_from_state_dict=_sizes_v52,
        ),
        VersionSpec(
            version="6", title="RWKV-6 (Finch)", time_mix=RWKV6TimeMix, channel_mix=RWKV6ChannelMix,
            lora_fields=("lora_mix", "lora_decay"), lora_labels=("lerp", "decay"),
            default_lora_ranks=lambda C: {"lora_mix": 32, "lora_decay": 64},
            lr_scale=_lr_scale_v4_to_v6, sizes_from_state_dict=_sizes_v6,
        ),
        VersionSpec(
            version="7", title="RWKV-7 (Goose)", time_mix=RWKV7TimeMix, channel_mix=RWKV7ChannelMix,
            dim_att_is_n_embd=True, default_dim_ffn=lambda C: 4 * C,
            lora_fields=("lora_w", "lora_a", "lora_v", "lora_g"),
            lora_labels=("decay", "iclr", "value", "gate"), default_lora_ranks=_default_lora_v7,
            lr_scale=_lr_scale_v7, official_state="value-major",
            sizes_from_state_dict=_sizes_v7, complete_state_dict=_complete_v7,
            official_env=MappingProxyType({"RWKV_V7_ON": "1"}), fused_params=FUSED_PARAMS_V7,
        ),
    )
}  # fmt: skip

VERSIONS = tuple(SPECS)
TRAINABLE = tuple(v for v, s in SPECS.items() if s.trainable)


def spec_of(version: str, error: type[Exception] = ConfigError) -> VersionSpec:
    """The spec of ``version`` ("4", "5.0", "5.1", "5.2", "6" or "7"), or ``error`` naming the known ones."""
    spec = SPECS.get(version)
    if spec is None:
        raise error(f"unknown RWKV version {version!r}; known: {', '.join(VERSIONS)}")
    return spec
