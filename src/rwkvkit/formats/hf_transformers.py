"""Hugging Face transformers' RWKV-4 layout (``RwkvForCausalLM``, ``model_type: "rwkv"``).

Where the facts come from: the installed ``transformers`` 5.24, ``models/rwkv/modeling_rwkv.py``
(module tree: ``RwkvForCausalLM.rwkv`` = ``RwkvModel`` with ``embeddings``, ``blocks[i]`` =
``RwkvBlock`` with ``pre_ln`` at block 0 only, ``ln1``, ``ln2``, ``attention`` =
``RwkvSelfAttention``, ``feed_forward`` = ``RwkvFeedForward``; ``ln_out``; ``head``) and
``configuration_rwkv.py`` (``RwkvConfig`` fields), checked by dumping ``save_pretrained`` of a
tiny model. Every tensor keeps the official shape (``time_mix_*`` stay (1, 1, C), ``time_decay``
and ``time_first`` stay (A,)), so the map is renames only: ``emb -> rwkv.embeddings``,
``ln0 -> pre_ln``, ``att -> attention``, ``ffn -> feed_forward``, ``time_mix_k/v/r ->
time_mix_key/value/receptance``, everything under ``rwkv.`` except ``head``.

``rescale_every``: in eval mode ``RwkvModel._rescale_layers`` divides block ``l``'s
``attention.output`` and ``feed_forward.value`` weights *in memory* by ``2 ** (l // rescale_every)``
and halves the hidden state every ``rescale_every`` blocks (exact up to LayerNorm eps, because
LayerNorm is scale invariant). Files on the hub hold the unscaled, as-trained weights, and so do the
files written here; we write ``rescale_every: 0`` so transformers runs the weights exactly as stored
(set it to 6 by hand for fp16 inference of deep models). Pitfall: a model ``save_pretrained`` after
an eval-mode forward with ``rescale_every > 0`` writes the *divided* weights, and such a file
cannot be told apart from a normal one; rwkvkit reads every file as unscaled.

``layer_norm_epsilon`` applies to ``pre_ln``/``ln1``/``ln2`` only (``ln_out`` uses torch's default
1e-5); rwkvkit's LayerNorms all use 1e-5, so other values are refused.
"""

from __future__ import annotations

from rwkvkit.formats.keymap import Layout

# The "rwkv." skeleton shared with the RWKV hub's remote-code RWKV-5/6 models (hf_rwkv_hub.py).
SKELETON = (
    ("emb.weight", "rwkv.embeddings.weight"),
    ("blocks.0.ln0.weight", "rwkv.blocks.0.pre_ln.weight"),
    ("blocks.0.ln0.bias", "rwkv.blocks.0.pre_ln.bias"),
    ("blocks.{i}.ln1.weight", "rwkv.blocks.{i}.ln1.weight"),
    ("blocks.{i}.ln1.bias", "rwkv.blocks.{i}.ln1.bias"),
    ("blocks.{i}.ln2.weight", "rwkv.blocks.{i}.ln2.weight"),
    ("blocks.{i}.ln2.bias", "rwkv.blocks.{i}.ln2.bias"),
    ("ln_out.weight", "rwkv.ln_out.weight"),
    ("ln_out.bias", "rwkv.ln_out.bias"),
    ("head.weight", "head.weight"),
)

ATT, FFN = "rwkv.blocks.{i}.attention.", "rwkv.blocks.{i}.feed_forward."

# the RWKV-4/5 lerp names: official time_mix_x -> HF time_mix_<word>
STATIC_LERPS = (
    ("blocks.{i}.att.time_mix_k", ATT + "time_mix_key"),
    ("blocks.{i}.att.time_mix_v", ATT + "time_mix_value"),
    ("blocks.{i}.att.time_mix_r", ATT + "time_mix_receptance"),
    ("blocks.{i}.ffn.time_mix_k", FFN + "time_mix_key"),
    ("blocks.{i}.ffn.time_mix_r", FFN + "time_mix_receptance"),
)

LINEARS = tuple(
    (f"blocks.{{i}}.att.{name}.weight", f"{ATT}{name}.weight")
    for name in ("key", "value", "receptance", "output")
) + tuple(
    (f"blocks.{{i}}.ffn.{name}.weight", f"{FFN}{name}.weight") for name in ("key", "receptance", "value")
)

TABLE = (
    SKELETON
    + STATIC_LERPS
    + LINEARS
    + (
        ("blocks.{i}.att.time_decay", ATT + "time_decay"),
        ("blocks.{i}.att.time_first", ATT + "time_first"),
    )
)

RWKV4 = Layout(
    name="transformers-rwkv4",
    title="transformers RwkvForCausalLM (RWKV-4)",
    source="transformers 5.24 models/rwkv/{modeling,configuration}_rwkv.py",
    versions=("4",),
    model_types=("rwkv",),
    architectures=("RwkvForCausalLM",),
    marker="rwkv.blocks.0.attention.time_first",
    table=TABLE,
    config_fields=lambda c: {
        "vocab_size": c.vocab_size,
        "hidden_size": c.n_embd,
        "num_hidden_layers": c.n_layer,
        "attention_hidden_size": c.dim_att,
        "intermediate_size": c.dim_ffn,
    },
    fixed={"layer_norm_epsilon": 1e-5},
    # run the weights as stored (see the module docstring); untied head and token ids as the hub files
    extra={"rescale_every": 0, "tie_word_embeddings": False, "bos_token_id": 0, "eos_token_id": 0},
    tied=("head.weight", "rwkv.embeddings.weight"),
)
