"""flash-linear-attention (fla) HF layouts: ``RWKV7ForCausalLM`` and ``RWKV6ForCausalLM``.

fla cannot run here (it needs Triton), so these tables are held to the facts below and tested by
lossless round trips and identical logits after loading; where each fact comes from:

RWKV-7 (``model_type`` "rwkv7"; "rwkv7_fla" in older fla releases):

* key names and shapes: docs/checkpoints.md#fla-rwkv-7, dumped from a tiny ``RWKV7ForCausalLM`` of fla
  0.6.0 [run], and ``fla/layers/rwkv7.py`` / ``fla/models/rwkv7/modeling_rwkv7.py`` (read through
  the code search): ``x_r..x_g`` are (1, 1, C); ``k_k``, ``k_a`` and ``ffn.x_k`` are (C,); ``r_k`` is
  (H, N); the LoRAs are ``LoRA.lora = Sequential(Linear(C, D, bias=False), act, Linear(D, C))``
  (``g_lora`` without bias); ``v_lora`` exists only for layers > 0; ``pre_norm`` only at layer 0
  (with ``norm_first``);
* the BlinkDL -> fla map: fla's ``utils/convert_from_rwkv7.py`` (``{w,a,v}0 -> *_lora.lora.2.bias``,
  ``*1 -> lora.0.weight`` and ``*2 -> lora.2.weight``, both transposed; (1, 1, C) vectors squeezed
  except ``attn.x_*``; ``blocks.0.att.v0/v1/v2`` dropped);
* the config fields: ``fla/models/rwkv7/configuration_rwkv7.py`` and docs/checkpoints.md#fla-rwkv-7;
  ``x_x`` (6, C), the older single tensor for the six lerps: ``RWKV7Model.load_state_dict``'s migration.

RWKV-6 (``model_type`` "rwkv6", told apart from the RWKV hub layout by its ``model.layers`` keys):

* key names: ``fla/layers/rwkv6.py`` (``RWKV6Attention``: ``x_proj = Sequential(LerpLinear(C, 5D),
  Tanh, Linear(5D, C))``, ``x_bias`` (5, C), ``r/k/v/g_proj = DDLerpLinear`` holding ``.linear``,
  ``w_proj``'s ``.linear`` a ``LoRA`` with bias, ``bonus`` (H, N), ``g_norm``, ``o_proj``) and
  ``fla/models/rwkv6/modeling_rwkv6.py`` (``RWKV6FeedForward``: ``key`` and ``receptance`` are
  ``LerpLinear`` with ``.mu`` (C,) and ``.linear``; ``value``);
* the map: fla's ``utils/convert_from_rwkv6.py``. fla orders the five data-dependent lerps
  r, w, k, v, g where BlinkDL orders w, k, v, r, g: ``x_bias`` stacks ``time_maa_r,w,k,v,g``;
  ``time_maa_w1`` (C, 5D) is cut into its five D-column blocks, reordered and transposed into
  ``x_proj.0.linear.weight`` (5D, C); ``time_maa_w2`` (5, D, C) is reordered, flattened and
  transposed into ``x_proj.2.weight`` (C, 5D); ``time_decay`` (1, 1, A) -> ``w_proj.linear.lora.2.bias``,
  ``time_decay_w1/w2`` -> ``lora.0/2.weight`` transposed; ``time_maa_x``, ``ffn.time_maa_k/r`` -> ``.mu``;
* the config: ``fla/models/rwkv6/configuration_rwkv6.py`` (``expand_k``/``expand_v`` default 0.5/1;
  the official model has key and value width A, so both are written as A / C; the decay LoRA rank
  is ``gate_low_rank_dim``, the lerp rank ``proj_low_rank_dim``).

Numerics that differ inside fla, not in the weights: fla's RWKV-7 ``g_norm`` eps is
``head_dim * norm_eps`` (64e-5, the official value, for head size 64 only); fla's RWKV-6 ``g_norm``
eps is ``norm_eps`` = 1e-5 where the official model uses 64e-5. rwkvkit always computes the
official way, whatever layout it read.
"""

from __future__ import annotations

import torch

from rwkvkit.errors import CheckpointError
from rwkvkit.formats.keymap import SQUEEZE, STACK, TRANSPOSE, Layout, lora_blocks_in, lora_blocks_out

L, ATT, FFN = "model.layers.{i}.", "model.layers.{i}.attn.", "model.layers.{i}.ffn."

SKELETON = (
    ("emb.weight", "model.embeddings.weight"),
    ("blocks.0.ln0.weight", "model.layers.0.pre_norm.weight"),
    ("blocks.0.ln0.bias", "model.layers.0.pre_norm.bias"),
    ("blocks.{i}.ln1.weight", L + "attn_norm.weight"),
    ("blocks.{i}.ln1.bias", L + "attn_norm.bias"),
    ("blocks.{i}.ln2.weight", L + "ffn_norm.weight"),
    ("blocks.{i}.ln2.bias", L + "ffn_norm.bias"),
    ("ln_out.weight", "model.norm.weight"),
    ("ln_out.bias", "model.norm.bias"),
    ("head.weight", "lm_head.weight"),
)

_LERPS7 = ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g")

TABLE_V7 = (
    SKELETON
    + tuple((f"blocks.{{i}}.att.{x}", ATT + x) for x in _LERPS7)  # (1, 1, C) in both
    + (
        ("blocks.{i}.att.receptance.weight", ATT + "r_proj.weight"),
        ("blocks.{i}.att.key.weight", ATT + "k_proj.weight"),
        ("blocks.{i}.att.value.weight", ATT + "v_proj.weight"),
        ("blocks.{i}.att.output.weight", ATT + "o_proj.weight"),
        ("blocks.{i}.att.w0", ATT + "w_lora.lora.2.bias", SQUEEZE),
        ("blocks.{i}.att.w1", ATT + "w_lora.lora.0.weight", TRANSPOSE),
        ("blocks.{i}.att.w2", ATT + "w_lora.lora.2.weight", TRANSPOSE),
        ("blocks.{i}.att.a0", ATT + "a_lora.lora.2.bias", SQUEEZE),
        ("blocks.{i}.att.a1", ATT + "a_lora.lora.0.weight", TRANSPOSE),
        ("blocks.{i}.att.a2", ATT + "a_lora.lora.2.weight", TRANSPOSE),
        # layer 0 defines v_first and has no value-residual LoRA in fla (unused in official files)
        ("blocks.0.att.v0", None),
        ("blocks.0.att.v1", None),
        ("blocks.0.att.v2", None),
        ("blocks.{i}.att.v0", ATT + "v_lora.lora.2.bias", SQUEEZE),
        ("blocks.{i}.att.v1", ATT + "v_lora.lora.0.weight", TRANSPOSE),
        ("blocks.{i}.att.v2", ATT + "v_lora.lora.2.weight", TRANSPOSE),
        ("blocks.{i}.att.g1", ATT + "g_lora.lora.0.weight", TRANSPOSE),
        ("blocks.{i}.att.g2", ATT + "g_lora.lora.2.weight", TRANSPOSE),
        ("blocks.{i}.att.k_k", ATT + "k_k", SQUEEZE),
        ("blocks.{i}.att.k_a", ATT + "k_a", SQUEEZE),
        ("blocks.{i}.att.r_k", ATT + "r_k"),
        ("blocks.{i}.att.ln_x.weight", ATT + "g_norm.weight"),
        ("blocks.{i}.att.ln_x.bias", ATT + "g_norm.bias"),
        ("blocks.{i}.ffn.x_k", FFN + "x_k", SQUEEZE),
        ("blocks.{i}.ffn.key.weight", FFN + "key.weight"),
        ("blocks.{i}.ffn.value.weight", FFN + "value.weight"),
    )
)

# fla's order of the five RWKV-6 data-dependent lerps is r, w, k, v, g; BlinkDL's is w, k, v, r, g:
# fla block j holds BlinkDL block _R_W_K_V_G[j]
_R_W_K_V_G = (3, 0, 1, 2, 4)

TABLE_V6 = SKELETON + (
    ("blocks.{i}.att.time_maa_x", ATT + "x_proj.0.mu", SQUEEZE),
    ("blocks.{i}.att.time_maa_w1", ATT + "x_proj.0.linear.weight", lora_blocks_in(_R_W_K_V_G)),
    ("blocks.{i}.att.time_maa_w2", ATT + "x_proj.2.weight", lora_blocks_out(_R_W_K_V_G)),
    (
        tuple(f"blocks.{{i}}.att.time_maa_{x}" for x in "rwkvg"),
        ATT + "x_bias",
        STACK,
    ),
    ("blocks.{i}.att.receptance.weight", ATT + "r_proj.linear.weight"),
    ("blocks.{i}.att.key.weight", ATT + "k_proj.linear.weight"),
    ("blocks.{i}.att.value.weight", ATT + "v_proj.linear.weight"),
    ("blocks.{i}.att.gate.weight", ATT + "g_proj.linear.weight"),
    ("blocks.{i}.att.time_decay", ATT + "w_proj.linear.lora.2.bias", SQUEEZE),
    ("blocks.{i}.att.time_decay_w1", ATT + "w_proj.linear.lora.0.weight", TRANSPOSE),
    ("blocks.{i}.att.time_decay_w2", ATT + "w_proj.linear.lora.2.weight", TRANSPOSE),
    ("blocks.{i}.att.time_faaaa", ATT + "bonus"),
    ("blocks.{i}.att.ln_x.weight", ATT + "g_norm.weight"),
    ("blocks.{i}.att.ln_x.bias", ATT + "g_norm.bias"),
    ("blocks.{i}.att.output.weight", ATT + "o_proj.weight"),
    ("blocks.{i}.ffn.time_maa_k", FFN + "key.mu", SQUEEZE),
    ("blocks.{i}.ffn.key.weight", FFN + "key.linear.weight"),
    ("blocks.{i}.ffn.time_maa_r", FFN + "receptance.mu", SQUEEZE),
    ("blocks.{i}.ffn.receptance.weight", FFN + "receptance.linear.weight"),
    ("blocks.{i}.ffn.value.weight", FFN + "value.weight"),
)

# what rwkvkit runs: LayerNorms with bias and eps 1e-5, ln0 on the embedding, squared-ReLU FFN,
# RWKV blocks only (fla's ``attn`` option puts softmax-attention layers into the stack)
_FIXED = {"norm_first": True, "norm_bias": True, "norm_eps": 1e-5, "hidden_act": "sqrelu", "attn": None}
# plain torch norms (fuse_norm false, as the fla-hub RWKV-7 files), untied head
_EXTRA = {"attn_mode": "chunk", "fuse_norm": False, "use_cache": True, "tie_word_embeddings": False}


def _upgrade_v7(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Split the older single ``attn.x_x`` (6, C) into ``x_r..x_g`` (1, 1, C), as fla's migration does."""
    out = {}
    for k, t in sd.items():
        if k.endswith(".attn.x_x") and t.dim() == 2 and t.shape[0] == 6:
            prefix = k[: -len("x_x")]
            out |= {prefix + name: row.reshape(1, 1, -1) for name, row in zip(_LERPS7, t.unbind(0))}
        else:
            out[k] = t
    return out


def _complete_v7(native: dict[str, torch.Tensor], config_json: dict) -> None:
    """Zeros for layer 0's value-residual LoRA, which fla does not store (rwkvkit never uses it)."""
    if "blocks.0.att.v1" in native:
        return
    C = native["emb.weight"].shape[1]
    if "blocks.1.att.v1" in native:
        D = native["blocks.1.att.v1"].shape[1]
    else:  # a one-layer model: the rank is only in the config
        D = config_json.get("v_low_rank_dim") or 32
        if not isinstance(D, int) or isinstance(D, bool) or D < 1:
            raise CheckpointError(f"config.json: v_low_rank_dim must be a positive integer, not {D!r}")
    ref = native["blocks.0.att.w0"]
    native |= {
        "blocks.0.att.v0": ref.new_zeros(1, 1, C),
        "blocks.0.att.v1": ref.new_zeros(C, D),
        "blocks.0.att.v2": ref.new_zeros(D, C),
    }


RWKV7 = Layout(
    name="fla-rwkv7",
    title="fla RWKV7ForCausalLM (RWKV-7)",
    source="fla-org/flash-linear-attention: fla/{models/rwkv7,layers/rwkv7.py}, utils/convert_from_rwkv7.py",
    versions=("7",),
    model_types=("rwkv7", "rwkv7_fla"),
    architectures=("RWKV7ForCausalLM",),
    marker="model.layers.0.attn.r_k",
    table=TABLE_V7,
    config_fields=lambda c: {
        "vocab_size": c.vocab_size,
        "hidden_size": c.n_embd,
        "num_hidden_layers": c.n_layer,
        "head_dim": c.head_size,
        "decay_low_rank_dim": c.lora_w,
        "a_low_rank_dim": c.lora_a,
        "v_low_rank_dim": c.lora_v,
        "gate_low_rank_dim": c.lora_g,
        "intermediate_size": c.dim_ffn,
        "value_dim": [c.n_embd] * c.n_layer,
    },
    fixed=_FIXED,
    extra=_EXTRA,
    tied=("lm_head.weight", "model.embeddings.weight"),
    upgrade=_upgrade_v7,
    complete=_complete_v7,
)

RWKV6 = Layout(
    name="fla-rwkv6",
    title="fla RWKV6ForCausalLM (RWKV-6)",
    source="fla-org/flash-linear-attention: fla/{models/rwkv6,layers/rwkv6.py}, utils/convert_from_rwkv6.py",
    versions=("6",),
    model_types=("rwkv6",),
    architectures=("RWKV6ForCausalLM",),
    marker="model.layers.0.attn.x_bias",
    table=TABLE_V6,
    config_fields=lambda c: {
        "vocab_size": c.vocab_size,
        "hidden_size": c.n_embd,
        "num_hidden_layers": c.n_layer,
        "num_heads": c.n_head,
        "expand_k": c.dim_att / c.n_embd,
        "expand_v": c.dim_att / c.n_embd,
        "proj_low_rank_dim": c.lora_mix,
        "gate_low_rank_dim": c.lora_decay,
        "intermediate_size": c.dim_ffn,
    },
    fixed=_FIXED,
    extra=_EXTRA,
    tied=("lm_head.weight", "model.embeddings.weight"),
)
