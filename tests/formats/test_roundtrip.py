"""Lossless round trips between every format, for every version; identical logits after loading.

official .pth -> rwkvkit .safetensors -> official .pth, and official -> HF directory -> official
in every layout that holds the version (transformers RWKV-4, the RWKV hub's RWKV-5.2/6, fla
RWKV-6/7), through the library and through ``rwkvkit convert``. Bitwise: ``torch.equal`` and the
same dtype for every tensor. The one exception is RWKV-7's layer-0 value-residual LoRA, which fla
does not store: unused by the model, it comes back as zeros and the logits stay identical.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

import rwkvkit
from rwkvkit.cli.main import main
from rwkvkit.formats import blinkdl, hf, read, save
from rwkvkit.models.rwkv.config import RWKVConfig
from rwkvkit.models.rwkv.init import random_checkpoint
from rwkvkit.models.rwkv.model import RWKV

CONFIGS = {
    "4": RWKVConfig(version="4", n_layer=2, n_embd=32, vocab_size=97),
    "5.0": RWKVConfig(version="5.0", n_layer=2, n_embd=32, vocab_size=97, head_size=16, v5_log_bonus=True),
    "5.1": RWKVConfig(version="5.1", n_layer=2, n_embd=32, vocab_size=97, head_size=16),
    "5.2": RWKVConfig(version="5.2", n_layer=2, n_embd=32, vocab_size=97, head_size=16),
    "6": RWKVConfig(version="6", n_layer=2, n_embd=32, vocab_size=97, head_size=16, lora_mix=4, lora_decay=8),
    "7": RWKVConfig(version="7", n_layer=2, n_embd=32, vocab_size=97, head_size=16,
                    lora_w=8, lora_a=4, lora_v=4, lora_g=8),
}  # fmt: skip
VERSIONS = list(CONFIGS)
HF_PAIRS = [(v, lay.name) for v in CONFIGS for lay in hf.LAYOUTS if v in lay.versions]
# fla has no slot for these (unused by the model); they read back as zeros
FLA_DROPPED = {"blocks.0.att.v0", "blocks.0.att.v1", "blocks.0.att.v2"}


def _model_exists(version: str) -> bool:
    try:
        with torch.device("meta"):
            RWKV(CONFIGS[version])
        return True
    except rwkvkit.RWKVKitError:
        return False


def _needs_model(version: str) -> None:
    # the model classes arrive version by version; the key-map tests above never need them
    if not _model_exists(version):
        pytest.skip(f"RWKV-{version} model class not implemented yet")


def _official_sd(version: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random official state dict with every key and shape of docs/checkpoints.md#official-keys
    (no model needed)."""
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) for k, s in blinkdl.expected_shapes(CONFIGS[version]).items()}


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """version -> an official .pth of random weights (a model's, where the model class exists)."""
    root = tmp_path_factory.mktemp("official")
    paths = {}
    for v, cfg in CONFIGS.items():
        if _model_exists(v):
            paths[v] = random_checkpoint(cfg, root / f"v{v}.pth", seed=1)
        else:
            paths[v] = save(_official_sd(v), root / f"v{v}.pth", "blinkdl")
    return paths


def _load_pth(path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)


def assert_bitwise(
    a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], skip: set[str] = frozenset()
) -> None:
    assert set(a) == set(b)
    for k in a:
        if k in skip:
            continue
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("version", VERSIONS)
def test_official_rwkvkit_official_is_bitwise(version, official, tmp_path):
    st = save(read(official[version]), tmp_path / "m.safetensors", "rwkvkit")
    with safe_open(str(st), "pt") as f:
        meta = f.metadata()
    assert meta["rwkvkit_format"] == "1" and meta["format"] == "pt"
    assert RWKVConfig.from_dict(json.loads(meta["rwkvkit_config"])) == CONFIGS[version]
    ckpt = read(st)
    assert ckpt.format == "rwkvkit" and ckpt.config == CONFIGS[version]
    back = save(ckpt, tmp_path / "back.pth", "blinkdl")
    assert_bitwise(_load_pth(official[version]), _load_pth(back))


@pytest.mark.parametrize("version, layout", HF_PAIRS)
def test_official_hf_official_is_bitwise(version, layout, official, tmp_path):
    ckpt = read(official[version])
    hf.write(ckpt.state_dict, ckpt.config, tmp_path / "hf", layout=layout)
    config_json = json.loads((tmp_path / "hf" / "config.json").read_text())
    again = read(tmp_path / "hf")
    assert again.format == "hf" and again.config == CONFIGS[version]
    assert config_json["model_type"] in hf.layout_for(version, layout).model_types
    back = save(again, tmp_path / "back.pth", "blinkdl")
    dropped = FLA_DROPPED if layout == "fla-rwkv7" else set()
    original, round_tripped = _load_pth(official[version]), _load_pth(back)
    assert_bitwise(original, round_tripped, skip=dropped)
    for k in dropped:
        assert not round_tripped[k].any() and round_tripped[k].shape == original[k].shape


@pytest.mark.parametrize("version", VERSIONS)
def test_cli_convert_round_trip_and_info(version, official, tmp_path, capsys):
    src = str(official[version])
    st, pth = str(tmp_path / "m.safetensors"), str(tmp_path / "back.pth")
    assert main(["convert", src, st, "--to", "rwkvkit"]) == 0
    written = [st]
    if version in hf.DEFAULT_LAYOUT:
        hf_dir = str(tmp_path / "hf")
        assert main(["convert", st, hf_dir, "--to", "hf"]) == 0
        assert main(["convert", hf_dir, pth, "--to", "blinkdl"]) == 0
        written.append(hf_dir)
    else:
        assert main(["convert", st, pth, "--to", "blinkdl"]) == 0
    assert f"RWKV-{version}" in capsys.readouterr().out
    dropped = FLA_DROPPED if version == "7" else set()
    assert_bitwise(_load_pth(src), _load_pth(pth), skip=dropped)
    for path in [src, *written]:
        assert main(["info", path]) == 0
        out = capsys.readouterr().out
        assert f"version:     RWKV-{version}" in out and "layers:      2" in out and "vocabulary:  97" in out


def test_cli_convert_casts_dtype(official, tmp_path, capsys):
    dst = tmp_path / "m.safetensors"
    assert main(["convert", str(official["7"]), str(dst), "--to", "rwkvkit", "--dtype", "bf16"]) == 0
    assert "bfloat16" in capsys.readouterr().out
    ckpt = read(dst)
    assert ckpt.stored_dtypes == ["bfloat16"]
    src = _load_pth(official["7"])
    assert all(torch.equal(ckpt.state_dict[k], src[k].to(torch.bfloat16)) for k in src)


def _logits(model: RWKV, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(tokens)[0]


@pytest.mark.parametrize("version", VERSIONS)
def test_every_format_gives_the_logits_of_the_official_file(version, official, tmp_path):
    _needs_model(version)
    tokens = torch.randint(0, 97, (2, 9), generator=torch.Generator().manual_seed(5))
    ckpt = read(official[version])
    paths = [save(ckpt, tmp_path / "m.safetensors", "rwkvkit")]
    if version in hf.DEFAULT_LAYOUT:
        paths.append(save(ckpt, tmp_path / "hf", "hf"))
    ref = _logits(rwkvkit.load(official[version]), tokens)
    assert torch.isfinite(ref).all()
    for path in paths:
        assert torch.equal(_logits(rwkvkit.load(path), tokens), ref), path


@pytest.mark.parametrize("version", VERSIONS)
def test_official_shapes_are_the_model_shapes(version):
    _needs_model(version)
    with torch.device("meta"):
        model = RWKV(CONFIGS[version])
    assert {k: tuple(t.shape) for k, t in model.state_dict().items()} == blinkdl.expected_shapes(
        CONFIGS[version]
    )


@pytest.mark.parametrize("stored", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("fmt", ["blinkdl", "rwkvkit", "hf"])
def test_half_precision_files_load_to_fp32_and_bf16(stored, fmt, official, tmp_path):
    _needs_model("7")
    half = {k: v.to(stored) for k, v in _load_pth(official["7"]).items()}
    path = save(
        half, tmp_path / ("m" if fmt == "hf" else "m.pth" if fmt == "blinkdl" else "m.safetensors"), fmt
    )
    assert read(path).stored_dtypes == [str(stored).removeprefix("torch.")]
    assert rwkvkit.load(path).dtype == stored  # dtype=None keeps the file's
    tokens = torch.tensor([[1, 2, 3, 4]])
    for want in (torch.float32, torch.bfloat16):
        model = rwkvkit.load(path, dtype=want)
        assert model.dtype == want
        weights = model.state_dict()
        skip = FLA_DROPPED if fmt == "hf" else set()
        assert all(torch.equal(weights[k], half[k].to(want)) for k in half if k not in skip)
        logits = _logits(model, tokens)
        assert logits.dtype == torch.float32 and torch.isfinite(logits).all()


def test_writing_with_a_dtype(official, tmp_path):
    ckpt = read(official["6"])
    for fmt, name in (("blinkdl", "m.pth"), ("rwkvkit", "m.safetensors"), ("hf", "hf")):
        out = read(save(ckpt, tmp_path / name, fmt, dtype="fp16"))
        assert out.stored_dtypes == ["float16"]
        assert all(torch.equal(out.state_dict[k], v.half()) for k, v in ckpt.state_dict.items())


def test_model_and_state_dict_can_be_saved(official, tmp_path):
    _needs_model("7")
    model = rwkvkit.load(official["7"])
    save(model, tmp_path / "from_model.safetensors")
    save(model.state_dict(), tmp_path / "from_sd.pth", "blinkdl")
    assert_bitwise(
        read(tmp_path / "from_model.safetensors").state_dict, read(tmp_path / "from_sd.pth").state_dict
    )


def test_plain_safetensors_with_official_names(official, tmp_path):
    from safetensors.torch import save_file

    sd = _load_pth(official["5.2"])
    save_file(sd, str(tmp_path / "plain.safetensors"))
    ckpt = read(tmp_path / "plain.safetensors")
    assert ckpt.format == "safetensors" and ckpt.config == CONFIGS["5.2"]
    assert_bitwise(ckpt.state_dict, sd)


def test_wrapper_prefixes_are_stripped(official, tmp_path):
    sd = _load_pth(official["4"])
    torch.save({f"_orig_mod.module.{k}": v for k, v in sd.items()}, tmp_path / "wrapped.pth")
    assert_bitwise(read(tmp_path / "wrapped.pth").state_dict, sd)


def test_a_weights_file_inside_an_hf_dir_reads_the_directory(official, tmp_path):
    save(read(official["7"]), tmp_path / "hf", "hf")
    ckpt = read(tmp_path / "hf" / "model.safetensors")
    assert ckpt.format == "hf" and ckpt.config == CONFIGS["7"]


def test_one_layer_fla_rwkv7_reads_the_value_rank_from_config(tmp_path):
    cfg = CONFIGS["7"].replace(n_layer=1)
    g = torch.Generator().manual_seed(0)
    sd = {k: torch.randn(s, generator=g) for k, s in blinkdl.expected_shapes(cfg).items()}
    save(sd, tmp_path / "hf", "hf")
    ckpt = read(tmp_path / "hf")
    assert ckpt.config == cfg and ckpt.state_dict["blocks.0.att.v1"].shape == (32, cfg.lora_v)


def test_writing_into_an_existing_hf_dir_keeps_other_files(official, tmp_path):
    out = tmp_path / "hf"
    out.mkdir()
    (out / "tokenizer.json").write_text("{}")
    save(read(official["6"]), out, "hf")
    assert (out / "tokenizer.json").read_text() == "{}"
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]
    assert read(out).config == CONFIGS["6"]


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(official, tmp_path, monkeypatch):
    import rwkvkit.formats.native as native

    dst = save(read(official["4"]), tmp_path / "m.safetensors")
    before = dst.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(native, "save_safetensors", boom)
    with pytest.raises(OSError, match="disk full"):
        save(read(official["5.2"]), dst)
    assert dst.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]
