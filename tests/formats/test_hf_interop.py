"""HF RWKV-4 directories interoperate with transformers' ``RwkvForCausalLM`` in both directions.

rwkvkit writes a directory that ``from_pretrained`` loads with the same bits; a
``save_pretrained`` directory (single file, sharded, bf16, tied head, or the older
``pytorch_model.bin``) reads back with the same bits. (The logit comparison against transformers
lives in ``tests/models/test_parity_transformers.py``.)
"""

from __future__ import annotations

import json

import pytest
import torch

import rwkvkit
from rwkvkit.formats import blinkdl, hf_transformers, read, save
from rwkvkit.formats.keymap import to_foreign
from rwkvkit.models.rwkv.config import RWKVConfig

transformers = pytest.importorskip(
    "transformers", reason="transformers is a dev dependency (the RWKV-4 oracle)"
)

CFG = RWKVConfig(version="4", n_layer=2, n_embd=32, vocab_size=97, dim_ffn=96)


def _hf_model(**overrides) -> transformers.RwkvForCausalLM:
    kw = dict(vocab_size=97, hidden_size=32, num_hidden_layers=2, intermediate_size=96, rescale_every=0)
    torch.manual_seed(0)
    return transformers.RwkvForCausalLM(transformers.RwkvConfig(**(kw | overrides)))


def _as_hf(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return to_foreign(sd, hf_transformers.TABLE, CFG.n_layer, "transformers")


def _bitwise(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return set(a) == set(b) and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


def test_written_directory_loads_in_transformers(tmp_path):
    g = torch.Generator().manual_seed(0)
    sd = {k: torch.randn(s, generator=g) for k, s in blinkdl.expected_shapes(CFG).items()}
    save(sd, tmp_path / "hf", "hf")
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert cfg["model_type"] == "rwkv" and cfg["architectures"] == ["RwkvForCausalLM"]
    assert cfg["rescale_every"] == 0 and cfg["tie_word_embeddings"] is False
    model = transformers.RwkvForCausalLM.from_pretrained(tmp_path / "hf")
    c = model.config
    assert (c.hidden_size, c.num_hidden_layers, c.vocab_size, c.intermediate_size) == (32, 2, 97, 96)
    assert _bitwise(model.state_dict(), _as_hf(sd))


def test_save_pretrained_loads_with_the_same_bits(tmp_path):
    model = _hf_model()
    model.save_pretrained(tmp_path / "hf")
    ours = rwkvkit.load(tmp_path / "hf")
    assert ours.config == CFG
    assert _bitwise(_as_hf(ours.state_dict()), model.state_dict())


def test_sharded_save_pretrained(tmp_path):
    model = _hf_model()
    model.save_pretrained(tmp_path / "hf", max_shard_size="20KB")
    assert (tmp_path / "hf" / "model.safetensors.index.json").is_file()
    ckpt = read(tmp_path / "hf")
    assert len(ckpt.files) > 2
    assert _bitwise(_as_hf(ckpt.state_dict), model.state_dict())


def test_bf16_save_pretrained_loads_to_fp32(tmp_path):
    model = _hf_model().to(torch.bfloat16)
    model.save_pretrained(tmp_path / "hf")
    assert read(tmp_path / "hf").stored_dtypes == ["bfloat16"]
    ours = rwkvkit.load(tmp_path / "hf", dtype="fp32")
    assert ours.dtype == torch.float32
    assert _bitwise(_as_hf(ours.state_dict()), {k: v.float() for k, v in model.state_dict().items()})


def test_tied_head_is_read_as_a_copy_of_the_embedding(tmp_path):
    model = _hf_model(tie_word_embeddings=True)
    model.save_pretrained(tmp_path / "hf")
    ckpt = read(tmp_path / "hf")
    emb, head = ckpt.state_dict["emb.weight"], ckpt.state_dict["head.weight"]
    assert torch.equal(emb, head) and emb.data_ptr() != head.data_ptr()


@pytest.mark.parametrize("sharded", [False, True])
def test_pytorch_model_bin(sharded, tmp_path):
    """Older transformers wrote ``torch.save(state_dict)`` as ``pytorch_model.bin`` (and shard indexes)."""
    model = _hf_model()
    out = tmp_path / "hf"
    out.mkdir()
    model.config.save_pretrained(out)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    if sharded:
        keys = sorted(sd)
        halves = {
            "pytorch_model-00001-of-00002.bin": keys[::2],
            "pytorch_model-00002-of-00002.bin": keys[1::2],
        }
        for name, ks in halves.items():
            torch.save({k: sd[k] for k in ks}, out / name)
        weight_map = {k: name for name, ks in halves.items() for k in ks}
        (out / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    else:
        torch.save(sd, out / "pytorch_model.bin")
    assert _bitwise(_as_hf(read(out).state_dict), sd)
