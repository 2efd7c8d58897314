"""Bad directories, files and options: each is one CheckpointError line that names the problem."""

from __future__ import annotations

import json

import pytest
import torch

import rwkvkit
from rwkvkit.cli.main import main
from rwkvkit.errors import CheckpointError, UnsupportedVersionError
from rwkvkit.formats import blinkdl, read, save
from rwkvkit.models.rwkv.config import RWKVConfig

V7 = RWKVConfig(version="7", n_layer=2, n_embd=32, vocab_size=97, head_size=16,
                lora_w=8, lora_a=4, lora_v=4, lora_g=8)  # fmt: skip


def _sd(config: RWKVConfig = V7) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {k: torch.randn(s, generator=g) for k, s in blinkdl.expected_shapes(config).items()}


@pytest.fixture()
def hf_dir(tmp_path):
    return save(_sd(), tmp_path / "hf", "hf")


def _err(path, kind: type[Exception] = CheckpointError) -> str:
    with pytest.raises(kind) as info:
        rwkvkit.load(path)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def _edit_config(path, **changes) -> None:
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(changes)
    (path / "config.json").write_text(json.dumps(cfg))


def test_directory_without_config(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    msg = _err(tmp_path)
    assert "without config.json" in msg and "notes.txt" in msg


def test_config_that_is_not_json(hf_dir):
    (hf_dir / "config.json").write_text("{not json")
    assert "not valid JSON" in _err(hf_dir)


def test_unknown_model_type(hf_dir):
    _edit_config(hf_dir, model_type="llama")
    assert "model_type 'llama'" in _err(hf_dir, UnsupportedVersionError)


def test_config_that_disagrees_with_the_tensors(hf_dir):
    _edit_config(hf_dir, hidden_size=48)
    msg = _err(hf_dir)
    assert "hidden_size = 48" in msg and "does not belong" in msg


def test_hybrid_fla_model_is_refused(hf_dir):
    _edit_config(hf_dir, attn={"layers": [1], "num_heads": 2})
    assert "attn" in _err(hf_dir, UnsupportedVersionError)


def test_model_type_that_does_not_match_the_weights(hf_dir):
    _edit_config(hf_dir, model_type="rwkv")  # transformers RWKV-4, but fla RWKV-7 keys
    assert "match none of its layouts" in _err(hf_dir)


def test_config_without_weights(hf_dir):
    (hf_dir / "model.safetensors").unlink()
    assert "no weights" in _err(hf_dir)


def test_missing_shard(hf_dir):
    (hf_dir / "model.safetensors").rename(hf_dir / "model-00001-of-00002.safetensors")
    weight_map = {"model.embeddings.weight": "model-00002-of-00002.safetensors"}
    (hf_dir / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    assert "missing" in _err(hf_dir)


def test_missing_tensor_in_hf_dir(hf_dir):
    from safetensors.torch import load_file, save_file

    sd = load_file(str(hf_dir / "model.safetensors"))
    del sd["model.layers.1.attn.k_a"]
    save_file(sd, str(hf_dir / "model.safetensors"))
    assert "missing keys [model.layers.1.attn.k_a]" in _err(hf_dir)


def test_truncated_safetensors(tmp_path):
    path = save(_sd(), tmp_path / "m.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert "truncated or corrupt" in _err(path)


def test_safetensors_with_a_broken_header(tmp_path):
    (tmp_path / "m.safetensors").write_bytes(b"\xff" * 64)
    assert "not a safetensors file" in _err(tmp_path / "m.safetensors")


def test_rwkvkit_metadata_that_disagrees_with_the_tensors(tmp_path):
    from safetensors.torch import save_file

    meta = {
        "format": "pt",
        "rwkvkit_format": "1",
        "rwkvkit_config": json.dumps(V7.replace(n_layer=3).to_dict()),
    }
    save_file(_sd(), str(tmp_path / "m.safetensors"), metadata=meta)
    msg = _err(tmp_path / "m.safetensors")
    assert "disagrees with its tensors" in msg and "n_layer 3 vs 2" in msg


def test_newer_rwkvkit_format_is_refused(tmp_path):
    from safetensors.torch import save_file

    meta = {"rwkvkit_format": "2", "rwkvkit_config": json.dumps(V7.to_dict())}
    save_file(_sd(), str(tmp_path / "m.safetensors"), metadata=meta)
    assert "upgrade rwkvkit" in _err(tmp_path / "m.safetensors")


def test_rwkv5_0_has_no_hf_layout(tmp_path):
    cfg = RWKVConfig(version="5.0", n_layer=2, n_embd=32, vocab_size=97, head_size=16)
    with pytest.raises(UnsupportedVersionError, match="RWKV-5.0 has no HF layout"):
        save(_sd(cfg), tmp_path / "hf", "hf")
    assert not (tmp_path / "hf").exists()


def test_rwkv5_2_with_log_bonus_cannot_be_written_to_the_hub_layout(tmp_path):
    cfg = RWKVConfig(version="5.2", n_layer=2, n_embd=32, vocab_size=97, head_size=16, v5_log_bonus=True)
    with pytest.raises(UnsupportedVersionError, match="time_first"):
        save(_sd(cfg), tmp_path / "hf", "hf")


def test_write_errors(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="is a file"):
        save(_sd(), tmp_path / "file", "hf")
    with pytest.raises(CheckpointError, match="is a directory"):
        save(_sd(), tmp_path, "rwkvkit")
    with pytest.raises(CheckpointError, match="unknown format 'onnx'"):
        save(_sd(), tmp_path / "m.onnx", "onnx")
    with pytest.raises(CheckpointError, match="unknown dtype"):
        save(_sd(), tmp_path / "m.pth", "blinkdl", dtype="fp8")
    bad = _sd()
    del bad["blocks.1.att.r_k"]
    with pytest.raises(CheckpointError, match=r"missing keys \[blocks.1.att.r_k\]"):
        save(bad, tmp_path / "m.pth", "blinkdl")


def test_cli_prints_one_line_and_exits_2(hf_dir, tmp_path, capsys):
    _edit_config(hf_dir, num_hidden_layers=5)
    assert main(["convert", str(hf_dir), str(tmp_path / "x.pth"), "--to", "blinkdl"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "num_hidden_layers = 5" in err[0]
    assert not (tmp_path / "x.pth").exists()
    assert main(["info", str(tmp_path / "nothing")]) == 2
    assert "not found" in capsys.readouterr().err


def test_read_describes_without_a_model(hf_dir):
    ckpt = read(hf_dir)
    assert ckpt.description == "HF directory, fla RWKV7ForCausalLM (RWKV-7)"
    assert "flash-linear-attention" in ckpt.source
