"""Fine-tuning runs on the trainer (rwkvkit.finetune.finetune and `rwkvkit finetune`): outputs, merge,
exact resume, and the errors of bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import rwkvkit
from rwkvkit.cli.main import main
from rwkvkit.data import prepare
from rwkvkit.finetune import finetune, load_adapter, merge
from rwkvkit.formats import save as save_weights
from rwkvkit.models.rwkv.config import RWKVConfig
from rwkvkit.models.rwkv.init import random_model
from rwkvkit.training.config import TrainConfig

CONFIG = RWKVConfig(version="7", n_layer=2, n_embd=64, vocab_size=256, head_size=32, lora_w=8, lora_a=8,
                    lora_v=8, lora_g=16)  # fmt: skip


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus") / "data"
    prepare(
        [Path(rwkvkit.__file__).parent / "finetune"], out, tokenizer="bytes", val_fraction=0.3, quiet=True
    )
    return out


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    path = tmp_path_factory.mktemp("base") / "base.safetensors"
    save_weights(random_model(CONFIG, seed=1), path)
    return path


def cfg(data_dir, base, out, method, **kw) -> TrainConfig:
    options = dict(data=str(data_dir), out_dir=str(out), init_from=str(base), finetune=method, ctx_len=32,
                   batch_size=2, grad_accum=2, chunk_len=16, max_steps=6, warmup_steps=1, lr=3e-3,
                   eval_every=3, eval_tokens=512, save_every=100, precision="fp32", progress=False,
                   lora_r=4)  # fmt: skip
    return TrainConfig(**{**options, **kw})


@pytest.mark.parametrize("method", ["lora", "pissa", "state", "full"])
def test_resume_continues_exactly(data_dir, base, tmp_path, method):
    """Losses after a resume equal the uninterrupted run's, step for step (bitwise); the checkpoint of
    an adapter run holds only what training changes."""
    full = finetune(cfg(data_dir, base, tmp_path / "a", method))
    c = cfg(data_dir, base, tmp_path / "b", method)
    first = finetune(c, stop_at=3)
    second = finetune(c, resume=True)
    assert first.train_losses == full.train_losses[:3]
    assert second.train_losses == full.train_losses
    payload = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    trained = {k: v for k, v in payload["model"].items() if k.endswith(("lora_B", "state.wkv"))}
    assert method == "full" or (trained and all(v.abs().max() > 0 for v in trained.values()))  # they moved
    n_saved = sum(t.numel() for t in payload["model"].values())
    n_model = sum(p.numel() for p in random_model(CONFIG).parameters())
    if method == "full":
        assert n_saved == n_model
    else:
        assert n_saved < n_model / 2


def test_int8_base_trains_and_resumes_exactly(data_dir, base, tmp_path):
    """QLoRA-style: the frozen projections int8; a resumed run still continues bitwise."""
    full = finetune(cfg(data_dir, base, tmp_path / "a", "lora", lora_int8=True, max_steps=4))
    c = cfg(data_dir, base, tmp_path / "b", "lora", lora_int8=True, max_steps=4)
    finetune(c, stop_at=2)
    assert finetune(c, resume=True).train_losses == full.train_losses
    plain = finetune(cfg(data_dir, base, tmp_path / "c", "lora", max_steps=4))
    assert plain.train_losses != full.train_losses  # the int8 weights are really used


def test_lora_outputs_merge_to_a_plain_checkpoint(data_dir, base, tmp_path):
    finetune(cfg(data_dir, base, tmp_path / "run", "lora"))
    adapter = tmp_path / "run" / "adapter.safetensors"
    assert adapter.is_file() and adapter.stat().st_size < base.stat().st_size / 4
    x = torch.randint(0, 256, (2, 20))
    tuned = rwkvkit.load(str(base), dtype="fp32")
    load_adapter(tuned, adapter)
    with torch.no_grad():
        want = tuned(x)[0]
        merged = merge(base, adapter, tmp_path / "merged.safetensors")
        got = rwkvkit.load(str(tmp_path / "merged.safetensors"), dtype="fp32")(x)[0]
        plain = rwkvkit.load(str(base), dtype="fp32")(x)[0]
    assert merged is not None
    assert (got - want).abs().max() < 1e-5  # merged == base + adapter (fp32)
    assert (want - plain).abs().max() > 1e-3  # and the adapter did change the model
    # the CLI does the same, in another format
    assert (
        main(["finetune", "merge", str(base), str(adapter), str(tmp_path / "m.pth"), "--to", "blinkdl"]) == 0
    )
    with torch.no_grad():
        other = rwkvkit.load(str(tmp_path / "m.pth"), dtype="fp32")(x)[0]
    assert (other - want).abs().max() < 1e-5


def test_state_tuning_writes_a_state_that_generation_loads(data_dir, base, tmp_path):
    finetune(cfg(data_dir, base, tmp_path / "run", "state"))
    path = tmp_path / "run" / "state.safetensors"
    state = rwkvkit.State.load(path)
    model = rwkvkit.load(str(base), dtype="fp32")
    state.check_fits(model.config)
    assert path.stat().st_size < base.stat().st_size / 4
    assert state["wkv"].abs().max() > 0  # trained away from the zero start
    tok = rwkvkit.load_tokenizer("bytes")
    x = torch.tensor([tok.encode("def f(x):")])
    with torch.no_grad():
        tuned, plain = model(x, state)[0], model(x)[0]
    assert (tuned - plain).abs().max() > 1e-4  # the state changes what the model predicts
    a = rwkvkit.generate(model, tok, "def ", max_new_tokens=8, temperature=0, state=state)
    engine = rwkvkit.generation.BatchEngine(model, tok)
    rid = engine.add("def ", max_new_tokens=8, temperature=0, state=state)
    assert engine.run()[rid].text == a
    # the CLI loads it too
    assert main(["generate", "--model", str(base), "--tokenizer", "bytes", "--state-in", str(path),
                 "--prompt", "def ", "--max-tokens", "4", "--no-stream"]) == 0  # fmt: skip


def test_cli_runs_and_bad_input_is_one_line(data_dir, base, tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["finetune", "--method", "lora", "--base", str(base), "--data", str(data_dir), "--out-dir",
            str(out), "--max-steps", "2", "--ctx-len", "32", "--batch-size", "2", "--eval-every", "2",
            "--eval-tokens", "256", "--precision", "fp32", "--lora-r", "4"]  # fmt: skip
    assert main(argv) == 0
    assert "adapter.safetensors" in capsys.readouterr().out
    # no method, no base
    assert main(["finetune", "--base", str(base), "--data", str(data_dir)]) == 2
    assert "method" in capsys.readouterr().err
    assert main(["finetune", "--method", "lora", "--data", str(data_dir)]) == 2
    assert "--base" in capsys.readouterr().err
    # an adapter for another model shape
    other = tmp_path / "other.safetensors"
    save_weights(random_model(RWKVConfig(version="7", n_layer=2, n_embd=128, vocab_size=256, head_size=32,
                                         lora_w=8, lora_a=8, lora_v=8, lora_g=16)), other)  # fmt: skip
    assert main(["finetune", "merge", str(other), str(out / "adapter.safetensors"), str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and len(err.splitlines()) == 1
    # a state file of another model
    small = rwkvkit.State.initial(CONFIG, 1)
    small.save(tmp_path / "small.state")
    assert main(["generate", "--model", str(other), "--tokenizer", "bytes", "--state-in",
                 str(tmp_path / "small.state"), "--prompt", "x", "--max-tokens", "2"]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and len(err.splitlines()) == 1
