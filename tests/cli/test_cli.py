"""The command line: info, generate, state hand-over between processes, one-line errors (exit 2)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import torch

from rwkvkit.cli.generate import sampling_params
from rwkvkit.cli.main import build_parser, main
from rwkvkit.generation import SamplingParams
from rwkvkit.models.rwkv.config import RWKVConfig
from rwkvkit.models.rwkv.init import random_checkpoint

BYTES_CFG = RWKVConfig(version="7", n_layer=2, n_embd=64, vocab_size=256, head_size=32,
                       lora_w=8, lora_a=8, lora_v=4, lora_g=16)  # fmt: skip


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return random_checkpoint(BYTES_CFG, tmp_path_factory.mktemp("cli") / "bytes.pth", seed=4)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rwkvkit.cli.main", *args], capture_output=True, text=True, timeout=120
    )


def test_info(ckpt, capsys):
    assert main(["info", str(ckpt)]) == 0
    out = capsys.readouterr().out
    assert "RWKV-7" in out and "layers:      2" in out and "vocabulary:  256" in out
    n = sum(t.numel() for t in torch.load(ckpt, weights_only=True).values())
    assert f"{n:,}" in out


def test_generate_greedy_is_deterministic_and_streams(ckpt, capsys):
    args = ["generate", "--model", str(ckpt), "--tokenizer", "bytes", "--prompt", "abc",
            "--max-tokens", "12", "--temperature", "0"]  # fmt: skip
    assert main(args) == 0
    streamed = capsys.readouterr().out
    assert main([*args, "--no-stream"]) == 0
    assert capsys.readouterr().out == streamed
    assert streamed.startswith("abc")


def test_state_saved_in_one_process_continues_in_another(ckpt, tmp_path):
    common = ["--model", str(ckpt), "--tokenizer", "bytes", "--temperature", "0", "--no-stream"]
    first = run_cli("generate", *common, "--prompt", "hello", "--max-tokens", "0",
                    "--state-out", str(tmp_path / "s.safetensors"))  # fmt: skip
    assert first.returncode == 0, first.stderr
    second = run_cli("generate", *common, "--prompt", " world", "--max-tokens", "10",
                     "--state-in", str(tmp_path / "s.safetensors"))  # fmt: skip
    assert second.returncode == 0, second.stderr
    whole = run_cli("generate", *common, "--prompt", "hello world", "--max-tokens", "10")
    assert whole.returncode == 0, whole.stderr
    assert second.stdout.rstrip("\n").removeprefix(" world") == whole.stdout.rstrip("\n").removeprefix(
        "hello world"
    )


# ---- one-line errors, exit status 2 ------------------------------------------------------------


def _one_line_error(result: subprocess.CompletedProcess, expect: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr  # no traceback
    assert lines[0].startswith("error: ") and expect in lines[0], lines[0]


def test_missing_file():
    _one_line_error(run_cli("info", "/nonexistent/model.pth"), "not found")


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "notes.pth").write_text("just some text\n")
    _one_line_error(run_cli("info", str(tmp_path / "notes.pth")), "not a PyTorch checkpoint")


def test_truncated_checkpoint(ckpt, tmp_path):
    data = ckpt.read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) * 2 // 3])
    _one_line_error(run_cli("generate", "--model", str(tmp_path / "cut.pth"), "--prompt", "x"), "truncated")


def test_corrupt_checkpoint(ckpt, tmp_path):
    data = bytearray(ckpt.read_bytes())
    for i in range(len(data) - 400, len(data) - 300):  # the zip central directory
        data[i] ^= 0xFF
    (tmp_path / "bad.pth").write_bytes(bytes(data))
    _one_line_error(run_cli("info", str(tmp_path / "bad.pth")), "corrupt")


def test_unsupported_version(ckpt, tmp_path):
    sd = torch.load(ckpt, weights_only=True)
    sd["blocks.0.ffn.s_emb.weight"] = torch.zeros(256, 1024)  # the RWKV-7 DeepEmbed variant
    torch.save(sd, tmp_path / "de.pth")
    _one_line_error(run_cli("info", str(tmp_path / "de.pth")), "DeepEmbed")


def test_tokenizer_that_does_not_fit_the_model(ckpt):
    result = run_cli("generate", "--model", str(ckpt), "--tokenizer", "world", "--prompt", "hi")
    _one_line_error(result, "vocabulary has only 256")


def test_bad_option_value(ckpt):
    result = run_cli(
        "generate", "--model", str(ckpt), "--tokenizer", "bytes", "--prompt", "hi", "--top-p", "1.5"
    )
    _one_line_error(result, "top_p")


def test_generate_sampling_options_come_from_sampling_params(tmp_path, capsys):
    args = build_parser().parse_args(["generate"])
    assert sampling_params(args) == dataclasses.replace(SamplingParams(), max_new_tokens=100)
    # A bad option is refused before the model is loaded (the missing checkpoint is never read).
    assert main(["generate", "--model", str(tmp_path / "missing.pth"), "--top-p", "1.5"]) == 2
    err = capsys.readouterr().err
    assert "top_p" in err and "missing" not in err
