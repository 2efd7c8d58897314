"""Vision on rwkvkit's operators: Vision-RWKV (Bi-WKV + Q-Shift), a matched ViT baseline, the Residual
Attention Network, an RWKV-SAM-style promptable segmenter, Fashion-MNIST data and the training loop.

    from rwkvkit.vision import VisionRWKV, VRWKVConfig
    model = VisionRWKV(VRWKVConfig.preset("T", img_size=28, patch_size=4, in_chans=1, num_classes=10))

Command line: ``rwkvkit vision train|eval|predict`` (see :mod:`rwkvkit.vision.train`).
"""

from rwkvkit.vision.ran import RANConfig, ResidualAttentionNet
from rwkvkit.vision.sam import PromptableSegmenter, SegmenterConfig, segmentation_loss
from rwkvkit.vision.train import VisionTrainConfig, build_model, evaluate, load_checkpoint, predict, train
from rwkvkit.vision.vit import ViT, ViTConfig, matched_vit
from rwkvkit.vision.vrwkv import VisionRWKV, VRWKVBlock, VRWKVConfig

__all__ = [
    "PromptableSegmenter",
    "RANConfig",
    "ResidualAttentionNet",
    "SegmenterConfig",
    "VRWKVBlock",
    "VRWKVConfig",
    "ViT",
    "ViTConfig",
    "VisionRWKV",
    "VisionTrainConfig",
    "build_model",
    "evaluate",
    "load_checkpoint",
    "matched_vit",
    "predict",
    "segmentation_loss",
    "train",
]
