"""The lm-evaluation-harness adapter on local tasks (tests/eval/tasks: no download), against hand
computations with the model, and the ``rwkvkit eval lm-eval`` command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

import rwkvkit
from rwkvkit.cli.main import main
from tests.eval.conftest import hand_score

lm_eval = pytest.importorskip("lm_eval")
from lm_eval.tasks import TaskManager  # noqa: E402

from rwkvkit.eval.harness import RWKVKitLM  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TASKS = ROOT / "tests" / "eval" / "tasks"  # their data_files are relative to the repository root
TOL = 1e-4  # fp32 model: the fast path (batched, from shared context states) vs one plain forward


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(ROOT)


@pytest.fixture(scope="module")
def results():
    lm = RWKVKitLM(pretrained=rwkvkit.load("default", dtype="fp32"), tokenizer="default", batch_size=3)
    manager = TaskManager(include_path=str(TASKS), include_defaults=False)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_DATASETS_OFFLINE", "1")
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.chdir(ROOT)
        out = lm_eval.simple_evaluate(
            model=lm,
            tasks=["rwkvkit_mc", "rwkvkit_rolling", "rwkvkit_gen"],
            task_manager=manager,
            log_samples=True,
            bootstrap_iters=0,
        )
    return out


def hand_loglikelihood(model, tok, context: str, continuation: str) -> tuple[float, bool]:
    """The documented convention, written out: [0] + context ids, whitespace at the context's end
    moved to the continuation, the continuation's ids taken from the encoding of the whole."""
    stripped = context.rstrip()
    continuation = context[len(stripped) :] + continuation
    ctx = tok.encode(stripped) if stripped else []
    cont = tok.encode(stripped + continuation)[len(ctx) :]
    return hand_score(model, [0, *ctx, *cont], 1 + len(ctx))


def test_multiple_choice_loglikelihoods(results, model, tok):
    samples = results["samples"]["rwkvkit_mc"]
    assert len(samples) == 5 and results["results"]["rwkvkit_mc"]["acc,none"] == 1.0
    seen_empty_context = seen_trailing_space = False
    for sample in samples:
        for (context, continuation), (lp, greedy) in zip(sample["arguments"], sample["filtered_resps"]):
            lp0, greedy0 = hand_loglikelihood(model, tok, context, continuation)
            assert lp == pytest.approx(lp0, abs=TOL), (context, continuation)
            assert greedy == greedy0
            seen_empty_context |= context == ""
            seen_trailing_space |= context != context.rstrip()
    assert seen_empty_context and seen_trailing_space


def test_rolling_loglikelihood(results, model, tok):
    samples = results["samples"]["rwkvkit_rolling"]
    assert len(samples) == 3
    for sample in samples:
        (text,) = sample["arguments"][0]
        lp0, _ = hand_score(model, [0, *tok.encode(text)], 1)
        assert sample["filtered_resps"][0] == pytest.approx(lp0, abs=TOL)
    assert results["results"]["rwkvkit_rolling"]["bits_per_byte,none"] > 0


def test_generate_until_equals_generate(results, model, tok):
    samples = results["samples"]["rwkvkit_gen"]
    assert len(samples) == 3
    for sample in samples:
        context, kwargs = sample["arguments"][0]
        want = rwkvkit.generate(
            model,
            tok,
            [0, *tok.encode(context)],
            max_new_tokens=kwargs["max_gen_toks"],
            temperature=0,
            stop=["\n"],
        )
        assert sample["filtered_resps"][0] == want
        assert "\n" not in want


def test_batch_size_and_shared_contexts_do_not_change_the_scores(model, tok):
    """Requests sharing a context (scored from one state) and lone ones, any batch size, agree."""
    reqs = [
        SimpleNamespace(args=(c, x))
        for c in ("import", "def f(x):\n    return", "", "class A:\n  ")
        for x in (" os", " x + 1", " None")
    ]
    got = {
        bs: RWKVKitLM(pretrained=model, tokenizer=tok, batch_size=bs).loglikelihood(reqs, True)
        for bs in (1, 5)
    }
    for r, a, b in zip(reqs, got[1], got[5]):
        assert b[0] == pytest.approx(a[0], abs=1e-5) and a[1] == b[1]
        assert a[0] == pytest.approx(hand_loglikelihood(model, tok, *r.args)[0], abs=TOL)


def test_prefix_empty_puts_the_separator_before_empty_contexts_only(model, tok):
    lm = RWKVKitLM(pretrained=model, tokenizer=tok, prefix="empty")
    (lp, _), (lp_empty, _) = lm.loglikelihood(
        [SimpleNamespace(args=("import", " os")), SimpleNamespace(args=("", " os"))], True
    )
    ids = tok.encode("import os")
    n = len(tok.encode("import"))
    assert lp == pytest.approx(hand_score(model, ids, n)[0], abs=TOL)
    assert lp_empty == pytest.approx(hand_score(model, [0, *tok.encode(" os")], 1)[0], abs=TOL)


def test_bad_model_arguments(model, tok):
    with pytest.raises(rwkvkit.RWKVKitError, match="prefix must be one of"):
        RWKVKitLM(pretrained=model, tokenizer=tok, prefix="never")
    with pytest.raises(rwkvkit.RWKVKitError, match="batch_size"):
        RWKVKitLM(pretrained=model, tokenizer=tok, batch_size=0)
    lm = RWKVKitLM(pretrained=model, tokenizer=tok)
    with pytest.raises(rwkvkit.RWKVKitError, match="num_beams"):
        lm.generate_until([SimpleNamespace(args=("x", {"until": ["\n"], "num_beams": 4}))], True)


def test_registered_under_rwkvkit():
    assert lm_eval.api.registry.get_model("rwkvkit") is RWKVKitLM


def test_cli_runs_local_tasks(tmp_path, capsys):
    out = tmp_path / "results.json"
    args = ["eval", "lm-eval", "--include-path", str(TASKS), "--tasks", "rwkvkit_mc,rwkvkit_rolling"]
    assert main([*args, "--limit", "3", "--output", str(out), "--model-args", "prefix=always"]) == 0
    table = capsys.readouterr().out
    assert "rwkvkit_mc" in table and "bits_per_byte" in table
    saved = json.loads(out.read_text())
    assert saved["results"]["rwkvkit_mc"]["acc,none"] == 1.0
    assert len(saved["samples"]["rwkvkit_mc"]) == 3
    assert main(["eval", "lm-eval", "--include-path", str(TASKS), "--tasks", "no_such_task"]) == 2
    assert "unknown lm-eval task no_such_task" in capsys.readouterr().err


def test_the_harness_command_line_knows_the_model(tmp_path):
    """``python -m rwkvkit.eval``: lm-eval's own CLI (its defaults: device cuda:0, which falls back to
    the CPU here, and batch size 1) with the rwkvkit model registered."""
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    argv = ["run", "--model", "rwkvkit", "--model_args", "pretrained=default", "--tasks", "rwkvkit_mc"]
    argv += ["--include_path", str(TASKS), "--limit", "2", "--output_path", str(tmp_path)]
    done = subprocess.run(
        [sys.executable, "-m", "rwkvkit.eval", *argv], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "rwkvkit_mc" in done.stdout and "acc" in done.stdout
    assert list(tmp_path.rglob("results_*.json"))
