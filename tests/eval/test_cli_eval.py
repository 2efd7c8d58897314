"""``rwkvkit eval lambada`` and ``rwkvkit eval ppl``: figures, JSON output, one-line errors."""

from __future__ import annotations

import argparse
import json
import math

import pytest

from rwkvkit.cli.main import build_parser, main

NO_BAR = "--no-progress"


def test_every_option_has_help():
    ev = build_parser()._subparsers._group_actions[0].choices["eval"]
    commands = ev._subparsers._group_actions[0].choices
    assert set(commands) == {"lambada", "ppl", "lm-eval"}
    for name, sub in commands.items():
        for action in sub._actions:
            if not isinstance(action, argparse._HelpAction):
                assert action.help and len(action.help) > 10, (name, action.dest)


@pytest.fixture
def lambada_file(tmp_path, passages):
    path = tmp_path / "lambada.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in passages[:4]))
    return path


def test_lambada_prints_a_table_and_writes_json(lambada_file, tmp_path, capsys):
    out = tmp_path / "r.json"
    args = ["eval", "lambada", "--data", str(lambada_file), "--batch-size", "2", NO_BAR, "--json", str(out)]
    assert main([*args, "--dtype", "fp32"]) == 0
    table = capsys.readouterr().out
    for word in ("accuracy", "perplexity", "documents", "tokens/s"):
        assert word in table
    saved = json.loads(out.read_text())
    assert saved["documents"] == 4 and 0 <= saved["accuracy"] <= 1 and saved["perplexity"] > 1
    # --limit, and the reference path (--fast off) gives the same figures
    assert main(["eval", "lambada", "--data", str(lambada_file), "--fast", "off", "--dtype", "fp32", NO_BAR,
                 "--json", str(out), "--limit", "4"]) == 0  # fmt: skip
    assert json.loads(out.read_text())["perplexity"] == pytest.approx(saved["perplexity"], rel=1e-4)


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "not found"),
        (
            '{"text": "fine passage"}\n{"passage": "no text field"}\n',
            ':2: expected an object with a string "text"',
        ),
        ('{"text": ""}\n', "passage 1 is empty"),
        ('{"text": "a b"}\n{"text": "oneword"}\n', "passage 2 has no space"),
    ],
)
def test_lambada_bad_input_is_one_line(tmp_path, capsys, content, message):
    path = tmp_path / "bad.jsonl"
    if content is not None:
        path.write_text(content)
    assert main(["eval", "lambada", "--data", str(path), NO_BAR]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_a_tokenizer_that_does_not_fit_the_model(lambada_file, capsys):
    pytest.importorskip("rwkv")  # the World vocabulary ships with the official package
    assert main(["eval", "lambada", "--data", str(lambada_file), "--tokenizer", "world", NO_BAR]) == 2
    err = capsys.readouterr().err
    assert "65530 ids but the model's vocabulary has only 4096" in err and err.count("\n") == 1


def test_ppl_of_files(tmp_path, capsys):
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("import os\n\nprint(os.getcwd())\n")
    b.write_text("def f(x):\n    return x * 2\n")
    out = tmp_path / "p.json"
    assert main(["eval", "ppl", str(a), str(b), NO_BAR, "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "bits/byte" in table and str(a) in table and str(b) in table
    saved = json.loads(out.read_text())
    assert saved["documents"] == 2 and saved["bytes"] == len(a.read_bytes()) + len(b.read_bytes())
    assert saved["bits_per_byte"] == pytest.approx(saved["nats"] / math.log(2) / saved["bytes"])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["missing.txt"], "missing.txt not found"),
        ([], "give text FILES or --data DIR"),
        (["x.txt", "--data", "d"], "give text FILES or --data DIR"),
        (["--data", "no_such_dir"], "neither a prepared token folder"),
        (["--data", "d", "--ctx-len", "0"], "--ctx-len must be at least 1"),
    ],
)
def test_ppl_bad_input_is_one_line(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    assert main(["eval", "ppl", *argv, NO_BAR]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_ppl_of_a_prepared_split(tmp_path, capsys):
    from rwkvkit.assets import default_tokenizer_path
    from rwkvkit.data import prepare

    src = tmp_path / "docs"
    src.mkdir()
    for i in range(3):
        (src / f"m{i}.py").write_text(f"def f{i}(x):\n    return x + {i}\n" * 5)
    prepare([src], tmp_path / "data", default_tokenizer_path(), val_files=[str(src / "m0.py")], quiet=True)
    out = tmp_path / "p.json"
    argv = ["eval", "ppl", "--data", str(tmp_path / "data"), "--ctx-len", "16", NO_BAR, "--json", str(out)]
    assert main(argv) == 0
    assert "val, windows of 16" in capsys.readouterr().out
    saved = json.loads(out.read_text())
    assert saved["bytes"] == len((src / "m0.py").read_bytes()) and saved["tokens"] > 0
