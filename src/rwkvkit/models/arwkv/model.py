"""ARWKV: a transformer decoder whose attention layers are replaced by RWKV-7 time mixing (Yang et
al., "ARWKV: Pretrain is not what we need", docs/seed-systems.md#arwkv), read top to bottom::

    x = emb[tokens]                               # the teacher's embeddings
    for each block l:
        x = x + TimeMix7_l(RMSNorm1_l(x))         # RWKV-7 at full width, heads of 64, value residual
        x = x + SwiGLU_l(RMSNorm2_l(x))           # the teacher's MLP: down(silu(gate(x)) * up(x))
    logits = head(RMSNorm_out(x))                 # the teacher's head (or the tied embedding)

Everything but the time mixes comes from the teacher (:meth:`ARWKV.from_transformers`: a
transformers Qwen2 / Llama causal LM), so distillation trains the time mixes first. Interface of
:class:`rwkvkit.models.rwkv.model.RWKV`: ``logits, state = model(tokens, state)`` with an RWKV-7
:class:`rwkvkit.state.State` (token shift and ``H x N x N`` matrix per layer; its ``ffn_shift`` is
carried but unused, as the MLP looks at one token), so :func:`rwkvkit.generate` decodes an ARWKV
model token by token with memory that does not grow with the context.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from rwkvkit.errors import ConfigError
from rwkvkit.layers.mlp import SwiGLU
from rwkvkit.layers.rwkv7 import RWKV7TimeMix
from rwkvkit.models.arwkv.config import ARWKVConfig
from rwkvkit.models.recurrent import RecurrentLM
from rwkvkit.models.rwkv.init import official_init_time_mixes_
from rwkvkit.state import State


class RMSNorm(nn.Module):
    """``weight * x / sqrt(mean(x^2) + eps)``, normalised in fp32 (as Qwen2 / Llama)."""

    def __init__(self, dim: int, eps: float = 1e-6, device=None, dtype=None) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


class ARWKVBlock(nn.Module):
    def __init__(self, config: ARWKVConfig, layer_id: int, device=None, dtype=None) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        C = config.n_embd
        self.layer_id = layer_id
        self.ln1 = RMSNorm(C, config.rms_norm_eps, **dd)
        self.att = RWKV7TimeMix(
            config.rwkv_config(), layer_id, **dd, gate=config.gate, group_norm=config.group_norm
        )
        self.ln2 = RMSNorm(C, config.rms_norm_eps, **dd)
        self.mlp = SwiGLU(C, config.intermediate_size, **dd)

    def forward(self, x, att_shift, wkv, v_first, impl: str = "auto"):
        """``x [B, T, C]`` and this layer's state -> ``(x, att_shift, wkv, v_first)``."""
        xx, att_shift, wkv, v_first = self.att(self.ln1(x), att_shift, wkv, v_first, impl=impl)
        x = x + xx
        return x + self.mlp(self.ln2(x)), att_shift, wkv, v_first


class ARWKV(RecurrentLM):
    """The hybrid language model. ``logits, state = model(tokens, state)``; its state is an RWKV-7
    :class:`rwkvkit.State` of its time mixes (the MLPs carry none: ``ffn_shift`` passes through)."""

    def __init__(self, config: ARWKVConfig, device=None, dtype=None) -> None:
        super().__init__()
        if not isinstance(config, ARWKVConfig):
            raise ConfigError(f"ARWKV needs an ARWKVConfig, got {type(config).__name__}")
        dd = {"device": device, "dtype": dtype}
        self.config = config
        self.rwkv_config = config.rwkv_config()
        self.emb = nn.Embedding(config.vocab_size, config.n_embd, **dd)
        self.blocks = nn.ModuleList(ARWKVBlock(config, i, **dd) for i in range(config.n_layer))
        self.ln_out = RMSNorm(config.n_embd, config.rms_norm_eps, **dd)
        self.head = nn.Linear(config.n_embd, config.vocab_size, bias=False, **dd)
        if config.tie_embeddings:
            self.head.weight = self.emb.weight

    @property
    def state_config(self):
        return self.rwkv_config

    @torch.no_grad()
    def init_time_mixes_(self, seed: int = 0) -> ARWKV:
        """Give every time mix RWKV-7's official training initialisation (the rest is untouched)."""
        official_init_time_mixes_([b.att for b in self.blocks], self.rwkv_config, seed=seed)
        return self

    def forward(
        self,
        tokens: torch.Tensor,
        state: State | None = None,
        *,
        impl: str = "auto",
        full_output: bool = True,
    ) -> tuple[torch.Tensor, State]:
        """``tokens [B, T]`` -> ``(float32 logits [B, T, V] (or [B, 1, V] with full_output=False),
        the state after the last token)``; the input state is not modified."""
        tokens, state = self._begin(tokens, state)
        x = self.emb(tokens)
        v_first, att_shift, wkv = None, [], []
        for i, block in enumerate(self.blocks):
            x, s_att, s_wkv, v_first = block(x, state["att_shift"][i], state["wkv"][i], v_first, impl=impl)
            att_shift.append(s_att)
            wkv.append(s_wkv)
        if not full_output:
            x = x[:, -1:]
        logits = self.head(self.ln_out(x)).float()
        ffn_shift = state["ffn_shift"].clone()  # the MLPs carry no state
        return logits, self._end({"att_shift": att_shift, "wkv": wkv, "ffn_shift": ffn_shift}, logits)

    def save(self, path, dtype: torch.dtype | None = None) -> None:
        """Write an rwkvkit ``.safetensors`` file (config in its metadata) that ``rwkvkit.load`` reads.
        A tied head is stored once, as ``emb.weight``."""
        from rwkvkit.formats import native  # deferred: rwkvkit.formats imports the models

        sd = self.state_dict()
        if self.config.tie_embeddings:
            sd.pop("head.weight")
        native.write(sd, self.config, path, dtype, family="arwkv")

    # ---- from a transformers teacher ---------------------------------------------------------
    @classmethod
    @torch.no_grad()
    def from_transformers(
        cls,
        teacher: nn.Module,
        head_size: int = 64,
        seed: int = 0,
        *,
        gate: bool = True,
        group_norm: bool = True,
    ) -> ARWKV:
        """A student of a transformers causal LM (Qwen2, Llama: ``model.embed_tokens``,
        ``model.layers[i].{input_layernorm, mlp, post_attention_layernorm}``, ``model.norm``,
        ``lm_head``): those weights are copied, the time mixes get RWKV-7's official init (the
        paper's ``init_with_llama: False``: the teacher's q/k/v/o are not reused). ``gate`` and
        ``group_norm`` switch the time mix's output gate and GroupNorm (ARWKV's configs)."""
        inner = getattr(teacher, "model", None)
        if inner is None or not hasattr(inner, "layers") or not hasattr(teacher, "lm_head"):
            raise ConfigError(
                f"{type(teacher).__name__} is not a Qwen2/Llama-style causal LM (model.layers, lm_head)"
            )
        config = ARWKVConfig.from_transformers(teacher.config, head_size, gate=gate, group_norm=group_norm)
        p = next(teacher.parameters())
        student = cls(config, device=p.device, dtype=p.dtype).init_time_mixes_(seed)
        student.emb.weight.copy_(inner.embed_tokens.weight)
        student.ln_out.weight.copy_(inner.norm.weight)
        if not config.tie_embeddings:
            student.head.weight.copy_(teacher.lm_head.weight)
        for mine, layer in zip(student.blocks, inner.layers, strict=True):
            mine.ln1.weight.copy_(layer.input_layernorm.weight)
            mine.ln2.weight.copy_(layer.post_attention_layernorm.weight)
            mine.mlp.load_state_dict(layer.mlp.state_dict())
        return student
