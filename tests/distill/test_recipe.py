"""The distillation recipe end to end on tiny Qwen2 and Llama teachers: stages 1, 2 and 3 run and
learn, the student loads with rwkvkit.load, resume is exact, frozen MLPs stay the teacher's, two
processes under torchrun match one, and bad input gets clear errors."""

from __future__ import annotations

import csv
import email
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import rwkvkit
from rwkvkit.cli.main import main as cli
from rwkvkit.data import prepare
from rwkvkit.distill import DistillConfig, distill, load_teacher
from rwkvkit.errors import ConfigError, RWKVKitError
from rwkvkit.models.arwkv import ARWKV

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus") / "data"
    prepare([Path(email.__file__).parent], out, tokenizer="bytes", val_fraction=0.2, seed=0, quiet=True)
    return out


def _save_teacher(path: Path, arch: str = "qwen2", hidden: int = 64, seed: int = 0, vocab: int = 256) -> Path:
    common = dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)  # fmt: skip
    torch.manual_seed(seed)
    if arch == "qwen2":
        model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**common))
    else:
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**common))
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    return _save_teacher(tmp_path_factory.mktemp("teacher") / "qwen2")


@pytest.fixture(scope="module")
def sft_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("sft") / "sft.jsonl"
    with path.open("w") as f:
        for i in range(60):
            f.write(json.dumps({"prompt": f"Q: {i} plus one?\nA: ", "answer": f"{i + 1}."}) + "\n")
    return path


def _cfg(teacher_dir, data_dir, out_dir, **kw) -> DistillConfig:
    base = dict(teacher=str(teacher_dir), data=str(data_dir), out_dir=str(out_dir), head_size=16, ctx_len=32,
                batch_size=4, warmup_steps=1, eval_every=100, eval_tokens=512, save_every=100, progress=False,
                precision="fp32", stage1_lr=3e-3, stage2_lr=3e-3, stage3_lr=3e-3)  # fmt: skip
    return DistillConfig(**{**base, **kw})


def _stage_losses(rows, stage):
    return [r["train_loss"] for r in rows if r["stage"] == stage]


def test_three_stages_from_the_command_line(teacher_dir, data_dir, sft_file, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["distill", "--teacher", str(teacher_dir), "--data", str(data_dir), "--out-dir", str(out),
            "--stages", "1,2,3", "--sft-data", str(sft_file), "--head-size", "16", "--ctx-len", "32",
            "--batch-size", "4", "--stage1-steps", "12", "--stage2-steps", "12", "--stage3-steps", "12",
            "--stage1-lr", "3e-3", "--stage2-lr", "3e-3", "--stage3-lr", "3e-3", "--warmup-steps", "1",
            "--eval-every", "6", "--eval-tokens", "512", "--precision", "fp32",
            "--progress", "false"]  # fmt: skip
    assert cli(args) == 0
    assert "validation loss" in capsys.readouterr().out
    for name in ("last.pt", "model.safetensors", "loss.csv", "loss.png", "config.toml", "tokenizer.spec"):
        assert (out / name).is_file(), name
    rows = list(csv.DictReader(open(out / "loss.csv")))
    assert [int(r["stage"]) for r in rows] == [1] * 12 + [2] * 12 + [3] * 12
    tokens = [int(r["tokens"]) for r in rows]
    assert tokens == [4 * 32 * (i + 1) for i in range(36)]  # counted over all stages
    for stage in (1, 2, 3):  # each stage lowers its own loss (first two steps vs last two)
        losses = [float(r["train_loss"]) for r in rows if int(r["stage"]) == stage]
        assert sum(losses[-2:]) < sum(losses[:2]), (stage, losses)
    answer = [float(r["val_answer_loss"]) for r in rows if r["val_answer_loss"]]
    assert answer[-1] < answer[0]  # stage 3 learns the held-out answers' format
    student = rwkvkit.load(out / "model.safetensors")
    assert isinstance(student, ARWKV) and student.config.head_size == 16
    assert cli(["info", str(out / "model.safetensors")]) == 0  # described from the header
    info = capsys.readouterr().out
    assert "ARWKV" in info and f"{student.num_params():,}" in info and "head size 16" in info


def test_distilled_student_reloads_identically_and_decodes_in_constant_memory(
    teacher_dir, data_dir, tmp_path
):
    """The acceptance test of issue 9: a student distilled by the recipe (stages 1 and 2), saved and
    reloaded with rwkvkit.load, gives bit-identical logits (fp32 on both sides), and decoding it token
    by token keeps a state of one fixed size however long the context grows."""
    out = tmp_path / "run"
    result = distill(_cfg(teacher_dir, data_dir, out, stages="1,2", stage1_steps=3, stage2_steps=3))
    trained, loaded = result.student, rwkvkit.load(out / "model.safetensors", dtype=torch.float32)
    assert isinstance(loaded, ARWKV) and loaded.config == trained.config
    tokens = torch.randint(0, 256, (2, 40), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        a, sa = trained(tokens)
        b, sb = loaded(tokens)
    assert torch.equal(a, b)  # identical, not close
    assert all(torch.equal(sa[k], sb[k]) for k in ("att_shift", "wkv"))
    sizes, state, tok = [], None, tokens[:1, :1]
    with torch.no_grad():
        for n in range(1, 601):  # 600 tokens of context, one at a time
            logits, state = loaded(tok, state, full_output=False)
            tok = logits[:, -1:].argmax(-1)
            if n in (1, 10, 100, 600):
                sizes.append(sum(t.numel() * t.element_size() for t in state.tensors.values()))
    assert len(set(sizes)) == 1, sizes
    text = rwkvkit.generate(loaded, rwkvkit.load_tokenizer("bytes"), "From: ", max_new_tokens=8, top_k=1)
    assert isinstance(text, str) and len(text) >= 1  # 8 byte tokens decode to at least one character


def test_stage1_trains_only_time_mixes_and_frozen_mlps_stay_the_teachers(teacher_dir, data_dir, tmp_path):
    teacher = load_teacher(teacher_dir)
    out = tmp_path / "frozen"
    distill(_cfg(teacher_dir, data_dir, out, stages="1,2", stage1_steps=3, stage2_steps=3, train_mlp=False))
    student = rwkvkit.load(out / "model.safetensors")
    for mine, layer in zip(student.blocks, teacher.model.layers, strict=True):
        for name, p in layer.mlp.state_dict().items():
            assert torch.equal(mine.mlp.state_dict()[name], p), name  # bit-identical: never trained
        assert torch.equal(mine.ln1.weight, layer.input_layernorm.weight)
    assert torch.equal(student.emb.weight, teacher.model.embed_tokens.weight)
    assert torch.equal(student.head.weight, teacher.lm_head.weight)


def test_resume_continues_exactly_across_a_stage_boundary(teacher_dir, data_dir, tmp_path):
    cfg = _cfg(teacher_dir, data_dir, tmp_path / "a", stages="1,2", stage1_steps=3, stage2_steps=4)
    full = distill(cfg)
    cfg_b = cfg.replace(out_dir=str(tmp_path / "b"))
    first = distill(cfg_b, stop_at=2)  # inside stage 1
    second = distill(cfg_b, resume=True, stop_at=5)  # through the boundary into stage 2
    third = distill(cfg_b, resume=True)
    losses = lambda r: [row["train_loss"] for row in r.rows]  # noqa: E731
    assert losses(first) == losses(full)[:2]
    assert losses(second) == losses(full)[:5]
    assert losses(third) == losses(full)  # bitwise: same batches, optimiser state and weights
    assert third.val_loss == full.val_loss


def test_sigterm_in_stage_2_saves_and_the_cli_resumes_exactly(
    teacher_dir, data_dir, tmp_path, monkeypatch, capsys
):
    """The signal arrives inside stage 2's second step: that step finishes, is saved, and
    `rwkvkit distill --out-dir OUT --resume` (no other option) continues it bit for bit."""
    import signal

    from rwkvkit.distill import recipe
    from rwkvkit.errors import Interrupted

    cfg = _cfg(teacher_dir, data_dir, tmp_path / "a", stages="1,2", stage1_steps=3, stage2_steps=3)
    full = distill(cfg)
    real, calls = recipe.kd_loss, {"n": 0}

    def kd_then_signal(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*a, **kw)

    monkeypatch.setattr(recipe, "kd_loss", kd_then_signal)
    out = tmp_path / "b"
    with pytest.raises(Interrupted) as e:
        distill(cfg.replace(out_dir=str(out)))
    monkeypatch.undo()
    assert e.value.step == 5 and e.value.exit_code == 128 + signal.SIGTERM
    assert "in stage 2 after its step 2/3 (step 5 in all)" in str(e.value)
    assert f"rwkvkit distill --out-dir {out} --resume" in str(e.value)
    assert torch.load(out / "last.pt", weights_only=True)["step"] == 5
    assert cli(["distill", "--out-dir", str(out), "--resume"]) == 0
    rows = list(csv.DictReader(open(out / "loss.csv")))
    assert [float(r["train_loss"]) for r in rows] == [r["train_loss"] for r in full.rows]
    assert cli(["distill", "--out-dir", str(out), "--resume", "--teacher", str(tmp_path)]) == 2
    assert "--teacher is" in capsys.readouterr().err


def test_llama_teacher_and_a_larger_stage2_teacher(data_dir, tmp_path):
    llama = _save_teacher(tmp_path / "llama", "llama")
    big = _save_teacher(tmp_path / "big", "qwen2", hidden=96, seed=1)  # wider, same vocabulary
    out = tmp_path / "run"
    result = distill(
        _cfg(llama, data_dir, out, stages="1,2", stage1_steps=2, stage2_steps=6, kd_teacher=str(big))
    )
    assert result.step == 8 and result.val_loss is not None
    assert rwkvkit.load(out / "model.safetensors").config.n_embd == 64  # the student of the Llama teacher
    losses = _stage_losses(result.rows, 2)
    assert losses[-1] < losses[0]


def test_train_embeddings_switch(teacher_dir, data_dir, tmp_path):
    teacher = load_teacher(teacher_dir)
    for flag in (False, True):
        out = tmp_path / str(flag)
        distill(_cfg(teacher_dir, data_dir, out, stages="2", stage2_steps=2, train_embeddings=flag))
        student = rwkvkit.load(out / "model.safetensors")
        same = torch.equal(student.emb.weight, teacher.model.embed_tokens.weight)
        assert same != flag and torch.equal(student.head.weight, teacher.lm_head.weight) != flag


def test_student_without_gate_and_group_norm(teacher_dir, data_dir, tmp_path):
    out = tmp_path / "nog"
    distill(_cfg(teacher_dir, data_dir, out, stages="1", stage1_steps=2, gate=False, group_norm=False))
    student = rwkvkit.load(out / "model.safetensors")
    names = {n for n, _ in student.named_parameters()}
    assert not any(".att.g1" in n or ".att.ln_x" in n or ".att.x_g" in n for n in names)
    assert student.config.gate is False and student.config.group_norm is False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one(teacher_dir, data_dir, tmp_path):
    """torchrun, 2 processes x 2 windows against 1 process x 4 windows: the same mean gradients up to
    float summation order (relative 1e-5 on every step's loss, 4 steps, fp32)."""
    args = ["distill", "--teacher", str(teacher_dir), "--data", str(data_dir), "--stages", "1,2",
            "--stage1-steps", "2", "--stage2-steps", "2", "--head-size", "16", "--ctx-len", "32",
            "--warmup-steps", "1", "--eval-every", "100", "--eval-tokens", "256", "--precision", "fp32",
            "--threads", "1", "--progress", "false"]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")

    def run(cmd):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
        assert proc.returncode == 0, proc.stderr[-4000:]

    run(
        [
            sys.executable,
            "-m",
            "rwkvkit.cli.main",
            *args,
            "--batch-size",
            "4",
            "--out-dir",
            str(tmp_path / "one"),
        ]
    )
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                "--master-addr", "127.0.0.1", "--master-port", str(_free_port())]  # fmt: skip
    run([*launcher, "-m", "rwkvkit.cli.main", *args, "--batch-size", "2", "--out-dir", str(tmp_path / "two")])
    one, two = (
        [float(r["train_loss"]) for r in csv.DictReader(open(tmp_path / d / "loss.csv"))]
        for d in ("one", "two")
    )
    assert len(one) == len(two) == 4
    for a, b in zip(two, one, strict=True):
        assert abs(a - b) <= 1e-5 * abs(b), (two, one)


def test_clear_errors(teacher_dir, data_dir, tmp_path):
    with pytest.raises(ConfigError, match="no teacher"):
        distill(DistillConfig(data=str(data_dir), out_dir=str(tmp_path / "x")))
    with pytest.raises(ConfigError, match="--sft-data"):
        distill(_cfg(teacher_dir, data_dir, tmp_path / "x", stages="1,2,3"))
    with pytest.raises(ConfigError, match="stages"):
        DistillConfig(stages="2,1")
    with pytest.raises(ConfigError, match="stages"):
        DistillConfig(stages="4")
    with pytest.raises(ConfigError, match="not a transformers model directory"):
        load_teacher(tmp_path)
    gpt2 = tmp_path / "gpt2"
    transformers.GPT2LMHeadModel(
        transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=256)
    ).save_pretrained(gpt2)
    with pytest.raises(ConfigError, match="qwen2 and llama"):
        load_teacher(gpt2)
    small = _save_teacher(tmp_path / "small", vocab=128)  # the byte data has 256 ids
    with pytest.raises(ConfigError, match="prepare the data with the teacher's tokenizer"):
        distill(_cfg(small, data_dir, tmp_path / "x", stages="1", stage1_steps=1))
    with pytest.raises(RWKVKitError, match="stage1_steps"):  # a mistyped value names its option
        DistillConfig.from_dict({"stage1_steps": "many"})
