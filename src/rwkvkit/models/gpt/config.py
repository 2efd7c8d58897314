"""Configuration of the GPT baseline: one frozen dataclass, its exact parameter count, size matching."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from rwkvkit.errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class GPTConfig:
    """Sizes of the GPT-2-style decoder-only transformer baseline."""

    n_layer: int
    n_embd: int  # C
    n_head: int  # C must be a multiple of it; head size C / n_head
    vocab_size: int  # V
    block_size: int  # the longest sequence (rows of the learned position embedding)
    bias: bool = False  # biases in the linears and LayerNorms (GPT-2: True); RWKV has none
    # tie lm_head to the token embedding (GPT-2: True). Off by default: RWKV's head is untied, and
    # a fair size comparison counts the head in both models
    tie_embeddings: bool = False
    dropout: float = 0.0  # after the embeddings, on attention weights and on both residual branches

    def __post_init__(self) -> None:
        for name in ("n_layer", "n_embd", "n_head", "vocab_size", "block_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"GPTConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise ConfigError(f"n_embd {self.n_embd} is not a multiple of n_head {self.n_head}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    @property
    def num_params(self) -> int:
        """The exact number of parameters of ``GPT(self)`` (a tied head counted once)."""
        C, V, L = self.n_embd, self.vocab_size, self.n_layer
        b = 1 if self.bias else 0
        ln = C + b * C  # LayerNorm gain (+ bias)
        attn = C * 3 * C + b * 3 * C + C * C + b * C  # c_attn (q, k, v) + c_proj
        mlp = C * 4 * C + b * 4 * C + 4 * C * C + b * C  # c_fc + c_proj
        per_layer = 2 * ln + attn + mlp
        embeddings = V * C + self.block_size * C  # wte + wpe
        head = 0 if self.tie_embeddings else V * C
        return embeddings + L * per_layer + ln + head  # ln: the final ln_f

    def replace(self, **changes) -> GPTConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def matching(
        cls,
        n_params_target: int,
        vocab_size: int,
        block_size: int,
        *,
        n_layer: int,
        head_size: int = 64,
        bias: bool = False,
        tie_embeddings: bool = False,
        dropout: float = 0.0,
    ) -> GPTConfig:
        """The config with ``n_layer`` layers whose parameter count is nearest ``n_params_target``.

        The width ``n_embd`` runs over the multiples of ``head_size`` (``n_head = n_embd /
        head_size``), and the one giving the nearest :attr:`num_params` wins (ties: the smaller).
        Typical use, against an RWKV model of the same depth and vocabulary::

            GPTConfig.matching(rwkv.num_params(), V, ctx_len, n_layer=rwkv.config.n_layer)
        """
        if n_params_target < 1 or head_size < 1:
            raise ConfigError("n_params_target and head_size must be >= 1")
        fixed = dict(n_layer=n_layer, vocab_size=vocab_size, block_size=block_size, bias=bias,
                     tie_embeddings=tie_embeddings, dropout=dropout)  # fmt: skip
        best: GPTConfig | None = None
        k = 1
        while True:  # num_params grows with the width: stop at the first one past the target
            cfg = cls(n_embd=k * head_size, n_head=k, **fixed)
            if best is None or abs(cfg.num_params - n_params_target) < abs(best.num_params - n_params_target):
                best = cfg
            if cfg.num_params >= n_params_target:
                return best
            k += 1
