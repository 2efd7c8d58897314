"""Loading official .pth files: old key names, version detection, and one-line errors on bad files."""

from __future__ import annotations

import pytest
import torch

import rwkvkit
from rwkvkit.errors import CheckpointError, UnsupportedVersionError
from rwkvkit.formats.blinkdl import V7_OLD_NAMES, detect_version
from rwkvkit.models.rwkv.config import RWKVConfig
from rwkvkit.models.rwkv.init import random_checkpoint

CFG = RWKVConfig(version="7", n_layer=2, n_embd=64, vocab_size=300, head_size=32,
                 lora_w=8, lora_a=8, lora_v=4, lora_g=16)  # fmt: skip


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return random_checkpoint(CFG, tmp_path_factory.mktemp("c") / "m.pth", seed=1)


def _logits(model, tokens):
    with torch.no_grad():
        return model(tokens)[0]


def test_pre_november_2024_key_names_load_to_the_same_model(ckpt, tmp_path):
    sd = torch.load(ckpt, weights_only=True)
    new_to_old = {new: old for old, new in V7_OLD_NAMES.items()}
    old = {}
    for k, v in sd.items():
        if k in (
            "blocks.0.att.v0",
            "blocks.0.att.v1",
            "blocks.0.att.v2",
        ):  # old files had no layer-0 value-residual LoRA
            continue
        parts = k.split(".", 2)
        if len(parts) == 3 and parts[2] in new_to_old:
            k = f"{parts[0]}.{parts[1]}.{new_to_old[parts[2]]}"
        old[k] = v
    assert "blocks.1.att.ww_b" in old and "blocks.1.att.x_r" not in old
    torch.save(old, tmp_path / "old.pth")
    tokens = torch.randint(0, CFG.vocab_size, (2, 17))
    m_new, m_old = rwkvkit.load(ckpt), rwkvkit.load(tmp_path / "old.pth")
    assert m_old.config == CFG
    assert torch.equal(_logits(m_new, tokens), _logits(m_old, tokens))


def test_dtype_choice(ckpt):
    m = rwkvkit.load(ckpt, dtype="bf16")
    assert m.dtype == torch.bfloat16
    logits, state = m(torch.tensor([[1, 2, 3]]))
    assert logits.dtype == torch.float32 and state["wkv"].dtype == torch.float32


def _keys(version: str, n_layer: int = 1) -> dict[str, torch.Tensor]:
    """Minimal fake official state dicts (only the keys and shapes detection looks at)."""
    z = lambda *s: torch.zeros(*s)  # noqa: E731
    sd = {"emb.weight": z(10, 8), "head.weight": z(10, 8)}
    for i in range(n_layer):
        p = f"blocks.{i}."
        if version == "4":
            sd |= {p + "att.time_first": z(8), p + "att.time_decay": z(8), p + "att.time_mix_k": z(1, 1, 8)}
        elif version in ("5.0", "5.1"):
            sd |= {p + "att.time_decay": z(2), p + "att.ln_x.weight": z(8), p + "att.time_first": z(2)}
            if version == "5.1":
                sd[p + "att.gate.weight"] = z(8, 8)
        elif version == "5.2":
            sd |= {p + "att.time_decay": z(2, 4), p + "att.ln_x.weight": z(8), p + "att.gate.weight": z(8, 8)}
        elif version == "6":
            sd |= {
                p + "att.time_maa_x": z(1, 1, 8),
                p + "att.ln_x.weight": z(8),
                p + "att.time_decay": z(1, 1, 8),
            }
        elif version == "7":
            sd |= {p + "att.r_k": z(2, 4), p + "att.x_r": z(1, 1, 8)}
        elif version == "7-old":
            sd |= {p + "att.rk_s": z(2, 4), p + "att.xx_r": z(1, 1, 8)}
    return sd


@pytest.mark.parametrize("n_layer", [1, 3])
@pytest.mark.parametrize("version", ["4", "5.0", "5.1", "5.2", "6", "7", "7-old"])
def test_version_detection_from_keys_alone(version, n_layer):
    assert detect_version(_keys(version, n_layer)) == version.replace("-old", "")


# ---- bad files: each gives one clear CheckpointError line ---------------------------------------


def _err(path) -> str:
    with pytest.raises(CheckpointError) as info:
        rwkvkit.load(path)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def test_missing_file(tmp_path):
    assert "not found" in _err(tmp_path / "nope.pth")


def test_empty_file(tmp_path):
    (tmp_path / "e.pth").write_bytes(b"")
    assert "empty" in _err(tmp_path / "e.pth")


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "t.pth").write_text("hello, I am a text file\n" * 10)
    assert "not a PyTorch checkpoint" in _err(tmp_path / "t.pth")


def test_truncated_file(ckpt, tmp_path):
    data = ckpt.read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    assert "truncated or corrupt" in _err(tmp_path / "cut.pth")


class Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickled_code_is_refused(tmp_path):
    torch.save({"emb.weight": torch.zeros(2, 2), "x": Evil()}, tmp_path / "evil.pth")
    assert "never executes code" in _err(tmp_path / "evil.pth")


def test_unsupported_variant(ckpt, tmp_path):
    sd = torch.load(ckpt, weights_only=True)
    sd["blocks.0.ffn.s_emb.weight"] = torch.zeros(CFG.vocab_size, 1024)  # RWKV-7 DeepEmbed
    torch.save(sd, tmp_path / "de.pth")
    with pytest.raises(UnsupportedVersionError, match="DeepEmbed"):
        rwkvkit.load(tmp_path / "de.pth")


def test_not_rwkv(tmp_path):
    torch.save({"model.layers.0.weight": torch.zeros(2)}, tmp_path / "x.pth")
    with pytest.raises(UnsupportedVersionError, match="not an RWKV checkpoint"):
        rwkvkit.load(tmp_path / "x.pth")


def test_missing_and_unexpected_keys_are_named(ckpt, tmp_path):
    sd = torch.load(ckpt, weights_only=True)
    del sd["blocks.1.att.k_a"]
    sd["blocks.1.att.surprise"] = torch.zeros(3)
    torch.save(sd, tmp_path / "m.pth")
    msg = _err(tmp_path / "m.pth")
    assert "missing keys [blocks.1.att.k_a]" in msg and "unexpected keys [blocks.1.att.surprise]" in msg


def test_shape_mismatch_is_named(ckpt, tmp_path):
    sd = torch.load(ckpt, weights_only=True)
    sd["blocks.1.ffn.x_k"] = torch.zeros(1, 1, 63)
    torch.save(sd, tmp_path / "m.pth")
    assert "blocks.1.ffn.x_k" in _err(tmp_path / "m.pth")


def test_nan_weights_are_refused(ckpt, tmp_path):
    sd = torch.load(ckpt, weights_only=True)
    sd["head.weight"][3, 3] = float("nan")
    torch.save(sd, tmp_path / "m.pth")
    assert "NaN" in _err(tmp_path / "m.pth")


ONE_LAYER = {
    "4": {},
    "5.0": {"head_size": 16, "v5_log_bonus": True},
    "5.1": {"head_size": 16, "v5_log_bonus": True},
    "5.2": {"head_size": 16},
    "6": {"head_size": 16, "lora_mix": 4, "lora_decay": 4},
    "7": {"head_size": 16, "lora_w": 4, "lora_a": 4, "lora_v": 4, "lora_g": 4},
}


@pytest.mark.parametrize("version", sorted(ONE_LAYER))
def test_one_layer_checkpoints_load_as_their_version(version, tmp_path):
    """The official package's own detection is ambiguous for one-layer files; ours is not."""
    cfg = RWKVConfig(version=version, n_layer=1, n_embd=32, vocab_size=50, **ONE_LAYER[version])
    path = random_checkpoint(cfg, tmp_path / "m.pth")
    assert rwkvkit.load(path).config == cfg
