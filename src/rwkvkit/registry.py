"""Every model family rwkvkit trains, by name: one table for the command line and the trainers.

    from rwkvkit import registry
    registry.names("vision")                                   # ['vrwkv', 'vit', 'ran', 'sam']
    model = registry.build_model("vrwkv", "t", img_size=32)    # vision: family, preset, config fields
    model = registry.build_model("rimer", lookback=96, seed=0, d_model=64)   # time series
    model = registry.build_model("rwkv", train_config, vocab_size)           # the LM trainer's ``arch``

Each family names its builder as a ``"module:function"`` string, imported on the first build, so
this table imports nothing: ``models/`` and the other core packages never import an application
through it, and the command line lists the families without loading torch models. The builders
live in their application (``training/loop.py``, ``vision/families.py``,
``timeseries/families.py``); their arguments are the domain's (see each builder).

RWKV language models are also built directly, ``RWKV(config)``; the ``rwkv`` and ``gpt`` entries
are the LM trainer's ``arch`` choices (a :class:`~rwkvkit.training.config.TrainConfig` and a
vocabulary size in, an initialised model out).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rwkvkit.errors import ConfigError

DOMAINS = ("language", "vision", "timeseries")


@dataclass(frozen=True)
class Family:
    """One buildable model family."""

    name: str  # the name the command line and the configs use
    domain: str  # one of DOMAINS
    task: str  # "lm", "classify", "segment" or "forecast"
    builder: str  # "module:function" that builds it (imported on first use)
    summary: str  # one line for help texts
    presets: tuple[str, ...] = ()  # named sizes the builder takes (vision: family-preset names)


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("rwkv", "language", "lm", "rwkvkit.training.loop:build_rwkv",
               "RWKV-4/5/6/7 language model (the version is TrainConfig.version)"),
        Family("gpt", "language", "lm", "rwkvkit.training.loop:build_gpt",
               "GPT-2-style transformer baseline of the same size"),
        Family("vrwkv", "vision", "classify", "rwkvkit.vision.families:vrwkv",
               "Vision-RWKV classifier (Bi-WKV + Q-Shift)", ("t", "s", "b")),
        Family("vit", "vision", "classify", "rwkvkit.vision.families:vit",
               "ViT baseline matched to Vision-RWKV (DeiT sizes)", ("t", "s", "b")),
        Family("ran", "vision", "classify", "rwkvkit.vision.families:ran",
               "Residual Attention Network", ("small", "attention56", "attention92")),
        Family("sam", "vision", "segment", "rwkvkit.vision.families:sam",
               "RWKV-SAM-style promptable segmenter", ("tiny", "small")),
        Family("rimer", "timeseries", "forecast", "rwkvkit.timeseries.families:rimer",
               "Rimer: RWKV-7 blocks over patches, autoregressive"),
        Family("timer", "timeseries", "forecast", "rwkvkit.timeseries.families:timer",
               "Timer: decoder-only attention over patches, autoregressive"),
        Family("dlinear", "timeseries", "forecast", "rwkvkit.timeseries.families:dlinear",
               "DLinear: trend + remainder linear maps, one model per horizon"),
        Family("naive", "timeseries", "forecast", "rwkvkit.timeseries.families:naive",
               "seasonal naive: repeats the last period (nothing to train)"),
    )
}  # fmt: skip


def names(domain: str | None = None) -> list[str]:
    """The family names of ``domain`` (every domain: None), in table order."""
    if domain is not None and domain not in DOMAINS:
        raise ConfigError(f"unknown model domain {domain!r}; known: {', '.join(DOMAINS)}")
    return [f.name for f in FAMILIES.values() if domain is None or f.domain == domain]


def family(name: str, domain: str | None = None) -> Family:
    """The family ``name`` (of ``domain``, when given).

    Raises:
        ConfigError: an unknown name, or one of another domain; the message lists the known names.
    """
    f = FAMILIES.get(name)
    if f is not None and (domain is None or f.domain == domain):
        return f
    if domain is None:
        known = "; ".join(f"{d}: {', '.join(names(d))}" for d in DOMAINS)
        raise ConfigError(f"unknown model {name!r}; known models ({known})")
    other = f" ({name} is a {f.domain} model)" if f is not None else ""
    raise ConfigError(f"unknown {domain} model {name!r}{other}; known: {', '.join(names(domain))}")


def preset_names(domain: str) -> str:
    """``vrwkv-t|s|b, vit-t|s|b, ...``: the ``family-preset`` names of ``domain``, for messages and
    help texts (a family without presets is listed by its name)."""
    return ", ".join(
        f.name + ("-" + "|".join(f.presets) if f.presets else "") for f in map(family, names(domain))
    )


def builder(name: str, domain: str | None = None) -> Callable[..., Any]:
    """The function that builds family ``name`` (its module is imported now)."""
    module, _, attr = family(name, domain).builder.partition(":")
    return getattr(importlib.import_module(module), attr)


def build_model(name: str, /, *args: Any, domain: str | None = None, **kwargs: Any) -> Any:
    """Build a model of family ``name``: ``builder(name)(*args, **kwargs)``."""
    return builder(name, domain)(*args, **kwargs)


__all__ = ["DOMAINS", "FAMILIES", "Family", "build_model", "builder", "family", "names", "preset_names"]
