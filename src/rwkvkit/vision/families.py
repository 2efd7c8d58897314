"""Builders of the vision families named in :mod:`rwkvkit.registry`: ``family(preset, **fields)``.

``preset`` is one of the family's named sizes (``vrwkv``/``vit``: ``t``, ``s``, ``b``; ``ran``:
``small``, ``attention56``, ``attention92``; ``sam``: ``tiny``, ``small``); ``fields`` replace
fields of its config (e.g. ``img_size=32, patch_size=4``).
"""

from __future__ import annotations

from typing import Any

from rwkvkit.vision.ran import RANConfig, ResidualAttentionNet
from rwkvkit.vision.sam import PromptableSegmenter, SegmenterConfig
from rwkvkit.vision.vit import ViT, ViTConfig
from rwkvkit.vision.vrwkv import VisionRWKV, VRWKVConfig


def vrwkv(preset: str, **fields: Any) -> VisionRWKV:
    return VisionRWKV(VRWKVConfig.preset(preset.upper(), **fields))


def vit(preset: str, **fields: Any) -> ViT:
    return ViT(ViTConfig.preset(preset.upper(), **fields))


def ran(preset: str, **fields: Any) -> ResidualAttentionNet:
    return ResidualAttentionNet(RANConfig.from_name(preset, **fields))


def sam(preset: str, **fields: Any) -> PromptableSegmenter:
    return PromptableSegmenter(SegmenterConfig.preset(preset, **fields))
