"""The RWKV organisation's remote-code HF layouts for RWKV-5.2 and RWKV-6 (``model_type`` "rwkv5", "rwkv6").

These are the files of the hub repositories ``RWKV/rwkv-5-world-{1b5,3b}``, ``RWKV/v5-Eagle-7B-HF``,
``RWKV/rwkv-6-world-{1b6,3b,7b}`` and ``RWKV/v6-Finch-*-HF``: a ``config.json``, the weights, and
their own ``configuration_rwkv{5,6}.py`` / ``modeling_rwkv{5,6}.py`` (``trust_remote_code``; the
code is *not* written here: to run a written directory in transformers, copy those two files from
the hub repository and add its ``auto_map`` to ``config.json``). This is the one widely used HF
layout for RWKV-5 (transformers has RWKV-4 only, fla RWKV-6/7 only); fla's own RWKV-6 converter
(``utils/convert_from_rwkv6.py``) reads RWKV-6 from this layout.

Where the facts come from: the remote code itself, read through the code search (``Rwkv5Model`` /
``RwkvSelfAttention`` / ``RwkvFeedForward`` / ``Rwkv5Block``, and ``Rwkv6SelfAttention`` /
``Rwkv6FeedForward`` / ``Rwkv6Block``; config classes ``Rwkv5Config`` / ``Rwkv6Config``). The
module tree is transformers' RWKV-4 one (``rwkv.embeddings``, ``rwkv.blocks.{i}.pre_ln`` at block
0, ``ln1``, ``ln2``, ``attention``, ``feed_forward``, ``rwkv.ln_out``, ``head``), and every
parameter keeps the official name *and shape*: RWKV-5 renames the static lerps as RWKV-4 does
(``time_mix_k -> time_mix_key``, ..., ``time_mix_g -> time_mix_gate``) and keeps ``time_decay`` and
``time_faaaa`` (H, N); RWKV-6 keeps every official name (``time_maa_*``, ``time_maa_w1`` (C, 5D),
``time_maa_w2`` (5, D, C), ``time_decay`` (1, 1, A), ``time_decay_w1/w2``, ``time_faaaa``).

Config quirks of that code: ``num_attention_heads`` is used as the *head size* (the RWKV-5 code
computes ``hidden_size // num_attention_heads`` heads for its state; its default, 64, is the
official head size), and hub files disagree on its value, so it is neither written nor checked;
the RWKV-5 config class drops ``intermediate_size`` (its FFN is always ``int(3.5 C) // 32 * 32`` wide, the
official default), the RWKV-6 code fixes the lerp/decay LoRA ranks at 32/64 (64/128 at C = 4096)
and takes the ``ln_x`` eps as ``1e-5 * head_size_divisor ** 2``. rwkvkit reads every size from the
tensor shapes, so it reads files of any size; only the files with those standard sizes run in the
remote code.
"""

from __future__ import annotations

from rwkvkit.formats.hf_transformers import ATT, FFN, LINEARS, SKELETON, STATIC_LERPS
from rwkvkit.formats.keymap import Layout

_GATE_AND_NORM = (
    ("blocks.{i}.att.gate.weight", ATT + "gate.weight"),
    ("blocks.{i}.att.ln_x.weight", ATT + "ln_x.weight"),
    ("blocks.{i}.att.ln_x.bias", ATT + "ln_x.bias"),
)

TABLE_V5 = (
    SKELETON
    + STATIC_LERPS
    + LINEARS
    + _GATE_AND_NORM
    + (
        ("blocks.{i}.att.time_mix_g", ATT + "time_mix_gate"),
        ("blocks.{i}.att.time_decay", ATT + "time_decay"),
        ("blocks.{i}.att.time_faaaa", ATT + "time_faaaa"),
    )
)

# every RWKV-6 attention parameter keeps its official name and shape
_V6_ATT = (
    "time_maa_x", "time_maa_w", "time_maa_k", "time_maa_v", "time_maa_r", "time_maa_g",
    "time_maa_w1", "time_maa_w2", "time_decay", "time_decay_w1", "time_decay_w2", "time_faaaa",
)  # fmt: skip

TABLE_V6 = (
    SKELETON
    + LINEARS
    + _GATE_AND_NORM
    + tuple((f"blocks.{{i}}.att.{name}", ATT + name) for name in _V6_ATT)
    + (
        ("blocks.{i}.ffn.time_maa_k", FFN + "time_maa_k"),
        ("blocks.{i}.ffn.time_maa_r", FFN + "time_maa_r"),
    )
)


def _fields(c) -> dict:
    return {
        "vocab_size": c.vocab_size,
        "hidden_size": c.n_embd,
        "num_hidden_layers": c.n_layer,
        "attention_hidden_size": c.dim_att,
        "head_size": c.head_size,
        "intermediate_size": c.dim_ffn,
    }


_EXTRA = {"rescale_every": 0, "tie_word_embeddings": False, "bos_token_id": 0, "eos_token_id": 0}

RWKV5 = Layout(
    name="rwkv-hub-rwkv5",
    title="RWKV hub Rwkv5ForCausalLM (remote code, RWKV-5.2)",
    source="hub RWKV/rwkv-5-world-*: configuration_rwkv5.py, modeling_rwkv5.py",
    versions=("5.2",),
    model_types=("rwkv5",),
    architectures=("Rwkv5ForCausalLM",),
    marker="rwkv.blocks.0.attention.time_faaaa",
    table=TABLE_V5,
    config_fields=_fields,
    fixed={"layer_norm_epsilon": 1e-5},
    extra=_EXTRA,
    tied=("head.weight", "rwkv.embeddings.weight"),
)

RWKV6 = Layout(
    name="rwkv-hub-rwkv6",
    title="RWKV hub Rwkv6ForCausalLM (remote code, RWKV-6)",
    source="hub RWKV/rwkv-6-world-*: configuration_rwkv6.py, modeling_rwkv6.py",
    versions=("6",),
    model_types=("rwkv6",),
    architectures=("Rwkv6ForCausalLM",),
    marker="rwkv.blocks.0.attention.time_maa_x",
    table=TABLE_V6,
    config_fields=_fields,
    fixed={"layer_norm_epsilon": 1e-5},
    extra=_EXTRA | {"head_size_divisor": 8},  # the remote code's ln_x eps 1e-5 * 8**2 = 64e-5, as official
    tied=("head.weight", "rwkv.embeddings.weight"),
)
