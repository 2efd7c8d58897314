"""The stdlib corpus (test folders excluded, whole-file split), document keys, the stable hash split."""

from __future__ import annotations

import sysconfig
from pathlib import Path

import pytest

from rwkvkit.cli.main import main
from rwkvkit.data import list_sources, open_tokens, split_score, stdlib_sources, stdlib_split
from rwkvkit.data.corpus import STDLIB_EXCLUDED_DIRS, is_validation


def test_stdlib_sources_exclude_test_folders():
    root = Path(sysconfig.get_paths()["stdlib"])
    files = stdlib_sources()
    rel = [f.relative_to(root).as_posix() for f in files]
    assert len(files) > 300 and rel == sorted(rel)
    assert all(f.suffix == ".py" for f in files)
    assert {"os.py", "json/decoder.py", "asyncio/base_events.py"} <= set(rel)
    for r in rel:
        assert not set(r.split("/")[:-1]) & {"test", "tests", "idle_test", "site-packages", "__pycache__"}
    assert {"test", "tests", "idle_test"} <= STDLIB_EXCLUDED_DIRS
    # there are test folders to exclude (the check above is not vacuous)
    assert any(
        p.is_dir() for p in (root / "test", root / "unittest" / "test", root / "idlelib" / "idle_test")
    )


def test_stdlib_split_whole_files():
    files = stdlib_sources()
    train, val = stdlib_split(0.05, seed=0)
    assert sorted(train + val) == sorted(files) and not set(train) & set(val)
    root = Path(sysconfig.get_paths()["stdlib"])
    assert val == [f for f in files if is_validation("stdlib/" + f.relative_to(root).as_posix(), 0, 0.05)]
    train20, val20 = stdlib_split(20, seed=1)
    assert len(val20) == 20 and len(train20) == len(files) - 20
    assert stdlib_split(20, seed=1) == (train20, val20)
    assert stdlib_split(20, seed=2)[1] != val20
    with pytest.raises(TypeError):
        stdlib_split("0.1")  # type: ignore[arg-type]


def test_split_score_is_pinned():
    # BLAKE2b of "seed\0key": the same on every machine and Python version
    assert split_score("corpus/a.txt", 0) == pytest.approx(0.6615200200471659, abs=0)
    assert split_score("stdlib/json/decoder.py", 3) == pytest.approx(0.016646280267243994, abs=0)


def test_document_keys(tmp_path):
    (tmp_path / "c" / "sub").mkdir(parents=True)
    (tmp_path / "c" / "sub" / "x.TXT").write_text("x")
    (tmp_path / "c" / "y.rst").write_text("y")
    (tmp_path / "c" / "z.json").write_text("{}")
    (tmp_path / "d.jsonl").write_text('{"text": "a"}\n')
    files = list_sources([tmp_path / "c", tmp_path / "d.jsonl", tmp_path / "c" / "y.rst"])
    assert [(f.key, f.jsonl) for f in files] == [
        ("c/sub/x.TXT", False),
        ("c/y.rst", False),
        ("d.jsonl", True),
    ]
    files = list_sources([tmp_path / "c"], extensions=["json"])
    assert [f.key for f in files] == ["c/z.json"]


def test_cli_stdlib_and_errors(tmp_path, capsys):
    out = tmp_path / "std"
    assert (
        main(["data", "prepare", "--stdlib", str(out), "--tokenizer", "bytes", "--val-fraction", "0.05"]) == 0
    )
    printed = capsys.readouterr().out
    assert "train:" in printed and "val:" in printed
    tf = open_tokens(out, "val")
    _, val = stdlib_split(0.05)
    assert tf.meta["splits"]["val"]["documents"] == sum(1 for f in val if f.stat().st_size > 0)
    assert tf.meta["stdlib"]["root"] == sysconfig.get_paths()["stdlib"]
    assert main(["data", "info", str(out)]) == 0 and "val:" in capsys.readouterr().out

    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("some text")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "e.md").write_text("")
    cases = [
        (["data", "prepare", str(tmp_path / "missing"), "--out", str(tmp_path / "o")], "does not exist"),
        (["data", "prepare", str(src)], "--out"),
        (["data", "prepare", str(src), "--out", str(tmp_path / "o"), "--tokenizer", "nonsense"], "nonsense"),
        (["data", "prepare", str(src), "--out", str(tmp_path / "o"), "--tokenizer", "bpe:x"], "bpe:N"),
        (["data", "prepare", str(empty), "--out", str(tmp_path / "o")], "empty corpus"),
        (["data", "prepare", str(src), "-o", str(tmp_path / "o"), "--val-files", "zz.txt"], "not among"),
        (["data", "prepare", str(src), "-o", str(tmp_path / "o"), "--val-fraction", "0.1", "--val-files",
          "src/a.txt"], "exclude each other"),
        (["data", "info", str(src)], "meta.json"),
    ]  # fmt: skip
    for argv, match in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and match in err, err
    # one document: the validation split is empty, which is a warning (silenced by --quiet)
    assert main(["data", "prepare", str(src), "-o", str(tmp_path / "o"), "--tokenizer", "bytes"]) == 0
    assert "warning: the validation split is empty" in capsys.readouterr().err
    assert main(["data", "prepare", str(src), "-o", str(tmp_path / "o"), "--tokenizer", "bytes", "-q"]) == 0
    assert capsys.readouterr() == ("", "")
