"""Residual Attention Network (Wang et al., CVPR 2017): stacked attention modules over a ResNet trunk.

docs/seed-systems.md#ran. Every unit is a pre-activation bottleneck (BN-ReLU-1x1(c/4)-BN-ReLU-3x3-
BN-ReLU-1x1(c)). An attention module with p=1, t=2, r=1 is::

    x1 = RU^p(x)                                    shared pre-units
    T  = RU^t(x1)                                   trunk
    soft mask (s skips): d_i = RU^r(maxpool(d_{i-1})), skip_i = RU(d_i)  for i = 1..s   (d_0 = x1)
                         u = RU^2r(maxpool(d_s))                                         bottom
                         u = RU^r(interp(u -> skip_i) + skip_i)          for i = s..1    top-down
                         M = sigmoid(1x1(BN-ReLU(1x1(BN-ReLU(interp(u -> T))))))
    H  = (1 + M) * T   ("arl", attention residual learning)   or   M * T   ("nal")   or   T   ("none")
    out = RU^p(H)

(maxpool 3x3 stride 2 padding 1; interp is bilinear to the exact size of the map it joins.)
The ImageNet layout: stem conv7 s2 (64) + maxpool, stages of 256/512/1024 channels each opened by
a (downsampling) unit and holding 1,1,1 (Attention-56) or 1,2,3 (Attention-92) modules with 2/1/0
skips, then 3 units at 2048 channels, BN-ReLU, average pooling, fc.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from rwkvkit.errors import ConfigError, InputError

ATTENTIONS = ("arl", "nal", "none")


@dataclass(frozen=True, kw_only=True)
class RANConfig:
    """Sizes of a Residual Attention Network.

    ``attention``: ``"arl"`` ((1 + M) * T), ``"nal"`` (M * T) or ``"none"`` (trunk only, no mask branch).
    ``stage_channels[i]`` / ``modules_per_stage[i]`` / ``skips_per_stage[i]``: width, number of attention
    modules and skip connections of the soft-mask branch (its maxpools are ``skips + 1``) of stage i.
    Stage 0 keeps the stem's resolution, later stages halve it. ``final_units`` units of
    ``final_channels`` follow (the first with stride ``final_stride``). ``p``, ``t``, ``r``: units before/
    after a module, in the trunk, and between poolings in the mask branch.
    """

    num_classes: int = 1000
    in_chans: int = 3
    attention: str = "arl"
    stem_channels: int = 64
    stem_kernel: int = 7
    stem_stride: int = 2
    stem_pool: bool = True
    stage_channels: tuple[int, ...] = (256, 512, 1024)
    modules_per_stage: tuple[int, ...] = (1, 1, 1)
    skips_per_stage: tuple[int, ...] = (2, 1, 0)
    final_channels: int = 2048
    final_units: int = 3
    final_stride: int = 2
    p: int = 1
    t: int = 2
    r: int = 1
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.attention not in ATTENTIONS:
            raise ConfigError(f"unknown attention {self.attention!r}; use one of {', '.join(ATTENTIONS)}")
        for name in ("stage_channels", "modules_per_stage", "skips_per_stage"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        n = len(self.stage_channels)
        if n == 0 or len(self.modules_per_stage) != n or len(self.skips_per_stage) != n:
            raise ConfigError(
                f"stage_channels {self.stage_channels}, modules_per_stage {self.modules_per_stage} and "
                f"skips_per_stage {self.skips_per_stage} must be non-empty and of equal length"
            )
        for name in (
            "num_classes",
            "in_chans",
            "stem_channels",
            "stem_kernel",
            "stem_stride",
            "final_stride",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"RANConfig.{name} must be >= 1, got {getattr(self, name)}")
        for c in (*self.stage_channels, self.final_channels):
            if c < 4 or c % 4:
                raise ConfigError(f"channel counts must be multiples of 4 (bottleneck width c/4), got {c}")
        if min(self.modules_per_stage) < 0 or min(self.skips_per_stage) < 0:
            raise ConfigError("modules_per_stage and skips_per_stage must be >= 0")
        if self.p < 0 or self.t < 1 or self.r < 1 or self.final_units < 0:
            got = (self.p, self.t, self.r, self.final_units)
            raise ConfigError(
                f"need p >= 0, t >= 1, r >= 1, final_units >= 0; got (p, t, r, final_units) = {got}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def num_features(self) -> int:
        """Width of the pooled features fed to the classifier."""
        return self.final_channels if self.final_units else self.stage_channels[-1]

    def replace(self, **changes) -> RANConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> RANConfig:
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - fields
        if unknown:
            raise ConfigError(f"unknown RANConfig fields {sorted(unknown)}; known: {sorted(fields)}")
        return cls(**d)

    @classmethod
    def from_name(cls, name: str, **changes) -> RANConfig:
        """A named preset (``"attention56"``, ``"attention92"``, ``"small"``), optionally changed."""
        if name not in PRESETS:
            raise ConfigError(f"unknown RAN preset {name!r}; known presets: {', '.join(sorted(PRESETS))}")
        return PRESETS[name].replace(**changes) if changes else PRESETS[name]


PRESETS: dict[str, RANConfig] = {
    # ImageNet, 224x224 input: 56x56 / 28x28 / 14x14 stages, 3 units at 2048 on 7x7
    "attention56": RANConfig(modules_per_stage=(1, 1, 1)),
    "attention92": RANConfig(modules_per_stage=(1, 2, 3)),
    # Fashion-MNIST / CIFAR size (28-32 px): conv3 stem, 28/14/7 (or 32/16/8) stages, final units
    # at the last stage's resolution (the paper's CIFAR layout, narrowed)
    "small": RANConfig(
        num_classes=10,
        in_chans=1,
        stem_channels=16,
        stem_kernel=3,
        stem_stride=1,
        stem_pool=False,
        stage_channels=(16, 32, 64),
        modules_per_stage=(1, 1, 1),
        skips_per_stage=(2, 1, 0),
        final_channels=128,
        final_units=3,
        final_stride=1,
    ),
}


class ResidualUnit(nn.Module):
    """Pre-activation bottleneck: BN-ReLU-1x1(c/4)-BN-ReLU-3x3(stride)-BN-ReLU-1x1(c), plus the shortcut
    (identity, or a strided 1x1 projection of the pre-activated input when the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        mid = cout // 4
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, cout, 1, bias=False)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False) if cin != cout or stride != 1 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.relu(self.bn1(x))
        h = self.conv1(a)
        h = self.conv2(F.relu(self.bn2(h)))
        h = self.conv3(F.relu(self.bn3(h)))
        return h + (x if self.shortcut is None else self.shortcut(a))


def _units(c: int, n: int) -> nn.Sequential:
    return nn.Sequential(*(ResidualUnit(c, c) for _ in range(n)))


def _pool(x: torch.Tensor) -> torch.Tensor:
    return F.max_pool2d(x, 3, 2, 1)


def _up(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


class SoftMaskBranch(nn.Module):
    """Bottom-up (maxpool) / top-down (bilinear) branch with ``skips`` skip connections -> M in (0, 1)."""

    def __init__(self, c: int, skips: int, r: int = 1) -> None:
        super().__init__()
        self.down = nn.ModuleList(_units(c, r) for _ in range(skips))
        self.skip = nn.ModuleList(ResidualUnit(c, c) for _ in range(skips))
        self.bottom = _units(c, 2 * r)
        self.up = nn.ModuleList(_units(c, r) for _ in range(skips))  # up[i] joins skip[i]
        self.head = nn.Sequential(
            nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, c, 1, bias=False),
            nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, c, 1), nn.Sigmoid(),
        )  # fmt: skip

    def forward(self, x: torch.Tensor, trunk: torch.Tensor) -> torch.Tensor:
        skips = []
        for down, skip in zip(self.down, self.skip):
            x = down(_pool(x))
            skips.append(skip(x))
        u = self.bottom(_pool(x))
        for i in reversed(range(len(skips))):
            u = self.up[i](_up(u, skips[i]) + skips[i])
        return self.head(_up(u, trunk))


class AttentionModule(nn.Module):
    """p pre-units, a trunk of t units, a soft-mask branch, the ARL/NAL combination, p post-units."""

    def __init__(
        self, c: int, skips: int, attention: str = "arl", p: int = 1, t: int = 2, r: int = 1
    ) -> None:
        super().__init__()
        self.attention = attention
        self.pre = _units(c, p)
        self.trunk = _units(c, t)
        self.mask = SoftMaskBranch(c, skips, r) if attention != "none" else None
        self.post = _units(c, p)
        self.last_mask: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, keep_mask: bool = False) -> torch.Tensor:
        x = self.pre(x)
        t = self.trunk(x)
        if self.mask is None:
            h = t
            self.last_mask = None
        else:
            m = self.mask(x, t)
            h = t * m + t if self.attention == "arl" else t * m
            self.last_mask = m if keep_mask else None
        return self.post(h)


class ResidualAttentionNet(nn.Module):
    """Residual Attention Network classifier; ``forward(x, masks=True)`` also returns the soft masks.

    The masks come back as a list, one ``[B, C, H, W]`` tensor per attention module in order (the
    trunk's shape; empty list for ``attention="none"``). They are also left on each module's
    ``last_mask`` after a ``masks=True`` call, for hooks/visualisation.
    """

    def __init__(self, config: RANConfig | str = "small") -> None:
        super().__init__()
        cfg = RANConfig.from_name(config) if isinstance(config, str) else config
        self.config = cfg
        k = cfg.stem_kernel
        stem: list[nn.Module] = [
            nn.Conv2d(cfg.in_chans, cfg.stem_channels, k, cfg.stem_stride, k // 2, bias=False),
            nn.BatchNorm2d(cfg.stem_channels),
            nn.ReLU(),
        ]
        if cfg.stem_pool:
            stem.append(nn.MaxPool2d(3, 2, 1))
        self.stem = nn.Sequential(*stem)
        self.stages = nn.ModuleList()
        cin = cfg.stem_channels
        for i, (c, n, s) in enumerate(zip(cfg.stage_channels, cfg.modules_per_stage, cfg.skips_per_stage)):
            blocks: list[nn.Module] = [ResidualUnit(cin, c, stride=1 if i == 0 else 2)]
            blocks += [AttentionModule(c, s, cfg.attention, cfg.p, cfg.t, cfg.r) for _ in range(n)]
            self.stages.append(nn.ModuleList(blocks))
            cin = c
        final = [ResidualUnit(cin, cfg.final_channels, cfg.final_stride)] if cfg.final_units else []
        final += [ResidualUnit(cfg.final_channels, cfg.final_channels) for _ in range(cfg.final_units - 1)]
        self.final = nn.Sequential(*final)
        self.norm = nn.BatchNorm2d(cfg.num_features)
        self.drop = nn.Dropout(cfg.dropout)
        self.fc = nn.Linear(cfg.num_features, cfg.num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)

    def attention_modules(self) -> list[AttentionModule]:
        return [m for m in self.modules() if isinstance(m, AttentionModule)]

    def forward_features(
        self, x: torch.Tensor, masks: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Feature map ``[B, num_features, h, w]`` after the final units and BN-ReLU (and the masks)."""
        if x.dim() != 4 or x.shape[1] != self.config.in_chans:
            raise InputError(
                f"ResidualAttentionNet expects images [B, {self.config.in_chans}, H, W], got {tuple(x.shape)}"
            )
        out: list[torch.Tensor] = []
        x = self.stem(x)
        for stage in self.stages:
            x = stage[0](x)
            for module in stage[1:]:
                x = module(x, keep_mask=masks)
                if masks and module.last_mask is not None:
                    out.append(module.last_mask)
        x = F.relu(self.norm(self.final(x)))
        return (x, out) if masks else x

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Global average pooling, dropout, fc: ``[B, C, h, w]`` -> logits ``[B, num_classes]``."""
        return self.fc(self.drop(features.mean((-2, -1))))

    def forward(
        self, x: torch.Tensor, masks: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        if masks:
            f, ms = self.forward_features(x, masks=True)
            return self.forward_head(f), ms
        return self.forward_head(self.forward_features(x))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
