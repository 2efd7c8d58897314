"""GGUF (llama.cpp's file) for RWKV-6 and RWKV-7: round trips, quantisation, llama.cpp's layout, errors.

The layout is checked against facts transcribed here from llama.cpp itself (the version vendored by
llama-cpp-python 0.3.36), independently of :mod:`rwkvkit.formats.gguf`: the tensor names and ggml
shapes of ``src/models/rwkv{6,7}.cpp`` (``load_arch_tensors``), the metadata keys of
``src/llama-arch.cpp`` and the vocabulary of ``conversion/base.py`` (``_set_vocab_rwkv_world``).
The files are read back with gguf-py's own ``GGUFReader`` for those checks, so a rename on either
side fails here. llama.cpp itself is not run (the benchmark does that).
"""

from __future__ import annotations

import ast
import os
import struct

import gguf
import numpy as np
import pytest
import torch

import rwkvkit
from rwkvkit.cli.main import main
from rwkvkit.errors import CheckpointError, ConfigError, TokenizerError, UnsupportedVersionError
from rwkvkit.formats import blinkdl, read, save
from rwkvkit.formats import gguf as fmt
from rwkvkit.models.rwkv.config import RWKVConfig
from rwkvkit.models.rwkv.init import random_model
from rwkvkit.tokenizer import read_vocab, world_vocab_path
from rwkvkit.utils.testing import rel_rms

CONFIGS = {
    "6": RWKVConfig(version="6", n_layer=2, n_embd=64, vocab_size=97, head_size=16, lora_mix=4, lora_decay=8),
    "7": RWKVConfig(version="7", n_layer=2, n_embd=64, vocab_size=97, head_size=16,
                    lora_w=8, lora_a=4, lora_v=4, lora_g=8),
}  # fmt: skip
TOKENS = torch.randint(0, 97, (2, 9), generator=torch.Generator().manual_seed(5))


@pytest.fixture(scope="module")
def models():
    return {v: random_model(cfg, seed=1) for v, cfg in CONFIGS.items()}


def _logits(model, tokens=TOKENS):
    with torch.no_grad():
        return model(tokens)[0]


# ---- round trips -----------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["6", "7"])
def test_f32_round_trip_is_bitwise_and_gives_the_same_logits(version, models, tmp_path):
    model = models[version]
    path = save(model, tmp_path / "m.gguf", "gguf", dtype="f32")
    ckpt = read(path)
    assert ckpt.format == "gguf" and ckpt.config == CONFIGS[version] and ckpt.stored_dtypes == ["f32"]
    original = model.state_dict()
    assert set(ckpt.state_dict) == set(original)
    for k, v in original.items():
        got = ckpt.state_dict[k]
        assert got.dtype == v.dtype and got.shape == v.shape and torch.equal(got, v), k
    assert torch.equal(_logits(rwkvkit.load(path)), _logits(model))


def test_rwkv7_layer0_value_lora_of_another_rank_reads_back_as_zeros(tmp_path):
    """llama.cpp wants layer 0's unused value LoRA with the in-context-rate rank: with ranks that
    differ, rwkvkit writes zeros there and reads zeros back (as fla does); the logits do not change."""
    cfg = CONFIGS["7"].replace(lora_v=8)
    model = random_model(cfg, seed=2)
    ckpt = read(save(model, tmp_path / "m.gguf", "gguf"))
    assert ckpt.config == cfg
    unused = {"blocks.0.att.v0", "blocks.0.att.v1", "blocks.0.att.v2"}
    for k, v in model.state_dict().items():
        assert torch.equal(ckpt.state_dict[k], torch.zeros_like(v) if k in unused else v), k
    assert torch.equal(_logits(rwkvkit.load(tmp_path / "m.gguf")), _logits(model))


@pytest.mark.parametrize("version", ["6", "7"])
def test_bf16_is_the_bf16_rounding(version, models, tmp_path):
    """The large matrices are bf16 (round to nearest even, bit for bit what gguf-py's BF16 gives);
    everything else stays f32 and bitwise."""
    sd = models[version].state_dict()
    ckpt = read(save(sd, tmp_path / "m.gguf", "gguf", dtype="bf16"))
    assert ckpt.stored_dtypes == ["bf16", "f32"]
    big = {k for k, v in ckpt.state_dict.items() if v.dtype == torch.bfloat16}
    assert "emb.weight" in big and "head.weight" in big and "blocks.1.ffn.value.weight" in big
    assert not any(".ln" in k or "lora" in k or k.endswith(("w1", "w2", "x_r", "time_maa_x")) for k in big)
    for k, v in sd.items():
        want = v.to(torch.bfloat16) if k in big else v
        assert torch.equal(ckpt.state_dict[k], want), k
    emb = sd["emb.weight"].numpy()
    ggml_bf16 = gguf.quants.quantize(emb, gguf.GGMLQuantizationType.BF16).view(np.int16)
    assert np.array_equal(ckpt.state_dict["emb.weight"].view(torch.int16).numpy(), ggml_bf16)


def test_default_dtype_keeps_the_checkpoint_precision(models, tmp_path):
    sd = {k: v.to(torch.bfloat16) for k, v in models["7"].state_dict().items()}
    ckpt = read(save(sd, tmp_path / "m.gguf", "gguf"))  # dtype=None
    assert ckpt.stored_dtype == "bf16"
    assert all(torch.equal(ckpt.state_dict[k].to(torch.bfloat16), v) for k, v in sd.items())
    assert read(save(models["7"], tmp_path / "f.gguf", "gguf")).stored_dtypes == ["f32"]


# Worst error of any element relative to its block's largest magnitude, over the quantised matrices
# of both models (measured: q8_0 0.00430, q4_0 0.1251). The bounds: q8_0 rounds x/d with d =
# amax/127 (error <= d/2) and stores d as f16 (up to 127 d 2^-11 more): 0.562/127 = 0.00443; q4_0
# has d = max/-8 and clamps the opposite extreme to 7 (error <= |d|), d again as f16: ~1.004/8.
BLOCK_ERROR = {"q8_0": 0.57 / 127, "q4_0": 1.01 / 8}
# relative RMS error of a dequantised matrix, the largest (measured: q8_0 0.0055, q4_0 0.089)
REL_RMS = {"q8_0": 0.007, "q4_0": 0.11}
# relative RMS error of the logits of the loaded random model (measured: RWKV-6 / RWKV-7 q8_0 0.018 /
# 0.012, q4_0 0.24 / 0.18; the trained default model: see the README)
LOGITS_REL_RMS = {"q8_0": 0.03, "q4_0": 0.35}


@pytest.mark.parametrize("version", ["6", "7"])
@pytest.mark.parametrize("dtype", ["q8_0", "q4_0"])
def test_quantised_blocks_are_gguf_quants_and_within_their_error(dtype, version, models, tmp_path):
    model = models[version]
    path = save(model, tmp_path / "m.gguf", "gguf", dtype=dtype)
    source = fmt.to_gguf_tensors(model.state_dict(), CONFIGS[version])  # llama.cpp's names and shapes
    reader = gguf.GGUFReader(path)
    quantised = [t for t in reader.tensors if t.tensor_type.name.lower() in BLOCK_ERROR]
    assert {t.name for t in quantised} >= {"token_embd.weight", "output.weight", "blk.1.time_mix_key.weight"}
    for t in reader.tensors:
        x = source[t.name].float().numpy()
        if t not in quantised:
            assert t.tensor_type.name == "F32" and np.array_equal(t.data.reshape(x.shape), x), t.name
            continue
        # the blocks in the file are exactly what gguf-py's quantiser (llama.cpp's converter) makes
        assert np.array_equal(t.data, gguf.quants.quantize(x, t.tensor_type)), t.name
        deq = gguf.quants.dequantize(t.data, t.tensor_type)
        blocks, err = x.reshape(-1, 32), np.abs(deq - x).reshape(-1, 32)
        kind = t.tensor_type.name.lower()
        assert (err <= BLOCK_ERROR[kind] * np.abs(blocks).max(axis=1, keepdims=True)).all(), t.name
        assert rel_rms(torch.from_numpy(x), torch.from_numpy(deq)) <= REL_RMS[kind], t.name
    # at q4_0 the head is q8_0 (llama-quantize's q6_K cannot be made by gguf-py)
    head = next(t for t in reader.tensors if t.name == "output.weight")
    assert head.tensor_type.name == "Q8_0"
    assert rel_rms(_logits(model), _logits(rwkvkit.load(path))) <= LOGITS_REL_RMS[dtype]


# ---- llama.cpp's layout ----------------------------------------------------------------------------


def _llama_cpp_tensors(c: RWKVConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor llama.cpp's ``load_arch_tensors`` creates for the model, with its ggml ``ne``
    (src/models/rwkv6.cpp, rwkv7.cpp; optional tensors that rwkvkit does not write left out)."""
    C, V, F, N = c.n_embd, c.vocab_size, c.dim_ffn, c.head_size
    out = {
        "token_embd.weight": (C, V),
        "token_embd_norm.weight": (C,), "token_embd_norm.bias": (C,),
        "output_norm.weight": (C,), "output_norm.bias": (C,),
        "output.weight": (C, V),
    }  # fmt: skip
    for i in range(c.n_layer):
        b = f"blk.{i}."
        out |= {
            b + "attn_norm.weight": (C,), b + "attn_norm.bias": (C,),
            b + "attn_norm_2.weight": (C,), b + "attn_norm_2.bias": (C,),
            b + "time_mix_key.weight": (C, C), b + "time_mix_value.weight": (C, C),
            b + "time_mix_receptance.weight": (C, C),
            b + "time_mix_ln.weight": (C,), b + "time_mix_ln.bias": (C,),
            b + "time_mix_output.weight": (C, C),
            b + "channel_mix_lerp_k.weight": (C, 1, 1),
            b + "channel_mix_key.weight": (C, F), b + "channel_mix_value.weight": (F, C),
        }  # fmt: skip
        if c.version == "6":
            D, Dd = c.lora_mix, c.lora_decay
            out |= {
                b + "time_mix_w1.weight": (C, D * 5), b + "time_mix_w2.weight": (D, C, 5),
                b + "time_mix_lerp_x.weight": (C, 1, 1), b + "time_mix_lerp_fused.weight": (C, 1, 1, 5),
                b + "time_mix_first.weight": (N, C // N), b + "time_mix_decay.weight": (C,),
                b + "time_mix_decay_w1.weight": (C, Dd), b + "time_mix_decay_w2.weight": (Dd, C),
                b + "time_mix_gate.weight": (C, C),
                b + "channel_mix_lerp_r.weight": (C, 1, 1),
                b + "channel_mix_receptance.weight": (C, C),
            }  # fmt: skip
        else:
            Dv = c.lora_a if i == 0 else c.lora_v  # layer 0: "actually not used"
            out |= {
                b + "time_mix_w0.weight": (C,),
                b + "time_mix_w1.weight": (C, c.lora_w), b + "time_mix_w2.weight": (c.lora_w, C),
                b + "time_mix_a0.weight": (C,),
                b + "time_mix_a1.weight": (C, c.lora_a), b + "time_mix_a2.weight": (c.lora_a, C),
                b + "time_mix_v0.weight": (C,),
                b + "time_mix_v1.weight": (C, Dv), b + "time_mix_v2.weight": (Dv, C),
                b + "time_mix_g1.weight": (C, c.lora_g), b + "time_mix_g2.weight": (c.lora_g, C),
                b + "time_mix_lerp_fused.weight": (C, 1, 1, 6),
                b + "time_mix_k_k.weight": (C,), b + "time_mix_k_a.weight": (C,),
                b + "time_mix_r_k.weight": (C,),
            }  # fmt: skip
    return out


def _llama_cpp_keys(c: RWKVConfig) -> dict[str, tuple[str, object]]:
    """The architecture keys (llama-arch.cpp names, the types llama.cpp's get_key accepts)."""
    a = {"6": "rwkv6", "7": "rwkv7"}[c.version]
    keys = {
        f"{a}.context_length": ("UINT32", 1048576),
        f"{a}.embedding_length": ("UINT32", c.n_embd),
        f"{a}.block_count": ("UINT32", c.n_layer),
        f"{a}.feed_forward_length": ("UINT32", c.dim_ffn),
        f"{a}.attention.head_count": ("UINT32", 0),
        f"{a}.attention.layer_norm_epsilon": ("FLOAT32", pytest.approx(1e-5)),
        f"{a}.wkv.head_size": ("UINT32", c.head_size),
    }
    if c.version == "6":
        keys |= {
            f"{a}.rescale_every_n_layers": ("UINT32", 0),
            f"{a}.time_mix_extra_dim": ("UINT32", c.lora_mix),
            f"{a}.time_decay_extra_dim": ("UINT32", c.lora_decay),
        }
    else:
        keys |= {
            f"{a}.attention.decay_lora_rank": ("UINT32", c.lora_w),
            f"{a}.attention.iclr_lora_rank": ("UINT32", c.lora_a),
            f"{a}.attention.value_residual_mix_lora_rank": ("UINT32", c.lora_v),
            f"{a}.attention.gate_lora_rank": ("UINT32", c.lora_g),
        }
    return keys


def _padded(ne) -> tuple[int, ...]:
    """llama_model_loader::check_tensor_dims: missing trailing dimensions count as 1."""
    return tuple(int(d) for d in ne) + (1,) * (4 - len(ne))


@pytest.mark.parametrize("version", ["6", "7"])
@pytest.mark.parametrize("dtype", ["f32", "q8_0"])
def test_the_file_has_llama_cpp_names_shapes_and_keys(version, dtype, models, tmp_path):
    cfg = CONFIGS[version].replace(lora_v=8) if version == "7" else CONFIGS[version]  # v ranks differ
    path = save(random_model(cfg, seed=3), tmp_path / "m.gguf", "gguf", dtype=dtype)
    reader = gguf.GGUFReader(path)
    arch = {"6": "rwkv6", "7": "rwkv7"}[version]
    fields = {k: f for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert fields["general.architecture"].contents() == arch
    for key, (kind, value) in _llama_cpp_keys(cfg).items():
        assert gguf.GGUFValueType(fields[key].types[0]).name == kind, key
        assert fields[key].contents() == value, key
    arch_keys = {k for k in fields if k.startswith(arch + ".")}
    # vocab_size: llama.cpp's no-vocabulary mode (tokenizer.ggml.model "none"); token_shift_count is
    # left out as the converter leaves it out (llama.cpp's default, 2)
    assert arch_keys == set(_llama_cpp_keys(cfg)) | {f"{arch}.vocab_size"}
    assert fields["tokenizer.ggml.model"].contents() == "none"
    assert fields[f"{arch}.vocab_size"].contents() == cfg.vocab_size
    assert fields["general.file_type"].contents() == {"f32": 0, "q8_0": 7}[dtype]
    want = _llama_cpp_tensors(cfg)
    got = {t.name: t for t in reader.tensors}
    assert set(got) == set(want)  # llama.cpp refuses a file with a tensor it does not create
    for name, ne in want.items():
        assert _padded(got[name].shape) == _padded(ne), name
        # the large matrices take the dtype; llama.cpp's tools keep everything else f32
        want_type = dtype.upper() if name.split(".")[-2] in LARGE else "F32"
        assert got[name].tensor_type.name == want_type, name


LARGE = {"token_embd", "output", "time_mix_key", "time_mix_value", "time_mix_receptance", "time_mix_gate",
         "time_mix_output", "channel_mix_key", "channel_mix_value", "channel_mix_receptance"}  # fmt: skip


def test_tensor_types_follow_llama_cpp_s_tools():
    assert fmt.tensor_type("output.weight", (97, 64), "Q4_0") == "Q8_0"  # llama-quantize: q6_K
    assert fmt.tensor_type("token_embd.weight", (97, 64), "Q4_0") == "Q4_0"
    assert fmt.tensor_type("blk.0.channel_mix_value.weight", (64, 100), "Q8_0") == "F16"  # 100 % 32
    assert fmt.tensor_type("blk.0.time_mix_g1.weight", (128, 64), "BF16") == "F32"
    assert fmt.tensor_type("blk.0.time_mix_ln.weight", (64,), "Q8_0") == "F32"
    assert fmt.tensor_type("blk.0.time_mix_first.weight", (4, 16), "F16") == "F32"


def test_the_world_vocabulary_is_written_as_llama_cpp_s_converter_does(tmp_path):
    cfg = RWKVConfig(version="7", n_layer=1, n_embd=32, vocab_size=65536, head_size=16,
                     lora_w=8, lora_a=4, lora_v=4, lora_g=8)  # fmt: skip
    g = torch.Generator().manual_seed(0)
    sd = {k: torch.randn(s, generator=g) for k, s in blinkdl.expected_shapes(cfg).items()}
    path = save(sd, tmp_path / "world.gguf", "gguf", dtype="q8_0")  # tokenizer="auto": World
    reader = gguf.GGUFReader(path)
    # conversion/base.py, _set_vocab_rwkv_world, re-done here from the vocabulary file's lines
    expected = ["<s>"]
    for line in world_vocab_path().read_text(encoding="utf-8").splitlines():
        parts = line.split(" ")
        token = ast.literal_eval(" ".join(parts[1:-1]))
        token = token.encode("utf-8") if isinstance(token, str) else token
        expected.append(repr(token)[2:-1])
    expected += [f"[PAD{i}]" for i in range(len(expected), 65536)]
    tokens = reader.fields["tokenizer.ggml.tokens"]
    assert reader.fields["tokenizer.ggml.model"].contents() == "rwkv"
    assert [str(bytes(tokens.parts[i]), "utf-8") for i in tokens.data] == expected
    types = reader.fields["tokenizer.ggml.token_type"].contents()
    assert types == [3] + [1] * 65529 + [5] * 6  # control <s>, normal, unused padding
    assert reader.fields["tokenizer.ggml.bos_token_id"].contents() == 0
    assert reader.fields["tokenizer.ggml.eos_token_id"].contents() == 0
    assert reader.fields["tokenizer.ggml.eot_token_id"].contents() == 261  # "\n\n"
    template = reader.fields["tokenizer.chat_template"].contents()
    assert "{{- 'User: ' + message['content']|trim + '\\n\\n' -}}" in template  # llama-chat.cpp's detection
    # read back through llama.cpp's unescaping: the World vocabulary, and its tokenizer
    assert fmt.read_vocab(path) == read_vocab(world_vocab_path())
    tok = fmt.read_tokenizer(path)
    assert tok.encode("Hello world") == [33155, 40213] and tok.eos_id == 0
    assert rwkvkit.load_tokenizer(path).encode("\n\nUser: hi") == [261, 24281, 59, 4571]
    assert read(path).config == cfg


def test_unescape_is_llama_cpp_s():
    for raw in [b"\x00\xff", b"a\\b", b"'\"", b"\t\n\r", "我们".encode(), bytes(range(256))]:
        assert fmt.unescape_token(repr(raw)[2:-1]) == raw
    assert fmt.unescape_token("\\q\\") == b"q"  # an unknown escape stands for itself; a trailing \ is dropped


# ---- files written by llama.cpp's converter --------------------------------------------------------


def _write_like_the_converter(path, config, tensors, extra=None):
    """A GGUF as llama.cpp's converter writes it: no rwkvkit checksums, f32 here."""
    w = gguf.GGUFWriter(path, fmt.ARCHITECTURES[config.version])
    for key, (kind, value) in fmt.hparams(config).items():
        (w.add_uint32 if kind == "u32" else w.add_float32)(key, value)
    for key, value in (extra or {}).items():
        w.add_uint32(key, value)  # overrides
    w.add_tokenizer_model("none")
    w.add_uint32(f"{fmt.ARCHITECTURES[config.version]}.vocab_size", config.vocab_size)
    for name, t in tensors.items():
        w.add_tensor(name, t.float().contiguous().numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_rwkv6_with_rescaling_and_separate_lerps_as_older_converters_wrote(models, tmp_path):
    """rescale_every_n_layers 1: block i's output and FFN value matrices divided by 2^i (exact for
    powers of two), undone on reading; the five lerps as separate tensors instead of fused."""
    cfg, sd = CONFIGS["6"], models["6"].state_dict()
    tensors = fmt.to_gguf_tensors(sd, cfg)
    for i in range(cfg.n_layer):
        for name in (f"blk.{i}.time_mix_output.weight", f"blk.{i}.channel_mix_value.weight"):
            tensors[name] = tensors[name] / 2**i
        fused = tensors.pop(f"blk.{i}.time_mix_lerp_fused.weight").reshape(5, -1)
        for x, row in zip("wkvrg", fused):
            tensors[f"blk.{i}.time_mix_lerp_{x}.weight"] = row
    path = _write_like_the_converter(tmp_path / "old.gguf", cfg, tensors, {"rwkv6.rescale_every_n_layers": 1})
    ckpt = read(path)
    assert all(torch.equal(ckpt.state_dict[k], v) for k, v in sd.items())
    assert fmt.verify(path).method == ""  # another tool's file: nothing to verify


def test_rwkv7_layer0_stand_in_of_the_converter(tmp_path):
    """The converter writes a copy of a0/a1/a2 as layer 0's value LoRA; of another rank, it reads as zeros."""
    cfg = CONFIGS["7"].replace(lora_v=8)
    sd = random_model(cfg, seed=4).state_dict()
    tensors = fmt.to_gguf_tensors(sd, cfg)
    for x in "012":
        tensors[f"blk.0.time_mix_v{x}.weight"] = tensors[f"blk.0.time_mix_a{x}.weight"]
    ckpt = read(_write_like_the_converter(tmp_path / "conv.gguf", cfg, tensors))
    assert (
        ckpt.state_dict["blocks.0.att.v1"].shape == (64, 8) and not ckpt.state_dict["blocks.0.att.v1"].any()
    )
    assert torch.equal(ckpt.state_dict["blocks.1.att.v1"], sd["blocks.1.att.v1"])


# ---- the library and the command line -------------------------------------------------------------


def test_convert_and_the_command_line(models, tmp_path, capsys):
    pth = save(models["7"], tmp_path / "m.pth", "blinkdl")
    rwkvkit.convert(pth, tmp_path / "api.gguf", to="gguf", dtype="q4_0")
    assert read(tmp_path / "api.gguf").stored_dtype == "q4_0"
    assert main(["convert", str(pth), str(tmp_path / "cli.gguf"), "--to", "gguf", "--dtype", "q8_0"]) == 0
    out = capsys.readouterr().out
    assert "GGUF, llama.cpp rwkv7 (q8_0)" in out and "no vocabulary" in out
    assert main(["info", str(tmp_path / "cli.gguf"), "--verify"]) == 0
    out = capsys.readouterr().out
    assert "version:     RWKV-7" in out and "xxh3-128" in out and "dtype:       q8_0" in out
    assert main(["convert", str(tmp_path / "cli.gguf"), str(tmp_path / "back.pth"), "--to", "blinkdl"]) == 0
    assert read(tmp_path / "back.pth").config == CONFIGS["7"]
    capsys.readouterr()
    assert (
        main(["convert", str(pth), str(tmp_path / "x.safetensors"), "--to", "rwkvkit", "--dtype", "q4_0"])
        == 2
    )
    assert "--dtype q4_0 is a GGUF type" in capsys.readouterr().err


# ---- errors ----------------------------------------------------------------------------------------


def _error(path, kind=CheckpointError) -> str:
    with pytest.raises(kind) as info:
        rwkvkit.load(path)
    assert "\n" not in str(info.value)
    return str(info.value)


@pytest.mark.parametrize("arch", ["llama", "arwkv7"])
def test_another_architecture(arch, tmp_path):
    w = gguf.GGUFWriter(tmp_path / "other.gguf", arch)
    w.add_uint32(f"{arch}.block_count", 1)
    w.add_tensor("token_embd.weight", np.zeros((4, 32), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    msg = _error(tmp_path / "other.gguf", UnsupportedVersionError)
    assert repr(arch) in msg and "RWKV-6 (rwkv6) and RWKV-7 (rwkv7) only" in msg
    assert ("ARWKV" in msg) == (arch == "arwkv7")


@pytest.fixture()
def small_gguf(models, tmp_path):
    return save(models["7"], tmp_path / "m.gguf", "gguf", dtype="q8_0")


@pytest.mark.parametrize("cut", [3, 30, 200, 2500, -1000, -1])
def test_truncated_file(cut, small_gguf):
    data = small_gguf.read_bytes()
    small_gguf.write_bytes(data[:cut])
    assert "truncated" in _error(small_gguf)


@pytest.mark.parametrize("version", ["4", "5.2"])
def test_rwkv4_and_5_have_no_gguf(version, tmp_path):
    cfg = RWKVConfig(version=version, n_layer=1, n_embd=32, vocab_size=97, head_size=16)
    with pytest.raises(UnsupportedVersionError, match=r"GGUF supports RWKV-6 and RWKV-7 only"):
        save(random_model(cfg), tmp_path / "m.gguf", "gguf")
    assert not (tmp_path / "m.gguf").exists()


def test_unknown_tensor_type_id(small_gguf):
    data = bytearray(small_gguf.read_bytes())
    name = b"blk.1.time_mix_key.weight"
    at = data.index(struct.pack("<Q", len(name)) + name) + 8 + len(name)  # its tensor info
    n_dims = struct.unpack_from("<I", data, at)[0]
    struct.pack_into("<I", data, at + 4 + 8 * n_dims, 200)
    small_gguf.write_bytes(bytes(data))
    assert "blk.1.time_mix_key.weight' has the ggml type id 200" in _error(small_gguf)


def test_integer_tensors_are_not_weights(models, tmp_path, monkeypatch):
    real = fmt._encode
    monkeypatch.setattr(
        fmt, "tensor_type", lambda name, shape, main: "I32" if "time_mix_key" in name else "F32"
    )
    monkeypatch.setattr(fmt, "_encode", lambda t, q: t.int().numpy() if q == "I32" else real(t, q))
    path = save(models["7"], tmp_path / "m.gguf", "gguf")
    assert "is stored as I32, not as weights" in _error(path)


def test_missing_tensor(models, tmp_path, monkeypatch):
    real = fmt.to_gguf_tensors
    monkeypatch.setattr(fmt, "to_gguf_tensors", lambda sd, c: {
        k: v for k, v in real(sd, c).items() if k != "blk.1.time_mix_gate.weight"})  # fmt: skip
    path = save(models["6"], tmp_path / "m.gguf", "gguf")
    assert "missing keys [blk.1.time_mix_gate.weight]" in _error(path)


def test_corrupt_bytes_fail_the_checksums_and_load_unverified(small_gguf):
    data = bytearray(small_gguf.read_bytes())
    data[-40] ^= 0x10  # in the last tensor's data (the head of layer 1's FFN or the output)
    small_gguf.write_bytes(bytes(data))
    assert "is corrupt" in _error(small_gguf) and "checksums" in _error(small_gguf)
    rwkvkit.load(small_gguf, verify=False)  # the damaged value is still a float


def test_a_file_without_vocabulary_gives_no_tokenizer(small_gguf):
    assert fmt.read_tokenizer(small_gguf) is None
    with pytest.raises(TokenizerError, match="carries no World vocabulary"):
        rwkvkit.load_tokenizer(small_gguf)


def test_bad_options(models, tmp_path):
    with pytest.raises(ConfigError, match="unknown GGUF dtype 'q5_k'"):
        save(models["7"], tmp_path / "m.gguf", "gguf", dtype="q5_k")
    with pytest.raises(ConfigError, match="tokenizer= is an option of the gguf format"):
        save(models["7"], tmp_path / "m.pth", "blinkdl", tokenizer="world")


# ---- against llama.cpp's own converter (opt-in) ----------------------------------------------------

LLAMA_CPP = os.environ.get("RWKVKIT_LLAMA_CPP")  # a llama.cpp source tree (its convert_hf_to_gguf.py)
# what rwkvkit writes differently, on purpose (see rwkvkit.formats.gguf): the converter's model name
# and size label, its chat template (rwkvkit writes its own in the same format), the checksums
OWN_KEYS = {"general.name", "general.size_label", "tokenizer.chat_template", fmt.CHECKSUM_KEY}


def _fields(reader) -> dict[str, object]:
    out = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key in OWN_KEYS:
            continue
        kind = gguf.GGUFValueType(field.types[0]).name
        value = tuple(field.contents()) if kind == "ARRAY" else field.contents()
        out[key] = (kind, gguf.GGUFValueType(field.types[-1]).name, value)
    return out


@pytest.mark.skipif(not LLAMA_CPP, reason="set RWKVKIT_LLAMA_CPP to a llama.cpp source tree to compare")
@pytest.mark.parametrize("version, dtype", [("6", "f32"), ("6", "q8_0"), ("7", "f32")])
def test_the_same_file_as_llama_cpp_s_converter(version, dtype, tmp_path):
    """rwkvkit's HF directory (the RWKV hub's layout for RWKV-6, fla's for RWKV-7, the layouts the
    converter reads) through ``convert_hf_to_gguf.py``, against rwkvkit's GGUF of the same weights:
    the same keys and values, tensors, types and bytes, except layer 0's unused RWKV-7 value LoRA
    (the converter copies a0/a1/a2 there). Checked with the llama.cpp of llama-cpp-python 0.3.36."""
    import shutil
    import subprocess
    import sys

    from rwkvkit.formats import hf

    lora = {"6": dict(lora_mix=32, lora_decay=64), "7": dict(lora_w=32, lora_a=32, lora_v=32, lora_g=64)}
    # the converter reads the World vocabulary from the directory, and (RWKV-6) assumes ranks 32/64
    cfg = RWKVConfig(version=version, n_layer=2, n_embd=64, vocab_size=65536, head_size=16, **lora[version])
    ckpt = read(save(random_model(cfg, seed=3), tmp_path / "m.pth", "blinkdl"))
    layout = {"6": "rwkv-hub-rwkv6", "7": "fla-rwkv7"}[version]
    hf.write(ckpt.state_dict, cfg, tmp_path / "hf", layout=layout)
    shutil.copy(world_vocab_path(), tmp_path / "hf" / "rwkv_vocab_v20230424.txt")
    theirs = tmp_path / "llama.gguf"
    subprocess.run(
        [sys.executable, "convert_hf_to_gguf.py", str(tmp_path / "hf"), "--outfile", str(theirs),
         "--outtype", dtype],
        cwd=LLAMA_CPP, check=True, capture_output=True,
    )  # fmt: skip
    ours = save(ckpt, tmp_path / "ours.gguf", "gguf", dtype=dtype)
    a, b = gguf.GGUFReader(ours), gguf.GGUFReader(theirs)
    assert _fields(a) == _fields(b)
    ta, tb = {t.name: t for t in a.tensors}, {t.name: t for t in b.tensors}
    assert set(ta) == set(tb)
    for name in ta:
        x, y = ta[name], tb[name]
        assert (x.tensor_type, list(x.shape)) == (y.tensor_type, list(y.shape)), name
        if not name.startswith("blk.0.time_mix_v"):
            assert np.array_equal(np.asarray(x.data).view(np.uint8), np.asarray(y.data).view(np.uint8)), name
    assert torch.equal(_logits(rwkvkit.load(theirs)), _logits(rwkvkit.load(ours)))
