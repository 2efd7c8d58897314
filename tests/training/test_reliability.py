"""A run that is resumed, stopped or fed odd data behaves as a user expects.

* ``--resume`` continues the run in OUT_DIR with the configuration saved there; options that would
  change the model, data or optimisation are refused with one line, the others applied and said;
* a configuration that fails its checks leaves no run folder behind;
* an empty validation split gives "no validation data", never a made-up 0.0;
* SIGTERM / SIGINT finish the step, save, print the resume command and exit with 128 + signal;
  a second signal ends the process at once.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

import rwkvkit
from rwkvkit.cli.main import main as cli
from rwkvkit.data import prepare
from rwkvkit.errors import ConfigError, Interrupted
from rwkvkit.training import loss as loss_module
from rwkvkit.training.config import TrainConfig, preset
from rwkvkit.training.loop import NO_VALIDATION, train

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus") / "data"
    prepare(
        [Path(rwkvkit.__file__).parent / "training"], out, tokenizer="bytes", val_fraction=0.2, quiet=True
    )
    return out


@pytest.fixture(scope="module")
def no_val_dir(tmp_path_factory):
    """The issue's data: documents whose hash split put none in validation."""
    root = tmp_path_factory.mktemp("noval")
    for i in range(3):
        (root / "docs").mkdir(exist_ok=True)
        (root / "docs" / f"d{i}.txt").write_text(f"document {i} " * 400)
    with pytest.warns(UserWarning, match="the validation split is empty"):
        meta = prepare(
            [root / "docs"], root / "data", tokenizer="bytes", val_fraction=0.2, seed=0, quiet=True
        )
    assert meta["splits"]["val"]["tokens"] == 0  # the premise of the test
    return root / "data"


def _args(data_dir, out, *extra) -> list[str]:
    return ["train", "--data", str(data_dir), "--out-dir", str(out), "--preset", "tiny", "--precision",
            "fp32", "--eval-tokens", "2048", "--progress", "false", "--threads", "1", *extra]  # fmt: skip


# ---- 1. resume reads its run ----------------------------------------------------------------------


def test_resume_takes_the_saved_configuration(data_dir, tmp_path, capsys, caplog):
    out = tmp_path / "run"
    first = _args(data_dir, out, "--n-layer", "3", "--n-embd", "96", "--head-size", "32", "--max-steps", "4",
                  "--save-every", "4", "--eval-every", "4", "--lr", "2e-3")  # fmt: skip
    assert cli(first) == 0
    # the command: only --data, --out-dir and --resume, and a longer run
    caplog.set_level("INFO", logger="rwkvkit.train")
    assert cli(["train", "--data", str(data_dir), "--out-dir", str(out), "--resume", "--max-steps", "6"]) == 0
    assert "done: 6 steps" in capsys.readouterr().out
    assert "resuming with max_steps: 6 (the run had 4)" in caplog.text
    saved = TrainConfig.from_toml(out / "config.toml")
    assert (saved.n_layer, saved.n_embd, saved.lr, saved.max_steps) == (3, 96, 2e-3, 6)
    assert torch.load(out / "last.pt", weights_only=True)["step"] == 6
    assert rwkvkit.load(out / "model.safetensors").config.n_embd == 96


def test_resume_refuses_a_changed_model_with_one_line(data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli(_args(data_dir, out, "--max-steps", "2", "--save-every", "2", "--eval-every", "2")) == 0
    capsys.readouterr()
    before = (out / "last.pt").read_bytes()
    assert cli(["train", "--data", str(data_dir), "--out-dir", str(out), "--resume", "--n-embd", "128"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--n-embd is 128 but the run being resumed has 64" in err
    assert (out / "last.pt").read_bytes() == before  # nothing touched


def test_library_resume_refuses_another_model_before_building_it(data_dir, tmp_path):
    cfg = preset("tiny").replace(data=str(data_dir), out_dir=str(tmp_path), progress=False, precision="fp32",
                                 max_steps=2, save_every=2, eval_every=2)  # fmt: skip
    train(cfg)
    with pytest.raises(ConfigError, match="--version is '6' but the run being resumed has '7'"):
        train(cfg.replace(version="6", max_steps=3), resume=True)
    with pytest.raises(ConfigError, match="nothing to resume"):
        TrainConfig.for_resume({"out_dir": str(tmp_path / "elsewhere")})


def test_resume_compares_paths_as_paths(data_dir, tmp_path, monkeypatch):
    cfg = TrainConfig(data=str(data_dir), out_dir=str(tmp_path))
    monkeypatch.chdir(data_dir.parent)
    assert cfg.replace(data="./data").resume_changes(cfg.to_dict()) == []


def test_a_configuration_that_fails_its_checks_leaves_no_run_folder(data_dir, tmp_path, capsys):
    out = tmp_path / "never"
    assert cli(_args(data_dir, out, "--n-embd", "96", "--head-size", "64")) == 2
    assert "not a multiple of head_size" in capsys.readouterr().err
    assert not out.exists()
    assert cli(_args(data_dir, out, "--max-steps", "4", "--warmup-steps", "50")) == 2
    assert "warmup_steps (50) must be between 0 and max_steps (4)" in capsys.readouterr().err
    assert not out.exists()


# ---- 2. no silent zeros ---------------------------------------------------------------------------


def test_empty_validation_split_reports_no_figure(no_val_dir, tmp_path, capsys, caplog):
    out = tmp_path / "run"
    assert cli(_args(no_val_dir, out, "--max-steps", "4", "--eval-every", "2")) == 0
    assert "no validation data (the validation split is empty)" in capsys.readouterr().out
    assert f"{NO_VALIDATION} (its validation split is empty)" in caplog.text
    rows = list(csv.DictReader(open(out / "loss.csv")))
    assert [r["val_loss"] for r in rows] == ["", NO_VALIDATION, "", NO_VALIDATION]
    assert [r["val_bpb"] for r in rows] == ["", NO_VALIDATION, "", NO_VALIDATION]
    assert (out / "loss.png").is_file()
    result = train(preset("tiny").replace(data=str(no_val_dir), out_dir=str(tmp_path / "lib"), progress=False,
                                          precision="fp32", max_steps=2))  # fmt: skip
    assert result.val_loss is None and result.val_bpb is None


def test_prepare_warns_when_a_requested_split_is_empty(tmp_path, capsys):
    (tmp_path / "docs").mkdir()
    for i in range(3):
        (tmp_path / "docs" / f"d{i}.txt").write_text(f"document {i} " * 50)
    args = ["data", "prepare", str(tmp_path / "docs"), "--out", str(tmp_path / "d"), "--tokenizer", "bytes"]
    assert cli([*args, "--val-fraction", "0.2"]) == 0
    assert "warning: the validation split is empty" in capsys.readouterr().err


# ---- 5. interruption ------------------------------------------------------------------------------


def _signal_at_call(monkeypatch, n: int, signum=signal.SIGTERM) -> None:
    """Send ``signum`` to this process from inside the ``n``-th loss computation (mid-step)."""
    real, calls = loss_module.fused_lm_loss, {"n": 0}  # the loss of the default (fused_loss) step

    def loss_then_signal(*a, **kw):
        calls["n"] += 1
        if calls["n"] == n:
            os.kill(os.getpid(), signum)
        return real(*a, **kw)

    monkeypatch.setattr(loss_module, "fused_lm_loss", loss_then_signal)


def test_a_signal_finishes_the_step_saves_and_resumes_exactly(data_dir, tmp_path, monkeypatch):
    """SIGINT (Ctrl-C) in the library; SIGTERM is sent to the CLI in a subprocess below."""
    signum = signal.SIGINT
    cfg = preset("tiny").replace(data=str(data_dir), out_dir=str(tmp_path / "a"), progress=False,
                                 precision="fp32", max_steps=6, save_every=100, eval_every=100)  # fmt: skip
    full = train(cfg)
    stopped = cfg.replace(out_dir=str(tmp_path / "b"))
    handler_before = signal.getsignal(signum)
    _signal_at_call(monkeypatch, 3, signum)  # during step 3
    with pytest.raises(Interrupted) as e:
        train(stopped)
    monkeypatch.undo()
    assert e.value.step == 3 and e.value.exit_code == 128 + signum
    assert f"after step 3/6; checkpoint saved to {tmp_path / 'b' / 'last.pt'}" in str(e.value)
    assert f"rwkvkit train --out-dir {tmp_path / 'b'} --resume" in str(e.value)
    assert signal.getsignal(signum) == handler_before  # the handlers were put back
    resumed = train(stopped, resume=True)
    assert resumed.train_losses == full.train_losses  # the step in flight was finished, not lost


def _wait_for(proc: subprocess.Popen, text: str, lines: list[str]) -> None:
    for line in proc.stderr:
        lines.append(line)
        if text in line:
            return
    raise AssertionError(f"the process ended before printing {text!r}:\n{''.join(lines)}")


def _watchdog(proc: subprocess.Popen, seconds: float) -> threading.Timer:
    """Kill a hung child (a guard against a hang, not a measurement)."""
    timer = threading.Timer(seconds, proc.kill)
    timer.start()
    return timer


def test_sigterm_stops_rwkvkit_train_cleanly(data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "rwkvkit.cli.main", *_args(data_dir, out, "--max-steps", "100000",
           "--save-every", "100000", "--eval-every", "100000", "--log-every", "1")]  # fmt: skip
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    timer, lines = _watchdog(proc, 600), []
    try:
        _wait_for(proc, "step 2/100000", lines)
        proc.send_signal(signal.SIGTERM)
        rest = proc.stderr.read()
        rc = proc.wait()
    finally:
        timer.cancel()
    assert rc == 128 + signal.SIGTERM, "".join(lines) + rest
    last = rest.strip().splitlines()[-1]
    assert (
        last.startswith("interrupted by SIGTERM after step ")
        and f"rwkvkit train --out-dir {out} --resume" in last
    )
    step = int(last.split("after step ")[1].split("/")[0])
    assert step >= 2 and torch.load(out / "last.pt", weights_only=True)["step"] == step
    assert (
        cli(
            [
                "train",
                "--data",
                str(data_dir),
                "--out-dir",
                str(out),
                "--resume",
                "--max-steps",
                str(step + 1),
            ]
        )
        == 0
    )
    assert f"done: {step + 1} steps" in capsys.readouterr().out


def test_a_second_signal_ends_the_process_at_once(tmp_path):
    """After the first signal the step goes on (here: a long sleep); the second one kills."""
    code = (
        "import sys, time\n"
        "from rwkvkit.training.interrupt import StopOnSignal\n"
        "with StopOnSignal() as stop:\n"
        "    print('ready', file=sys.stderr, flush=True)\n"
        "    while stop.signum is None: time.sleep(0.01)\n"
        "    print('first handled', file=sys.stderr, flush=True)\n"
        "    time.sleep(600)  # a step that would take ten minutes\n"
        "print('finished normally', file=sys.stderr, flush=True)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True, cwd=ROOT)
    timer, lines = _watchdog(proc, 300), []
    try:
        _wait_for(proc, "ready", lines)
        proc.send_signal(signal.SIGINT)
        _wait_for(proc, "first handled", lines)
        proc.send_signal(signal.SIGINT)
        rc = proc.wait()
    finally:
        timer.cancel()
    assert rc == -signal.SIGINT  # ended by the signal itself, inside the sleep
    assert "SIGINT received: stopping after this step" in "".join(lines)
