"""Corruption is detected: checksums in rwkvkit's files, CRC32 in torch.save zips, pickled code named.

Each test damages a file the way disks and copies do (zeroed or flipped bytes) and expects one
CheckpointError / StateError line that says the file is corrupt, never a load that goes on with
changed weights.
"""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch

import rwkvkit
from rwkvkit.cli.main import main
from rwkvkit.errors import CheckpointError, StateError
from rwkvkit.formats import blinkdl, read, save, verify
from rwkvkit.models.rwkv.config import RWKVConfig
from rwkvkit.state import State
from rwkvkit.training import checkpoint as ckpt
from rwkvkit.utils.integrity import META_KEY

V7 = RWKVConfig(version="7", n_layer=2, n_embd=64, vocab_size=97, head_size=32,
                lora_w=8, lora_a=8, lora_v=8, lora_g=8)  # fmt: skip


def _sd() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {k: torch.randn(s, generator=g) * 0.1 for k, s in blinkdl.expected_shapes(V7).items()}


def _zero_middle(path, n: int = 64) -> None:
    """The issue's damage: ``n`` zeroed bytes in the middle of the file."""
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.seek(size // 2)
        f.write(b"\0" * n)


def _logits(model) -> torch.Tensor:
    return model(torch.tensor([[1, 2, 3, 4, 5]]))[0]


def test_rwkvkit_file_with_zeroed_bytes_is_refused(tmp_path):
    path = save(_sd(), tmp_path / "m.safetensors")
    assert META_KEY in blinkdl_metadata(path)
    rwkvkit.load(path)  # intact: verifies and loads
    _zero_middle(path)
    with pytest.raises(CheckpointError, match=r"is corrupt: blocks\.\S+ does not match the checksums") as e:
        rwkvkit.load(path)
    assert "\n" not in str(e.value) and "copy or download it again" in str(e.value)


def blinkdl_metadata(path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return f.metadata()


def test_unverified_load_is_possible_and_shows_what_verification_prevents(tmp_path):
    path = save(_sd(), tmp_path / "m.safetensors")
    before = _logits(rwkvkit.load(path))
    _zero_middle(path)
    after = _logits(rwkvkit.load(path, verify=False))  # the user's explicit choice
    assert not torch.equal(before, after)  # the damage changes the model: that is what load refuses


def test_an_edited_header_is_caught(tmp_path):
    """A checksum covers the dtype, the shape and the other metadata, not only the bytes."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = save(_sd(), tmp_path / "m.safetensors")
    with safe_open(str(path), "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    edited = dict(meta, rwkvkit_version="9.9.9")
    save_file(tensors, str(tmp_path / "meta.safetensors"), metadata=edited)
    with pytest.raises(CheckpointError, match=r"the metadata \(config\) does not match"):
        rwkvkit.load(tmp_path / "meta.safetensors")
    key = "blocks.0.att.r_k"  # [H, N] = [2, 32]: the same bytes read as [32, 2]
    tensors[key] = tensors[key].reshape(32, 2)
    save_file(tensors, str(tmp_path / "shape.safetensors"), metadata=meta)
    with pytest.raises(CheckpointError, match=r"blocks\.0\.att\.r_k does not match"):
        read(tmp_path / "shape.safetensors")


def test_files_without_checksums_still_load(tmp_path):
    from safetensors.torch import save_file

    save_file(_sd(), str(tmp_path / "plain.safetensors"), metadata={"format": "pt"})
    rwkvkit.load(tmp_path / "plain.safetensors")
    (result,) = verify(tmp_path / "plain.safetensors")
    assert result.method == "" and "no checksums recorded" in result.describe()


def test_official_pth_crc32_is_checked(tmp_path):
    path = save(_sd(), tmp_path / "m.pth", "blinkdl")
    (result,) = verify(path)
    assert result.method == "crc32" and result.items >= len(_sd())  # one record per tensor, and more
    _zero_middle(path)
    with pytest.raises(CheckpointError, match=r"zip record '\S+' fails its CRC32 check"):
        rwkvkit.load(path)
    # torch.load itself does not notice: the check is rwkvkit's
    assert isinstance(torch.load(path, weights_only=True), dict)


def test_hf_directory_written_by_rwkvkit_is_verified(tmp_path):
    d = save(_sd(), tmp_path / "hf", "hf")
    rwkvkit.load(d)
    _zero_middle(d / "model.safetensors")
    with pytest.raises(CheckpointError, match="is corrupt"):
        rwkvkit.load(d)


def test_state_file_corruption_is_a_state_error(tmp_path):
    state = State.initial(V7, batch_size=1)
    state.tensors["wkv"].normal_()
    state.save(tmp_path / "s.safetensors")
    assert torch.equal(State.load(tmp_path / "s.safetensors")["wkv"], state["wkv"])
    _zero_middle(tmp_path / "s.safetensors")
    with pytest.raises(StateError, match="is corrupt"):
        State.load(tmp_path / "s.safetensors")


def test_training_checkpoint_crc32_is_checked(tmp_path):
    path = ckpt.save_training_checkpoint(
        tmp_path / "last.pt", {"model": {"w": torch.randn(256, 256)}, "step": 3}
    )
    assert ckpt.load_training_checkpoint(path)["step"] == 3
    _zero_middle(path)
    with pytest.raises(CheckpointError, match="CRC32"):
        ckpt.load_training_checkpoint(path)


def test_info_verify_reports_and_refuses(tmp_path, capsys):
    path = save(_sd(), tmp_path / "m.safetensors")
    assert main(["info", str(path), "--verify"]) == 0
    out = capsys.readouterr().out
    assert f"integrity:   m.safetensors: OK, xxh3-128 of {len(_sd())} tensors" in out
    pth = save(_sd(), tmp_path / "m.pth", "blinkdl")
    assert main(["info", str(pth), "--verify"]) == 0
    assert "CRC32 of" in capsys.readouterr().out
    _zero_middle(path)
    assert main(["info", str(path), "--verify"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "is corrupt" in err and err.count("\n") == 1


def test_the_shipped_default_model_carries_checksums():
    (result,) = verify(rwkvkit.formats.resolve("default"))
    assert result.method == "xxh3_128" and result.items > 100


# ---- pickled code: refused, named, and never run ------------------------------------------------


class RunsACommand:
    """What a malicious checkpoint holds: unpickling it would run a shell command."""

    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickled_command_is_refused_with_the_right_message(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"emb.weight": torch.zeros(2, 2), "x": RunsACommand(marker)}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError) as e:
        rwkvkit.load(tmp_path / "evil.pth")
    msg = str(e.value)
    assert "contains pickled code or objects" in msg and "system" in msg  # names what it would call
    assert "download" not in msg and "corrupt" not in msg  # the file is intact; re-downloading won't help
    assert not marker.exists()


def test_legacy_pickle_with_a_command_is_refused(tmp_path):
    marker = tmp_path / "ran"
    (tmp_path / "evil.pth").write_bytes(pickle.dumps(RunsACommand(marker), protocol=2))
    with pytest.raises(CheckpointError, match="contains pickled code or objects"):
        rwkvkit.load(tmp_path / "evil.pth")
    assert not marker.exists()


def test_pickled_globals_lists_what_a_pickle_would_call(tmp_path):
    torch.save({"a": torch.zeros(2)}, tmp_path / "ok.pth")
    assert blinkdl.pickled_globals(tmp_path / "ok.pth", foreign_only=True) == []
    assert "torch._utils._rebuild_tensor_v2" in blinkdl.pickled_globals(tmp_path / "ok.pth")
    torch.save({"a": RunsACommand(tmp_path / "x")}, tmp_path / "bad.pth")
    assert any(
        g.endswith(".system") for g in blinkdl.pickled_globals(tmp_path / "bad.pth", foreign_only=True)
    )


def test_checksum_record_itself_damaged(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = save(_sd(), tmp_path / "m.safetensors")
    with safe_open(str(path), "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    record = json.loads(meta[META_KEY])
    record["tensors"].pop("emb.weight")
    save_file(tensors, str(tmp_path / "a.safetensors"), metadata=dict(meta, **{META_KEY: json.dumps(record)}))
    with pytest.raises(CheckpointError, match="emb.weight does not match"):
        rwkvkit.load(tmp_path / "a.safetensors")
    save_file(tensors, str(tmp_path / "b.safetensors"), metadata=dict(meta, **{META_KEY: "{not json"}))
    with pytest.raises(CheckpointError, match="checksum record is damaged"):
        rwkvkit.load(tmp_path / "b.safetensors")
