"""GGUF, llama.cpp's model file: RWKV-6 and RWKV-7 written and read in llama.cpp's own layout
(docs/checkpoints.md#llamacpp-gguf-rwkv-6-and-rwkv-7).

A file written here is the file llama.cpp's converter (``convert_hf_to_gguf.py``) makes from the
same weights, and llama.cpp loads it as it loads its own; any RWKV-6/7 GGUF that llama.cpp's
converter or ``llama-quantize`` wrote is read back into rwkvkit's (official) names. Where each fact
comes from (llama.cpp as vendored by llama-cpp-python 0.3.36, gguf-py 0.19.0; read, not run):

* architecture names ``rwkv6``, ``rwkv7`` and the metadata keys: ``src/llama-arch.cpp``; which keys
  the loader requires: ``src/models/rwkv6.cpp`` and ``rwkv7.cpp`` (``load_arch_hparams``);
* tensor names and shapes (ggml order, reversed below to torch order): the same files'
  ``load_arch_tensors``; the order of the fused lerps: ``rwkv6-base.cpp``, ``rwkv7-base.cpp``;
* the transforms from the official tensors: ``conversion/rwkv.py`` (``Rwkv6Model``,
  ``Rwkv7Model.modify_tensors``), fed the HF layouts, which keep the official names and shapes
  (:mod:`.hf_rwkv_hub`, :mod:`.hf_fla`), through ``gguf-py/gguf/tensor_mapping.py``;
* which tensors stay f32: ``conversion/base.py`` (``prepare_tensors``) and ``src/llama-quant.cpp``
  (``tensor_allows_quantization``, ``llama_tensor_get_type_impl``);
* the vocabulary: ``conversion/base.py`` (``_set_vocab_rwkv_world``) and ``src/llama-vocab.cpp``
  (``llama_unescape_rwkv_token``, ``llm_tokenizer_rwkv``).

Tensors, in torch order (ggml's ``ne`` is this reversed); ``{i}`` is the block, C = n_embd, N the
head size, H = C / N, F the FFN width, D a LoRA rank:

=====================================  ==============================  =====================================
official (rwkvkit) name                GGUF name                       how
=====================================  ==============================  =====================================
emb.weight (V, C)                      token_embd.weight               as is
blocks.0.ln0.{weight,bias}             token_embd_norm.{weight,bias}   as is
blocks.{i}.ln1 / ln2 .{weight,bias}    blk.{i}.attn_norm / attn_norm_2
ln_out.{weight,bias}, head.weight      output_norm.{..}, output.weight as is
att.{receptance,key,value,output}      blk.{i}.time_mix_{..}.weight    as is (Linear (out, in))
att.ln_x.{weight,bias}                 blk.{i}.time_mix_ln.{..}        as is
RWKV-6  att.time_maa_x (1, 1, C)       blk.{i}.time_mix_lerp_x.weight  squeezed to (C)
        att.time_maa_{w,k,v,r,g}       blk.{i}.time_mix_lerp_fused     stacked w, k, v, r, g: (5, 1, 1, C)
        att.time_maa_w1 (C, 5D)        blk.{i}.time_mix_w1.weight      transposed: (5D, C)
        att.time_maa_w2 (5, D, C)      blk.{i}.time_mix_w2.weight      permuted (0, 2, 1): (5, C, D)
        att.time_decay (1, 1, C)       blk.{i}.time_mix_decay.weight   squeezed: (C)
        att.time_decay_w1 / _w2        blk.{i}.time_mix_decay_w1 / _w2 transposed: (D, C) / (C, D)
        att.time_faaaa (H, N)          blk.{i}.time_mix_first.weight   as is
        att.gate.weight                blk.{i}.time_mix_gate.weight    as is
        ffn.time_maa_{k,r} (1, 1, C)   blk.{i}.channel_mix_lerp_{k,r}  squeezed: (C)
        ffn.{key,value,receptance}     blk.{i}.channel_mix_{..}        as is
RWKV-7  att.x_{r,w,k,v,a,g} (1, 1, C)  blk.{i}.time_mix_lerp_fused     stacked r, w, k, v, a, g: (6, 1, 1, C)
        att.{w,a,v}0 (1, 1, C)         blk.{i}.time_mix_{w,a,v}0       squeezed: (C)
        att.{w,a,v,g}1 (C, D)          blk.{i}.time_mix_{w,a,v,g}1     transposed: (D, C)
        att.{w,a,v,g}2 (D, C)          blk.{i}.time_mix_{w,a,v,g}2     transposed: (C, D)
        att.k_k, att.k_a (1, 1, C)     blk.{i}.time_mix_k_k / _k_a     squeezed: (C)
        att.r_k (H, N)                 blk.{i}.time_mix_r_k.weight     flattened: (C)
        ffn.x_k (1, 1, C)              blk.{i}.channel_mix_lerp_k      squeezed: (C)
        ffn.{key,value}                blk.{i}.channel_mix_{..}        as is
=====================================  ==============================  =====================================

No value is transformed (``w0``, ``time_decay`` are stored raw; llama.cpp applies the same formulas as
the official code), so an f32 file round-trips bit for bit. Two details: llama.cpp wants RWKV-7's
unused layer-0 value LoRA with the in-context-rate rank (``v1`` (C, D_a) in ggml order); the
converter writes a copy of ``a0/a1/a2`` there. rwkvkit writes the model's own layer-0 ``v0/v1/v2``
when the two ranks are equal and zeros otherwise, and reads them back when their rank fits, zeros
otherwise (unused by the model either way, as with fla). RWKV-6 files of the RWKV hub have
``rescale_every`` 6, which the converter bakes in (``time_mix_output`` and ``channel_mix_value`` of
block i divided by 2^(i // 6), undone at run time by halving the residual); rwkvkit writes 0 (no
rescaling, exact) and undoes a file's rescaling on reading.

Metadata (``{arch}`` is ``rwkv6`` or ``rwkv7``; every integer a u32, the epsilon an f32):
``{arch}.context_length`` 1048576 (RWKV has no context limit; the converter's value),
``.embedding_length``, ``.block_count``, ``.feed_forward_length``, ``.attention.head_count`` 0
(required, unused), ``.attention.layer_norm_epsilon`` 1e-5, ``.wkv.head_size``; RWKV-6:
``.rescale_every_n_layers``, ``.time_mix_extra_dim`` (D of ``time_maa_w1``),
``.time_decay_extra_dim``; RWKV-7: ``.attention.decay_lora_rank``, ``.iclr_lora_rank``,
``.value_residual_mix_lora_rank``, ``.gate_lora_rank``. ``.token_shift_count`` is left out as the
converter leaves it out (llama.cpp's default, 2, is what RWKV-6/7 need; other values are refused on
reading). Also ``general.architecture``, ``general.type`` "model", ``general.file_type``,
``general.quantization_version``.

Tensor types. ``dtype`` picks the type of the large matrices (the embedding, the head, the
receptance/key/value/gate/output and channel-mix matrices): ``f32``, ``f16``, ``bf16``, ``q8_0`` or
``q4_0`` (blocks of 32 quantised by ``gguf.quants``, the code of llama.cpp's converter). Everything
else stays f32 as llama.cpp keeps it: 1-D tensors and norms (converter), and every RWKV LoRA, decay
and lerp tensor (``time_mix_first``, ``w0..g2``, ``decay_w1/w2``, ``lerp_fused``: the list of
``llama-quantize``, which never quantises them; the converter itself keeps only ``w1/w2``,
``decay_w1/w2``, ``lerp_fused`` and ``first`` f32 and gives RWKV-7's ``a/v/g`` LoRAs the file type).
At ``q4_0`` the head is ``q8_0``: ``llama-quantize`` gives it ``q6_K``, which gguf-py cannot
quantise, and ``q8_0`` is its own choice for a head whose rows do not split into 256-blocks. A matrix
whose rows do not split into 32-blocks is written f16, llama.cpp's fallback. The default ``dtype``
(None) keeps the precision of the checkpoint: f32, bf16 or f16, whichever holds most weights.

Vocabulary (``tokenizer.ggml.*``), for the RWKV World tokenizer, as llama.cpp's converter writes
it: ``model`` "rwkv"; ``tokens``: id 0 ``<s>`` (type control), then every token of the World file in
id order as ``repr(token_bytes)[2:-1]`` (Python's bytes escapes, which llama.cpp unescapes), then
``[PAD{id}]`` (type unused) up to the model's vocabulary size; ``token_type``; ``bos_token_id`` and
``eos_token_id`` 0; ``eot_token_id`` the id of ``"\\n\\n"`` (261); a chat template in the World
chat format. A model without a World vocabulary gets ``model`` "none" and ``{arch}.vocab_size``,
llama.cpp's no-vocabulary mode.

Checksums: like every file rwkvkit writes, a GGUF carries ``rwkvkit.checksums`` (a string key
llama.cpp ignores): xxh3-128 digests of every tensor (name, type, shape, stored bytes) and of the
metadata that defines the model (``general.architecture``, the ``{arch}.*`` keys, the token list),
checked on reading (``verify=True``). Other metadata (name, chat template, special ids) may be
edited with gguf-py's tools without invalidating the file. Files of other tools have none and are
read unverified. Reading is plain parsing (:func:`parse`, over a memory map): nothing in the file
is executed, and the chat template is never rendered.

Checked against llama.cpp's converter itself (``tests/formats/test_gguf.py``, with
``RWKVKIT_LLAMA_CPP`` set): from the same weights it writes the same metadata, token list, tensor
names, types, shapes and bytes, except what rwkvkit does on purpose: no ``general.name`` /
``general.size_label``, its own chat template, the checksums, layer 0's RWKV-7 value LoRA (above),
and at q8_0 RWKV-7's ``a/v/g`` LoRAs f32 (the converter quantises them, ``llama-quantize`` would not).
"""

from __future__ import annotations

import json
import math
import mmap
import os
import struct
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import xxhash

from rwkvkit.errors import CheckpointError, ConfigError, TokenizerError, UnsupportedVersionError
from rwkvkit.formats import blinkdl, keymap
from rwkvkit.formats._io import atomic_file, majority_dtype
from rwkvkit.formats.keymap import IDENTITY, SQUEEZE, TRANSPOSE, Transform
from rwkvkit.models.rwkv.config import RWKVConfig
from rwkvkit.tokenizer import WorldTokenizer, world_vocab_path
from rwkvkit.tokenizer import read_vocab as read_world_vocab
from rwkvkit.utils.integrity import ALGORITHM, Verified, check_record

MAGIC = b"GGUF"
ARCHITECTURES = {"6": "rwkv6", "7": "rwkv7"}
VERSION_OF = {arch: version for version, arch in ARCHITECTURES.items()}
# llama.cpp architectures built on RWKV blocks that are not RWKV language models (for the error message)
HYBRIDS = {
    "rwkv6qwen2": "RWKV-6 attention in a Qwen2 model",
    "arwkv7": "ARWKV (RWKV-7 attention in a transformer)",
}
CHECKSUM_KEY = "rwkvkit.checksums"
SOURCE = "llama.cpp convert_hf_to_gguf.py (conversion/rwkv.py) and src/models/rwkv{6,7}.cpp"

CONTEXT_LENGTH = 1048576  # the converter's value: "RWKV isn't context limited"
LAYER_NORM_EPS = 1e-5  # every RWKV LayerNorm (ln0, ln1, ln2, ln_out)
TOKEN_SHIFT_COUNT = 2  # llama.cpp's default; its RWKV-6/7 graphs assert it

# dtype names -> ggml type names; the file's ``general.file_type`` (gguf.LlamaFileType) per type
_DTYPES = {
    "f32": "F32", "fp32": "F32", "float32": "F32", "float": "F32",
    "f16": "F16", "fp16": "F16", "float16": "F16", "half": "F16",
    "bf16": "BF16", "bfloat16": "BF16",
    "q8_0": "Q8_0", "q4_0": "Q4_0",
}  # fmt: skip
_TORCH_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}
FILE_TYPES = {"F32": 0, "F16": 1, "Q4_0": 2, "Q8_0": 7, "BF16": 32}
DTYPE_CHOICES = ("f32", "f16", "bf16", "q8_0", "q4_0")

# Tensors llama.cpp never quantises (llama-quant.cpp's list, in GGUF names); 1-D tensors and norms
# are f32 anyway.
KEEP_F32 = (
    "time_mix_first", "time_mix_w0", "time_mix_w1", "time_mix_w2", "time_mix_a0", "time_mix_a1",
    "time_mix_a2", "time_mix_v0", "time_mix_v1", "time_mix_v2", "time_mix_g1", "time_mix_g2",
    "time_mix_decay_w1", "time_mix_decay_w2", "time_mix_lerp_fused",
)  # fmt: skip

# A chat template in the World chat format ("User: ...\n\nAssistant:"), written for this module; it
# contains the line by which llama.cpp's built-in template detection recognises "rwkv-world".
CHAT_TEMPLATE = (
    "{%- for message in messages -%}\n"
    "{%- if message['role'] == 'system' -%}\n"
    "{{- 'System: ' + message['content']|trim + '\\n\\n' -}}\n"
    "{%- elif message['role'] == 'user' -%}\n"
    "{{- 'User: ' + message['content']|trim + '\\n\\n' -}}\n"
    "{%- elif message['role'] == 'assistant' and message['content'] is not none -%}\n"
    "{{- 'Assistant: ' + message['content']|trim + '\\n\\n' -}}\n"
    "{%- endif -%}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}{{- 'Assistant:' -}}{%- endif -%}\n"
)


# ---- the key tables --------------------------------------------------------------------------------


def _fused(n: int) -> Transform:
    """n official (1, 1, C) lerp vectors <-> one (n, 1, 1, C) tensor (ggml ne = [C, 1, 1, n])."""
    return Transform(
        f"stack{n}",
        lambda *xs: torch.stack([x.reshape(-1) for x in xs]).reshape(n, 1, 1, -1),
        lambda y: tuple(r.reshape(1, 1, -1) for r in y.reshape(n, -1).unbind(0)),
    )


# (5, D, C) <-> (5, C, D): the converter's ``permute(0, 2, 1)`` of RWKV-6's time_maa_w2
_SWAP_LAST = Transform("permute021", lambda x: x.permute(0, 2, 1), lambda y: (y.permute(0, 2, 1),))

_SKELETON = (
    ("emb.weight", "token_embd.weight"),
    ("blocks.0.ln0.weight", "token_embd_norm.weight"),
    ("blocks.0.ln0.bias", "token_embd_norm.bias"),
    ("ln_out.weight", "output_norm.weight"),
    ("ln_out.bias", "output_norm.bias"),
    ("head.weight", "output.weight"),
    ("blocks.{i}.ln1.weight", "blk.{i}.attn_norm.weight"),
    ("blocks.{i}.ln1.bias", "blk.{i}.attn_norm.bias"),
    ("blocks.{i}.ln2.weight", "blk.{i}.attn_norm_2.weight"),
    ("blocks.{i}.ln2.bias", "blk.{i}.attn_norm_2.bias"),
    ("blocks.{i}.att.receptance.weight", "blk.{i}.time_mix_receptance.weight"),
    ("blocks.{i}.att.key.weight", "blk.{i}.time_mix_key.weight"),
    ("blocks.{i}.att.value.weight", "blk.{i}.time_mix_value.weight"),
    ("blocks.{i}.att.output.weight", "blk.{i}.time_mix_output.weight"),
    ("blocks.{i}.att.ln_x.weight", "blk.{i}.time_mix_ln.weight"),
    ("blocks.{i}.att.ln_x.bias", "blk.{i}.time_mix_ln.bias"),
    ("blocks.{i}.ffn.key.weight", "blk.{i}.channel_mix_key.weight"),
    ("blocks.{i}.ffn.value.weight", "blk.{i}.channel_mix_value.weight"),
)

_LERPS6 = tuple(f"blocks.{{i}}.att.time_maa_{x}" for x in "wkvrg")  # llama.cpp's order: w, k, v, r, g
TABLE_V6 = _SKELETON + (
    ("blocks.{i}.att.time_maa_x", "blk.{i}.time_mix_lerp_x.weight", SQUEEZE),
    (_LERPS6, "blk.{i}.time_mix_lerp_fused.weight", _fused(5)),
    ("blocks.{i}.att.time_maa_w1", "blk.{i}.time_mix_w1.weight", TRANSPOSE),
    ("blocks.{i}.att.time_maa_w2", "blk.{i}.time_mix_w2.weight", _SWAP_LAST),
    ("blocks.{i}.att.time_decay", "blk.{i}.time_mix_decay.weight", SQUEEZE),
    ("blocks.{i}.att.time_decay_w1", "blk.{i}.time_mix_decay_w1.weight", TRANSPOSE),
    ("blocks.{i}.att.time_decay_w2", "blk.{i}.time_mix_decay_w2.weight", TRANSPOSE),
    ("blocks.{i}.att.time_faaaa", "blk.{i}.time_mix_first.weight", IDENTITY),
    ("blocks.{i}.att.gate.weight", "blk.{i}.time_mix_gate.weight"),
    ("blocks.{i}.ffn.time_maa_k", "blk.{i}.channel_mix_lerp_k.weight", SQUEEZE),
    ("blocks.{i}.ffn.time_maa_r", "blk.{i}.channel_mix_lerp_r.weight", SQUEEZE),
    ("blocks.{i}.ffn.receptance.weight", "blk.{i}.channel_mix_receptance.weight"),
)

_LERPS7 = tuple(f"blocks.{{i}}.att.x_{x}" for x in "rwkvag")  # llama.cpp's order: r, w, k, v, a, g


def table_v7(head_size: int) -> tuple:
    """RWKV-7's table; ``r_k`` is stored flat, so reading it back needs the head size."""
    flat = Transform("flatten", lambda x: x.reshape(-1), lambda y: (y.reshape(-1, head_size),))
    rows = [
        (_LERPS7, "blk.{i}.time_mix_lerp_fused.weight", _fused(6)),
        ("blocks.{i}.att.k_k", "blk.{i}.time_mix_k_k.weight", SQUEEZE),
        ("blocks.{i}.att.k_a", "blk.{i}.time_mix_k_a.weight", SQUEEZE),
        ("blocks.{i}.att.r_k", "blk.{i}.time_mix_r_k.weight", flat),
        ("blocks.{i}.ffn.x_k", "blk.{i}.channel_mix_lerp_k.weight", SQUEEZE),
    ]
    for lora in "wav":
        rows += [
            (f"blocks.{{i}}.att.{lora}0", f"blk.{{i}}.time_mix_{lora}0.weight", SQUEEZE),
            (f"blocks.{{i}}.att.{lora}1", f"blk.{{i}}.time_mix_{lora}1.weight", TRANSPOSE),
            (f"blocks.{{i}}.att.{lora}2", f"blk.{{i}}.time_mix_{lora}2.weight", TRANSPOSE),
        ]
    rows += [
        ("blocks.{i}.att.g1", "blk.{i}.time_mix_g1.weight", TRANSPOSE),
        ("blocks.{i}.att.g2", "blk.{i}.time_mix_g2.weight", TRANSPOSE),
    ]
    return _SKELETON + tuple(rows)


def table(config: RWKVConfig) -> tuple:
    """The key table (:mod:`.keymap` rows) of ``config``'s version."""
    return TABLE_V6 if config.version == "6" else table_v7(config.head_size)


def hparams(config: RWKVConfig) -> dict[str, tuple[str, int | float]]:
    """The architecture metadata llama.cpp reads: ``{key: ("u32" | "f32", value)}``."""
    a = ARCHITECTURES[config.version]
    out = {
        f"{a}.context_length": ("u32", CONTEXT_LENGTH),
        f"{a}.embedding_length": ("u32", config.n_embd),
        f"{a}.block_count": ("u32", config.n_layer),
        f"{a}.feed_forward_length": ("u32", config.dim_ffn),
        f"{a}.attention.head_count": ("u32", 0),  # "required by llama.cpp, unused"
        f"{a}.attention.layer_norm_epsilon": ("f32", LAYER_NORM_EPS),
        f"{a}.wkv.head_size": ("u32", config.head_size),
    }
    if config.version == "6":
        out |= {
            f"{a}.rescale_every_n_layers": ("u32", 0),
            f"{a}.time_mix_extra_dim": ("u32", config.lora_mix),
            f"{a}.time_decay_extra_dim": ("u32", config.lora_decay),
        }
    else:
        out |= {
            f"{a}.attention.decay_lora_rank": ("u32", config.lora_w),
            f"{a}.attention.iclr_lora_rank": ("u32", config.lora_a),
            f"{a}.attention.value_residual_mix_lora_rank": ("u32", config.lora_v),
            f"{a}.attention.gate_lora_rank": ("u32", config.lora_g),
        }
    return out


def check_supported(config: RWKVConfig, what: str = "GGUF") -> None:
    """Refuse what llama.cpp's RWKV graphs cannot hold: versions other than 6 and 7, an attention
    width other than n_embd."""
    if config.version not in ARCHITECTURES:
        raise UnsupportedVersionError(
            f"{what} supports RWKV-6 and RWKV-7 only (llama.cpp's rwkv6 and rwkv7 architectures), this "
            f"is RWKV-{config.version}; write it as rwkvkit, blinkdl or hf instead"
        )
    if config.dim_att != config.n_embd:
        raise CheckpointError(
            f"llama.cpp's rwkv6 needs an attention width equal to n_embd, this model has dim_att "
            f"{config.dim_att} and n_embd {config.n_embd}; it cannot be written as {what}"
        )


# ---- tensor types ----------------------------------------------------------------------------------


def resolve_dtype(dtype: str | torch.dtype | None, sd: Mapping[str, torch.Tensor]) -> str:
    """The ggml type name of the large matrices: ``dtype``, or (None) the checkpoint's own precision."""
    if dtype is None:
        return _TORCH_DTYPES.get(majority_dtype(sd), "F32")
    if isinstance(dtype, torch.dtype):
        if dtype not in _TORCH_DTYPES:
            raise ConfigError(f"GGUF cannot store {dtype}; use one of {', '.join(DTYPE_CHOICES)}")
        return _TORCH_DTYPES[dtype]
    key = str(dtype).lower()
    if key not in _DTYPES:
        raise ConfigError(f"unknown GGUF dtype {dtype!r}; use one of {', '.join(DTYPE_CHOICES)}")
    return _DTYPES[key]


def tensor_type(name: str, shape: tuple[int, ...], main: str) -> str:
    """The ggml type llama.cpp's tools give GGUF tensor ``name`` of ``shape`` (torch order) in a file
    of type ``main`` (see the module docstring)."""
    if len(shape) <= 1 or name.endswith("_norm.weight") or not name.endswith(".weight"):
        return "F32"
    if any(f".{k}.weight" in name for k in KEEP_F32):
        return "F32"
    if main in ("Q8_0", "Q4_0"):
        if shape[-1] % 32:  # llama-quantize: "must use F16 due to unusual shape"
            return "F16"
        if main == "Q4_0" and name == "output.weight":
            return "Q8_0"
    return main


def _encode(t: torch.Tensor, qtype: str) -> np.ndarray:
    """A tensor as the bytes of ggml type ``qtype`` (f16/bf16 rounded to nearest even, as ggml does)."""
    import gguf  # deferred: gguf costs 0.4 s to import and only GGUF files need it

    t = t.detach().cpu()
    if qtype == "F32":
        return t.float().contiguous().numpy()
    if qtype == "F16":
        return t.half().contiguous().numpy()
    if qtype == "BF16":
        return t.bfloat16().contiguous().view(torch.int16).numpy()
    return gguf.quants.quantize(t.float().contiguous().numpy(), gguf.GGMLQuantizationType[qtype])


def _nbytes(shape: tuple[int, ...], qtype: str) -> int:
    import gguf  # deferred: gguf costs 0.4 s to import and only GGUF files need it

    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[qtype]]
    return math.prod(shape) // block * size


# ---- the vocabulary --------------------------------------------------------------------------------


def token_list(vocab: Mapping[int, bytes], vocab_size: int) -> tuple[list[bytes], list[int]]:
    """A World vocabulary (``{id: bytes}``, ids 1..n) as llama.cpp's converter writes it: the token
    texts and their types (``<s>`` control at 0, the tokens, ``[PAD{id}]`` unused up to ``vocab_size``)."""
    n = len(vocab)
    if set(vocab) != set(range(1, n + 1)):
        raise TokenizerError(
            "a GGUF World vocabulary needs token ids 1..n with no gaps (id 0 is <s>); this vocabulary "
            f"has ids {min(vocab)}..{max(vocab)} for {n} tokens"
        )
    if n + 1 > vocab_size:
        raise TokenizerError(
            f"the vocabulary has {n + 1} ids (with <s>) but the model has only {vocab_size} embedding rows; "
            "it is not this model's vocabulary (pass tokenizer=None to write the file without one)"
        )
    control, normal, unused = 3, 1, 5  # gguf.TokenType
    tokens = [b"<s>"] + [repr(bytes(vocab[i]))[2:-1].encode("utf-8") for i in range(1, n + 1)]
    tokens += [f"[PAD{i}]".encode() for i in range(n + 1, vocab_size)]
    types = [control] + [normal] * n + [unused] * (vocab_size - n - 1)
    return tokens, types


def unescape_token(text: str) -> bytes:
    """llama.cpp's ``llama_unescape_rwkv_token``: ``\\t \\n \\r \\xHH`` and ``\\c`` -> ``c``; the inverse
    of ``repr(token_bytes)[2:-1]``."""
    raw, out, i = text.encode("utf-8"), bytearray(), 0
    while i < len(raw):
        c = raw[i]
        if c != 0x5C:  # not a backslash
            out.append(c)
            i += 1
        elif i + 1 == len(raw):  # a trailing backslash is dropped, as llama.cpp does
            break
        elif raw[i + 1] == 0x78:  # \xHH
            out.append(int(raw[i + 2 : i + 4], 16))
            i += 4
        else:  # \t \n \r, or any other character standing for itself
            out.append({0x74: 9, 0x6E: 10, 0x72: 13}.get(raw[i + 1], raw[i + 1]))
            i += 2
    return bytes(out)


def _vocabulary(tokenizer, config: RWKVConfig) -> Mapping[int, bytes] | None:
    """The World vocabulary to write, from ``tokenizer`` ("auto", "world", a .txt path, None/"none")."""
    if tokenizer is None or tokenizer == "none":
        return None
    if tokenizer == "auto":
        if not 65530 <= config.vocab_size <= 65536:
            return None  # not a World model (the World vocabulary has 65530 ids)
        try:
            return read_world_vocab(world_vocab_path())
        except TokenizerError as e:
            raise TokenizerError(
                f"{e} (the model has the World vocabulary's size, so its GGUF would carry it; "
                "pass tokenizer=None, or --tokenizer none, to write the file without a vocabulary)"
            ) from None
    if tokenizer == "world":
        return read_world_vocab(world_vocab_path())
    if isinstance(tokenizer, str | os.PathLike):
        return read_world_vocab(tokenizer)
    raise TypeError(
        f"tokenizer must be 'auto', 'world', None or a vocabulary path, got {type(tokenizer).__name__}"
    )


# ---- writing ---------------------------------------------------------------------------------------


def to_gguf_tensors(sd: Mapping[str, torch.Tensor], config: RWKVConfig) -> dict[str, torch.Tensor]:
    """rwkvkit's state dict -> the GGUF tensors (names and torch-order shapes), unconverted dtypes."""
    check_supported(config)
    out = keymap.to_foreign(sd, table(config), config.n_layer, "GGUF")
    if config.version == "7" and config.lora_v != config.lora_a:
        # llama.cpp reads layer 0's (unused) value LoRA with the in-context-rate rank
        C, D, ref = config.n_embd, config.lora_a, out["blk.0.time_mix_v0.weight"]
        out["blk.0.time_mix_v0.weight"] = ref.new_zeros(C)
        out["blk.0.time_mix_v1.weight"] = ref.new_zeros(D, C)
        out["blk.0.time_mix_v2.weight"] = ref.new_zeros(C, D)
    return out


def write(
    sd: Mapping[str, torch.Tensor],
    config: RWKVConfig,
    path: str | Path,
    dtype: str | torch.dtype | None = None,
    tokenizer: str | os.PathLike | None = "auto",
) -> Path:
    """Write an RWKV-6 or RWKV-7 state dict (rwkvkit names) as a GGUF file in llama.cpp's layout.

    Args:
        sd: the weights under rwkvkit's (official) names.
        config: their sizes.
        path: the ``.gguf`` file; written atomically (temporary file, then rename).
        dtype: the type of the large matrices: ``"f32"``, ``"f16"``, ``"bf16"``, ``"q8_0"``,
            ``"q4_0"`` (or a torch dtype); None keeps the checkpoint's precision. Norms, lerps, decay
            and LoRAs are f32 whatever this is (module docstring).
        tokenizer: the vocabulary to write: ``"auto"`` (the World vocabulary of the ``rwkv``
            package when the model has its size, 65530..65536 ids, else none), ``"world"``, the path
            of a World-format ``.txt`` vocabulary, or None (no vocabulary: llama.cpp then runs on
            token ids only).

    Raises:
        UnsupportedVersionError: a version other than RWKV-6/7.
        ConfigError: an unknown dtype. TokenizerError: a vocabulary that cannot be written.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory; a GGUF model is a single file")
    tensors = to_gguf_tensors(sd, config)
    main = resolve_dtype(dtype, sd)
    vocab = _vocabulary(tokenizer, config)
    plan = [(name, t, tensor_type(name, tuple(t.shape), main)) for name, t in tensors.items()]
    atomic_file(path, lambda tmp: _write_file(tmp, config, plan, main, vocab))
    return path


def _write_file(tmp: Path, config: RWKVConfig, plan: list, main: str, vocab) -> None:
    import gguf  # deferred: gguf costs 0.4 s to import and only GGUF files need it

    arch = ARCHITECTURES[config.version]
    w = gguf.GGUFWriter(tmp, arch)
    try:
        w.add_type("model")
        for key, (kind, value) in hparams(config).items():
            (w.add_uint32 if kind == "u32" else w.add_float32)(key, value)
        w.add_file_type(FILE_TYPES[main])
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        if vocab is None:
            w.add_tokenizer_model("none")
            w.add_uint32(f"{arch}.vocab_size", config.vocab_size)
        else:
            tokens, types = token_list(vocab, config.vocab_size)
            w.add_tokenizer_model("rwkv")
            w.add_token_list(tokens)
            w.add_token_types(types)
            w.add_bos_token_id(0)
            w.add_eos_token_id(0)
            eot = next((i for i, t in vocab.items() if t == b"\n\n"), None)  # the converter's "hack": 261
            if eot is not None:
                w.add_eot_token_id(eot)
            w.add_chat_template(CHAT_TEMPLATE)
        names = [name for name, _, _ in plan]
        w.add_string(CHECKSUM_KEY, _checksum_json({n: "0" * 32 for n in names}, "0" * 32))  # sealed below
        for name, t, qtype in plan:  # infos first, then the data one tensor at a time (bounded memory)
            shape = tuple(t.shape)
            w.add_tensor_info(
                name, shape, np.dtype(np.float32), _nbytes(shape, qtype), gguf.GGMLQuantizationType[qtype]
            )
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        for _, t, qtype in plan:
            w.write_tensor_data(_encode(t, qtype))
    finally:
        w.close()
    _seal(tmp)


def _checksum_json(tensors: Mapping[str, str], metadata: str) -> str:
    # fixed-width digests: the sealed record has exactly the length of the placeholder written first
    return json.dumps(
        {"algorithm": ALGORITHM, "metadata": metadata, "tensors": dict(tensors)}, sort_keys=True
    )


def _seal(path: Path) -> None:
    """Replace the placeholder checksum record of a just-written file by the digests of its bytes."""
    f = parse(path)
    record = _checksum_json(_tensor_digests(f), _metadata_digest(f)).encode()
    start, end = f.kv[CHECKSUM_KEY].span
    # the entry: u64 key length, key, u32 type, u64 string length, the record
    assert end - start == 8 + len(CHECKSUM_KEY) + 4 + 8 + len(record), "checksum record changed length"
    del f
    with open(path, "r+b") as out:
        out.seek(end - len(record))  # the record is the last bytes of its key/value entry
        out.write(record)


# ---- parsing ---------------------------------------------------------------------------------------
# GGUF v2/v3 (the specification: gguf.md in ggml's docs folder): "GGUF", u32 version, u64 tensor
# count, u64 key/value count; the key/value entries (u64-length string key, u32 type, value); the
# tensor infos (name, u32 n_dims, u64 ne[n_dims], u32 ggml type, u64 offset); the data, aligned to
# general.alignment (32). Parsed here in plain Python over a memory map: gguf-py's GGUFReader makes
# two numpy arrays per token string and takes 2.5 s over the 65536 tokens of a World vocabulary, this
# about 0.05 s.

_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
           10: "<Q", 11: "<q", 12: "<d"}  # fmt: skip
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class KV:
    """One metadata entry: GGUF value type, value (str, number, bool, or a list), and its byte span."""

    type: int
    value: object
    span: tuple[int, int]


@dataclass(frozen=True)
class TensorInfo:
    name: str
    type: str  # ggml type name, e.g. "Q4_0"
    ne: tuple[int, ...]  # ggml order (torch order reversed)
    start: int  # absolute offset of the data in the file
    nbytes: int


@dataclass
class GGUFFile:
    """A parsed GGUF: its metadata, tensor infos and a copy-on-write memory map of the bytes."""

    path: Path
    version: int
    kv: dict[str, KV]
    tensors: list[TensorInfo]
    buffer: mmap.mmap

    def string(self, key: str) -> str | None:
        kv = self.kv.get(key)
        return kv.value if kv is not None and kv.type == _STRING else None

    def data(self, t: TensorInfo) -> np.ndarray:
        return np.frombuffer(self.buffer, dtype=np.uint8, count=t.nbytes, offset=t.start)


class _Cursor:
    def __init__(self, buf, path: Path) -> None:
        self.buf, self.pos, self.path, self.size = buf, 0, path, len(buf)

    def take(self, n: int, what: str) -> int:
        """Advance over ``n`` bytes; the start position. Raises CheckpointError past the end."""
        if n < 0 or self.pos + n > self.size:
            raise CheckpointError(
                f"{self.path} is truncated or corrupt ({self.size} bytes; {what} runs past the end at byte "
                f"{self.pos}); copy or convert it again"
            )
        start, self.pos = self.pos, self.pos + n
        return start

    def scalar(self, fmt: str, what: str):
        return struct.unpack_from(fmt, self.buf, self.take(struct.calcsize(fmt), what))[0]

    def string(self, what: str) -> str:
        n = self.scalar("<Q", what)
        start = self.take(n, what)
        try:
            return bytes(self.buf[start : start + n]).decode("utf-8")
        except UnicodeDecodeError:
            raise CheckpointError(f"{self.path}: {what} is not UTF-8; the file is corrupt") from None

    def name(self, what: str) -> str:
        """A key or tensor name: printable text (so that every message naming it stays one line)."""
        name = self.string(what)
        if not name.isprintable():
            raise CheckpointError(
                f"{self.path}: {what} is named {name!r}, not printable text; the file is corrupt"
            )
        return name

    def value(self, vtype: int, what: str, depth: int = 0):
        if vtype in _SCALAR:
            return self.scalar(_SCALAR[vtype], what)
        if vtype == _STRING:
            return self.string(what)
        if vtype == _ARRAY:
            etype, count = self.scalar("<I", what), self.scalar("<Q", what)
            if etype in _SCALAR:
                size = struct.calcsize(_SCALAR[etype])
                start = self.take(size * count, what)
                dtype = np.dtype(np.bool_) if etype == 7 else np.dtype(_SCALAR[etype])
                return np.frombuffer(self.buf, dtype=dtype, count=count, offset=start).tolist()
            if depth >= 4:  # GGUF files hold arrays of scalars or strings; deeper nesting is damage
                raise CheckpointError(
                    f"{self.path}: {what} nests arrays {depth + 1} deep; the file is corrupt"
                )
            return [self.value(etype, what, depth + 1) for _ in range(count)]
        raise CheckpointError(f"{self.path}: {what} has an unknown value type {vtype}; the file is corrupt")


def parse(path: str | Path) -> GGUFFile:
    """Parse a GGUF file's header, metadata and tensor infos (the data stays memory-mapped).

    Raises CheckpointError for anything that is not a well-formed little-endian GGUF v2/v3.
    """
    import gguf  # deferred: gguf costs 0.4 s to import and only GGUF files need it

    path = Path(path)
    with open(path, "rb") as fh:
        if os.fstat(fh.fileno()).st_size < 24:
            raise CheckpointError(
                f"{path} is truncated ({os.fstat(fh.fileno()).st_size} bytes); not a GGUF model"
            )
        buf = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY)  # writable pages, never written back
    c = _Cursor(buf, path)
    if bytes(buf[:4]) != MAGIC:
        raise CheckpointError(f"{path} is not a GGUF file (it starts with {bytes(buf[:4])!r})")
    c.take(4, "the magic")
    version = c.scalar("<I", "the header")
    if version not in (2, 3):
        hint = " (a big-endian file)" if version > 0xFFFF else ""
        raise CheckpointError(f"{path} is GGUF version {version}{hint}; rwkvkit reads versions 2 and 3")
    n_tensors, n_kv = c.scalar("<Q", "the header"), c.scalar("<Q", "the header")
    kv: dict[str, KV] = {}
    for i in range(n_kv):
        start = c.pos
        key = c.name(f"metadata key {i}")
        vtype = c.scalar("<I", f"metadata {key!r}")
        value = c.value(vtype, f"metadata {key!r}")
        kv[key] = KV(vtype, value, (start, c.pos))
    infos = []
    for i in range(n_tensors):
        name = c.name(f"tensor info {i}")
        n_dims = c.scalar("<I", f"tensor info {name!r}")
        if n_dims > 4:
            raise CheckpointError(
                f"{path}: tensor {name!r} has {n_dims} dimensions (ggml has 4); the file is corrupt"
            )
        ne = tuple(c.scalar("<Q", f"tensor info {name!r}") for _ in range(n_dims))
        type_id, offset = c.scalar("<I", f"tensor info {name!r}"), c.scalar("<Q", f"tensor info {name!r}")
        try:
            qtype = gguf.GGMLQuantizationType(type_id)
        except ValueError:
            raise CheckpointError(
                f"{path}: tensor {name!r} has the ggml type id {type_id}, unknown to this gguf package; "
                "upgrade gguf (pip install -U gguf) or convert the model again"
            ) from None
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        n = math.prod(ne)  # Python ints: a corrupt dimension cannot overflow
        if ne and ne[0] % block:
            raise CheckpointError(f"{path}: tensor {name!r} rows of {ne[0]} do not fill {qtype.name} blocks")
        infos.append((name, qtype.name, ne, offset, n // block * size))
    align = kv["general.alignment"].value if "general.alignment" in kv else 32
    if not isinstance(align, int) or align <= 0 or align & (align - 1):
        raise CheckpointError(
            f"{path}: general.alignment {align!r} is not a power of two; the file is corrupt"
        )
    data_start = -(-c.pos // align) * align
    tensors = []
    for name, kind, ne, offset, nbytes in infos:
        if data_start + offset + nbytes > c.size:
            raise CheckpointError(
                f"{path} is truncated ({c.size} bytes; tensor {name!r} ends at byte "
                f"{data_start + offset + nbytes}); copy or convert it again"
            )
        tensors.append(TensorInfo(name, kind, ne, data_start + offset, nbytes))
    if len({t.name for t in tensors}) != len(tensors):
        raise CheckpointError(f"{path} names a tensor twice; the file is corrupt")
    return GGUFFile(path, version, kv, tensors, buf)


# ---- checksums -------------------------------------------------------------------------------------


def _tensor_digest(f: GGUFFile, t: TensorInfo) -> str:
    h = xxhash.xxh3_128()
    h.update(f"{t.name}\0{t.type}\0{list(t.ne)}\0".encode())
    h.update(f.data(t))
    return h.hexdigest()


def _tensor_digests(f: GGUFFile) -> dict[str, str]:
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:  # xxhash releases the GIL
        return dict(zip((t.name for t in f.tensors), pool.map(lambda t: _tensor_digest(f, t), f.tensors)))


def _covered(key: str, arch: str) -> bool:
    """Metadata the checksum covers: what defines the model (not its name, chat template, ids)."""
    return key.startswith(f"{arch}.") or key in (
        "general.architecture", "tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type",
    )  # fmt: skip


def _metadata_digest(f: GGUFFile) -> str:
    """xxh3-128 of the raw bytes of the covered key/value entries, in file order."""
    arch = f.string("general.architecture") or ""
    h = xxhash.xxh3_128()
    for key, kv in f.kv.items():
        if _covered(key, arch):
            h.update(f.buffer[kv.span[0] : kv.span[1]])
    return h.hexdigest()


def _check_checksums(f: GGUFFile) -> Verified:
    t0, path = time.perf_counter(), f.path
    if CHECKSUM_KEY not in f.kv:
        return Verified(path, "", 0, 0, 0.0)
    found = _tensor_digests(f)
    check_record(
        f.string(CHECKSUM_KEY) or "", found, _metadata_digest(f), path,
        "the metadata (hyperparameters or vocabulary)", "copy or convert it again",
    )  # fmt: skip
    nbytes = sum(t.nbytes for t in f.tensors)
    return Verified(path, ALGORITHM, len(found), nbytes, time.perf_counter() - t0)


# ---- reading ---------------------------------------------------------------------------------------


def is_gguf(path: str | Path) -> bool:
    """Whether ``path`` is a file that starts with the GGUF magic."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == MAGIC
    except OSError:
        return False


def _int(f: GGUFFile, key: str, default: int | None = None) -> int:
    kv = f.kv.get(key)
    if kv is None:
        if default is None:
            raise CheckpointError(
                f"{f.path} lacks the metadata key {key!r} that llama.cpp requires; the file is incomplete "
                "(convert it again)"
            )
        return default
    if not isinstance(kv.value, int) or isinstance(kv.value, bool):
        raise CheckpointError(f"{f.path}: metadata {key!r} is {kv.value!r}, not an integer")
    return kv.value


def architecture(f: GGUFFile) -> str:
    """The RWKV version of a GGUF's ``general.architecture``, or UnsupportedVersionError."""
    arch = f.string("general.architecture")
    if arch in VERSION_OF:
        return VERSION_OF[arch]
    if not arch:
        raise CheckpointError(
            f"{f.path} is a GGUF file without general.architecture; it is damaged or not a model"
        )
    what = f"an {HYBRIDS[arch]} model ({arch!r})" if arch in HYBRIDS else f"a {arch!r} model"
    raise UnsupportedVersionError(
        f"{f.path} holds {what}; rwkvkit reads GGUF files of RWKV-6 (rwkv6) and RWKV-7 (rwkv7) only"
    )


def _dequantize(f: GGUFFile, t: TensorInfo) -> torch.Tensor:
    """A GGUF tensor as a torch tensor: f32, f16 and bf16 as stored (no copy), quantised types
    dequantised to float32 by gguf-py."""
    import gguf  # deferred: gguf costs 0.4 s to import and only GGUF files need it

    shape = tuple(reversed(t.ne))
    if t.type in ("F64", "I8", "I16", "I32", "I64"):
        raise CheckpointError(
            f"{f.path}: tensor {t.name!r} is stored as {t.type}, not as weights (float or quantised); "
            "the file is not an RWKV model written by llama.cpp or rwkvkit"
        )
    if not t.nbytes:
        return torch.zeros(shape)  # an empty tensor (its shape is refused by the checks that follow)
    if t.type in ("F32", "F16", "BF16"):
        dtype = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}[t.type]
        return torch.frombuffer(f.buffer, dtype=dtype, count=math.prod(shape), offset=t.start).reshape(shape)
    qtype = gguf.GGMLQuantizationType[t.type]
    try:
        values = gguf.quants.dequantize(f.data(t).reshape(*shape[:-1], -1), qtype)
    except NotImplementedError:
        raise CheckpointError(
            f"{f.path}: tensor {t.name!r} is stored as {t.type}, which gguf-py cannot dequantize; "
            "re-quantize the model to q8_0, q4_0 or a K-quant, or convert it from the original checkpoint"
        ) from None
    return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)).reshape(shape)


def _upgrade_v6(foreign: dict[str, torch.Tensor], n_layer: int) -> None:
    """Older RWKV-6 GGUFs store the five lerps separately: fuse them as current files do."""
    for i in range(n_layer):
        names = [f"blk.{i}.time_mix_lerp_{x}.weight" for x in "wkvrg"]
        if all(n in foreign for n in names):
            parts = [foreign.pop(n).reshape(-1) for n in names]
            foreign[f"blk.{i}.time_mix_lerp_fused.weight"] = torch.stack(parts).reshape(5, 1, 1, -1)


def _config(f: GGUFFile, version: str, foreign: Mapping[str, torch.Tensor]) -> RWKVConfig:
    """The config from the metadata llama.cpp reads; the tensors are checked against it afterwards."""
    a = ARCHITECTURES[version]
    shift = _int(f, f"{a}.token_shift_count", TOKEN_SHIFT_COUNT)
    if shift != TOKEN_SHIFT_COUNT:
        raise UnsupportedVersionError(
            f"{f.path}: token_shift_count {shift} (RWKV language models have 2); this is a hybrid model "
            "rwkvkit does not run"
        )
    emb = foreign.get("token_embd.weight")
    if emb is None or emb.dim() != 2:
        raise CheckpointError(f"{f.path} has no token_embd.weight matrix; the file is incomplete or damaged")
    get = lambda key: _int(f, f"{a}.{key}")  # noqa: E731
    blocks = keymap.count_layers(foreign, [p for _, p, *_ in _SKELETON if "{i}" in p])
    if get("block_count") != blocks:
        raise CheckpointError(
            f"{f.path}: its metadata says {get('block_count')} blocks but its tensors hold {blocks}; "
            "the file is damaged"
        )
    sizes = dict(
        version=version, n_layer=get("block_count"), n_embd=get("embedding_length"),
        vocab_size=emb.shape[0], head_size=get("wkv.head_size"), dim_ffn=get("feed_forward_length"),
    )  # fmt: skip
    if version == "6":
        sizes |= dict(lora_mix=get("time_mix_extra_dim"), lora_decay=get("time_decay_extra_dim"))
    else:
        if f"{a}.attention.gate_lora_rank" not in f.kv or "blk.0.time_mix_g1.weight" not in foreign:
            raise UnsupportedVersionError(
                f"{f.path}: an RWKV-7 without the output gate, which rwkvkit does not run"
            )
        sizes |= dict(
            lora_w=get("attention.decay_lora_rank"), lora_a=get("attention.iclr_lora_rank"),
            lora_v=get("attention.value_residual_mix_lora_rank"), lora_g=get("attention.gate_lora_rank"),
        )  # fmt: skip
    try:
        return RWKVConfig(**sizes)
    except ConfigError as e:
        raise CheckpointError(
            f"{f.path}: its metadata describes no valid RWKV-{version} model ({e})"
        ) from None


def read(path: str | Path, verify: bool = True) -> tuple[dict[str, torch.Tensor], RWKVConfig, dict]:
    """Read an RWKV-6/7 GGUF into rwkvkit's names.

    Returns ``(state_dict, config, info)``: f32, f16 and bf16 tensors keep their type and bits
    (memory-mapped, copy-on-write), quantised ones are dequantised to float32; ``info`` has
    ``stored_parameters``, ``stored_types`` (ggml type names, lower case), ``main_type`` (the type
    of most stored values), ``architecture`` and ``verified`` (a
    :class:`~rwkvkit.utils.integrity.Verified`).

    Raises:
        UnsupportedVersionError: another architecture (``general.architecture`` is not rwkv6/rwkv7).
        CheckpointError: a truncated or corrupt file, a tensor type that cannot be dequantised,
            missing or misshapen tensors, metadata that disagrees with the tensors, checksums that
            do not match.
    """
    f = parse(path)
    path = f.path
    version = architecture(f)
    verified = _check_checksums(f) if verify else Verified(path, "", 0, 0, 0.0)
    foreign = {t.name: _dequantize(f, t) for t in f.tensors}
    counts: dict[str, int] = {}
    for t in f.tensors:
        counts[t.type.lower()] = counts.get(t.type.lower(), 0) + math.prod(t.ne)
    config = _config(f, version, foreign)
    if version == "6":
        _upgrade_v6(foreign, config.n_layer)
        rescale = _int(f, "rwkv6.rescale_every_n_layers", 0)
        if rescale > 0:  # the converter divided these by 2^(i // n); llama.cpp halves the residual instead
            for i in range(config.n_layer):
                for name in (f"blk.{i}.time_mix_output.weight", f"blk.{i}.channel_mix_value.weight"):
                    if name in foreign:
                        foreign[name] = foreign[name] * 2.0 ** (i // rescale)
    source = f"{path} (GGUF, llama.cpp's {ARCHITECTURES[version]})"
    sd = keymap.to_native(foreign, table(config), config.n_layer, source)
    if version == "7" and tuple(sd["blocks.0.att.v1"].shape) != (config.n_embd, config.lora_v):
        for k in ("blocks.0.att.v0", "blocks.0.att.v1", "blocks.0.att.v2"):
            del sd[k]  # a stand-in of another rank (llama.cpp's converter copies a0/a1/a2 there)
    sd = blinkdl.to_native(sd, version, config)  # fills an absent layer-0 value LoRA with zeros
    try:
        blinkdl.check_state_dict(sd, config, source)
    except CheckpointError as e:
        raise CheckpointError(f"{e}; the tensors disagree with the file's metadata") from None
    info = {
        "architecture": ARCHITECTURES[version],
        "stored_parameters": sum(counts.values()),
        "stored_types": sorted(counts),
        "main_type": max(counts, key=counts.get),
        "verified": verified,
    }
    return sd, config, info


def verify(path: str | Path) -> Verified:
    """Check a GGUF's tensors and model metadata against its ``rwkvkit.checksums`` (``method`` is
    empty for a file written by another tool); raises CheckpointError if they differ."""
    return _check_checksums(parse(path))


def read_vocab(path: str | Path) -> dict[int, bytes] | None:
    """The World vocabulary a GGUF carries, ``{id: token bytes}`` (its normal tokens; ``<s>`` and the
    padding are left out), or None when it has none (or one that is not llama.cpp's "rwkv" type)."""
    f = parse(path)
    if f.string("tokenizer.ggml.model") != "rwkv":
        return None
    tokens = f.kv.get("tokenizer.ggml.tokens")
    if tokens is None or not isinstance(tokens.value, list):
        raise CheckpointError(
            f"{f.path}: an rwkv tokenizer without tokenizer.ggml.tokens; the file is damaged"
        )
    types = f.kv.get("tokenizer.ggml.token_type")
    kinds = types.value if types is not None else [1] * len(tokens.value)
    try:
        return {i: unescape_token(t) for i, (t, kind) in enumerate(zip(tokens.value, kinds)) if kind == 1}
    except ValueError:
        raise CheckpointError(f"{f.path}: a token of its vocabulary has a malformed \\x escape") from None


def read_tokenizer(path: str | Path) -> WorldTokenizer | None:
    """A :class:`~rwkvkit.tokenizer.WorldTokenizer` built from the vocabulary a GGUF carries, or None."""
    vocab = read_vocab(path)
    return None if vocab is None else WorldTokenizer(vocab, name=Path(path).stem)


__all__ = [
    "ARCHITECTURES", "CHECKSUM_KEY", "DTYPE_CHOICES", "TABLE_V6", "table_v7", "table", "hparams",
    "check_supported", "resolve_dtype", "tensor_type", "token_list", "unescape_token", "to_gguf_tensors",
    "write", "is_gguf", "parse", "GGUFFile", "architecture", "read", "verify", "read_vocab", "read_tokenizer",
]  # fmt: skip
