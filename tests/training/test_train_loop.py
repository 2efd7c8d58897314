"""The trainer end to end on a tiny corpus: resume equivalence, divergence handling, outputs."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

import rwkvkit
from rwkvkit.data import prepare
from rwkvkit.training import loss as loss_module
from rwkvkit.training.config import TrainConfig, preset
from rwkvkit.training.loop import TrainingDiverged, train


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    src = Path(rwkvkit.__file__).parent  # a small, always-present corpus: rwkvkit's own sources
    out = root / "data"
    prepare([src], out, tokenizer="bytes", val_fraction=0.2, seed=0, quiet=True)
    return out


def tiny(data_dir, out_dir, **kw) -> TrainConfig:
    """The tiny preset in fp32 (bf16 autocast has its own case below: on a CPU without native bf16
    instructions it runs about 30x slower than fp32), validating on 4096 tokens."""
    kw = {"precision": "fp32", "eval_tokens": 4096, **kw}
    return preset("tiny").replace(data=str(data_dir), out_dir=str(out_dir), progress=False, **kw)


@pytest.mark.parametrize(
    "version, precision, steps",
    [("7", "fp32", 8), ("6", "fp32", 8), ("5.2", "fp32", 8), ("4", "fp32", 8), ("7", "bf16", 4)],  # fmt: skip
)
def test_resume_continues_exactly(data_dir, tmp_path, version, precision, steps):
    """Losses after a resume equal the uninterrupted run's, step for step (bitwise)."""
    cfg = tiny(data_dir, tmp_path / "a", version=version, max_steps=steps, save_every=100, eval_every=100,
               chunk_len=32, grad_accum=2, precision=precision, warmup_steps=2)  # fmt: skip
    full = train(cfg)
    cfg_b = cfg.replace(out_dir=str(tmp_path / "b"))
    first = train(cfg_b, stop_at=steps // 2)
    second = train(cfg_b, resume=True)
    assert first.train_losses == full.train_losses[: steps // 2]
    assert second.train_losses == full.train_losses  # the history is carried over on resume
    assert second.step == steps


def test_chunked_windows_learn_and_write_outputs(data_dir, tmp_path):
    cfg = tiny(data_dir, tmp_path / "run", max_steps=20, chunk_len=16)
    result = train(cfg)
    assert result.train_losses[-1] < result.train_losses[0]
    for name in ("last.pt", "model.safetensors", "loss.csv", "loss.png", "config.toml"):
        assert (tmp_path / "run" / name).is_file(), name
    rows = list(csv.DictReader(open(tmp_path / "run" / "loss.csv")))
    assert len(rows) == 20 and rows[-1]["val_bpb"] != ""
    # the saved weights load with rwkvkit.load and reproduce the evaluation
    model = rwkvkit.load(tmp_path / "run" / "model.safetensors")
    assert model.config.n_layer == cfg.n_layer
    assert TrainConfig.from_toml(tmp_path / "run" / "config.toml") == cfg


def test_nan_stops_with_a_clear_message_and_keeps_the_last_checkpoint(data_dir, tmp_path, monkeypatch):
    cfg = tiny(data_dir, tmp_path / "run", max_steps=10, save_every=2, eval_every=100)
    real = loss_module.fused_lm_loss  # the loss of the default (fused_loss) training step
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        out = real(*args, **kwargs)
        return out * float("nan") if calls["n"] == 5 else out

    monkeypatch.setattr(loss_module, "fused_lm_loss", poisoned)
    with pytest.raises(TrainingDiverged, match="at step 5.*last good checkpoint"):
        train(cfg)
    payload = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert payload["step"] == 4  # the checkpoint of step 4 survives, nothing of step 5 was written


def test_gpt_baseline_trains_with_the_same_loop(data_dir, tmp_path):
    cfg = tiny(data_dir, tmp_path / "gpt", arch="gpt", max_steps=10, l2wrap=False)
    result = train(cfg)
    assert result.train_losses[-1] < result.train_losses[0] and result.val_bpb is not None


def test_activation_checkpointing_gives_the_same_run(data_dir, tmp_path):
    """Recomputing blocks in the backward pass changes memory, not the arithmetic."""
    base = tiny(data_dir, tmp_path / "plain", max_steps=4, eval_every=100, save_every=100)
    plain = train(base)
    ac = train(base.replace(out_dir=str(tmp_path / "ac"), activation_checkpointing=True))
    assert ac.train_losses == pytest.approx(plain.train_losses, rel=1e-6)
