"""benchmarks/cpu_peers.py: the pure helpers (no llama.cpp build, no model): reading the vendored
commit and llama.cpp's system info, agreement, medians and per-pass ratios, the targets, the table."""

from __future__ import annotations

import io
import tarfile

import pytest

from benchmarks import cpu_peers as cp

CHANGELOG = """# Changelog

## [Unreleased]

## [0.3.36]

- feat: update llama.cpp to ggml-org/llama.cpp@0c1e57098

## [0.3.35]

- feat: update llama.cpp to ggml-org/llama.cpp@4df29be4f
"""


def test_changelog_commit():
    assert cp.changelog_commit(CHANGELOG, "0.3.36") == "0c1e57098"
    assert cp.changelog_commit(CHANGELOG, "0.3.35") == "4df29be4f"
    with pytest.raises(ValueError, match="no section"):
        cp.changelog_commit(CHANGELOG, "0.3.99")
    with pytest.raises(ValueError, match="names no llama.cpp commit"):
        cp.changelog_commit("## [0.1.0]\n\n- fix: something\n## [0.0.9]\n- llama.cpp@abcdef12\n", "0.1.0")


def test_extract_takes_the_vendored_source_and_the_bindings(tmp_path):
    sdist = tmp_path / "pkg.tar.gz"
    files = {
        "pkg-1/CHANGELOG.md": CHANGELOG,
        "pkg-1/vendor/llama.cpp/CMakeLists.txt": "project(llama)",
        "pkg-1/vendor/llama.cpp/src/llama.cpp": "// source",
        "pkg-1/llama_cpp/llama_cpp.py": "# bindings",
        "pkg-1/tests/test_x.py": "# not taken",
    }
    with tarfile.open(sdist, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    root = tmp_path / "llama.cpp-0c1e57098"
    cp._extract(sdist, root)
    assert (root / "src" / "CMakeLists.txt").read_text() == "project(llama)"
    assert (root / "src" / "src" / "llama.cpp").is_file()
    assert (root / "py" / "llama_cpp" / "llama_cpp.py").read_text() == "# bindings"
    assert sorted(p.name for p in root.iterdir()) == ["py", "src"]
    assert not root.with_name(root.name + ".partial").exists()


def test_parse_system_info():
    text = "CPU : SSE3 = 1 | AVX = 1 | AVX512 = 1 | AMX_INT8 = 0 | AVX512_BF16 = 1 | OPENMP = 1 | "
    assert cp.parse_system_info(text) == ["SSE3", "AVX", "AVX512", "AVX512_BF16", "OPENMP"]


def test_prompt_ids_are_reproducible_and_avoid_the_control_token():
    ids = cp.prompt_ids(1000, 50)
    assert ids == cp.prompt_ids(1000, 50) and len(ids) == 1000
    assert min(ids) >= 1 and max(ids) < 50


def test_agreement():
    a = [1, 2, 3, 4, 5]
    assert cp.agreement(a, a) == {"compared": 5, "equal": 5, "first_difference": None}
    assert cp.agreement(a, [1, 2, 9, 4, 9, 9]) == {"compared": 5, "equal": 3, "first_difference": 2}
    assert cp.agreement(list(range(40)), list(range(40)), n=32)["compared"] == 32


def _run(p: int, prefill: float, decode: float, rss: float) -> dict:
    return {"pass": p, "prefill_tok_s": prefill, "decode_tok_s": decode, "peak_rss_mb": rss}


def test_summarize_pairs_runs_of_the_same_pass():
    runs = {
        "f32/fp32": {
            "llama.cpp": [_run(0, 100, 10, 800), _run(1, 200, 20, 800), _run(2, 100, 10, 800)],
            # pass 1 of rwkvkit failed: its ratios come from passes 0 and 2 only
            "rwkvkit": [_run(0, 150, 12, 900), _run(2, 130, 9, 1000)],
        },
        "q4_0/q4": {"llama.cpp": [_run(0, 100, 50, 200)]},
    }
    nbytes = {"f32/fp32": {"llama.cpp": 500, "rwkvkit": 400}, "q4_0/q4": {"llama.cpp": 100}}
    s = cp.summarize(runs, nbytes, bw=10_000)
    f32 = s["f32/fp32"]
    assert f32["llama.cpp"]["decode_tok_s"] == 10 and f32["rwkvkit"]["decode_tok_s"] == 10.5
    assert f32["ratios"]["prefill_tok_s"] == [1.5, 1.3]
    assert f32["ratios"]["decode_tok_s"] == [1.2, 0.9]
    assert f32["ratio"]["decode_tok_s"] == pytest.approx(1.05)
    # best of the passes of each side, whichever pass it came from
    assert f32["best_ratio"] == {"prefill_tok_s": 0.75, "decode_tok_s": 0.6}
    assert f32["rwkvkit"]["of_bound"] == pytest.approx(10.5 * 400 / 10_000)
    assert f32["llama.cpp"]["of_bound"] == pytest.approx(10 * 500 / 10_000)
    assert "ratio" not in s["q4_0/q4"] and "rwkvkit" not in s["q4_0/q4"]


def test_targets_met_missed_and_not_measured():
    summary = {
        "f32/fp32": {
            "rwkvkit": {"of_bound": 0.95},
            "ratio": {"decode_tok_s": 1.0, "prefill_tok_s": 1.2, "peak_rss_mb": 1.2},
        },
        "q4_0/q4": {"llama.cpp": {"of_bound": 0.5}},
    }
    load = {"q8_0/int8": {"llama.cpp": {"peak_rss_mb": 1000}, "rwkvkit": {"peak_rss_mb": 1300}}}
    status = {t.name: t.status for t in cp.evaluate_targets(summary, load)}
    assert status == {
        "f32/fp32 decode vs llama.cpp": "met",  # equal counts: the target is >= 1.0
        "f32/fp32 decode vs its bandwidth bound": "met",
        "f32/fp32 prefill vs llama.cpp": "missed",
        "f32/fp32 peak RSS vs llama.cpp": "met",  # <= 1.2
        "q4_0/q4 decode vs llama.cpp": "not measured",
        "q4_0/q4 decode vs its bandwidth bound": "not measured",
        "q4_0/q4 prefill vs llama.cpp": "not measured",
        "q4_0/q4 peak RSS vs llama.cpp": "not measured",
        "1.5B q8_0/int8 load peak RSS vs llama.cpp": "missed",
    }
    lines = [t.line() for t in cp.evaluate_targets(summary, load)]
    assert "f32/fp32 decode vs its bandwidth bound: 95% (target >= 90%): met" in lines
    assert "q4_0/q4 prefill vs llama.cpp: - (target >= 1.30x): not measured" in lines


def test_format_table_aligns_rows_with_missing_sides():
    runs = {
        "f32/fp32": {"llama.cpp": [_run(0, 100, 10, 800)], "rwkvkit": [_run(0, 150, 12, 900)]},
        "q4_0/q4": {"llama.cpp": [_run(0, 100, 50, 200)]},
    }
    lines = cp.format_table(cp.summarize(runs, {}, bw=1.0))
    assert len({len(line.rstrip()) for line in lines[1:]}) == 1  # header, rule and rows equally wide
    assert "1.50" in lines[3] and "1.20" in lines[3]
    assert lines[4].split("|")[1].split() == ["100", "-", "-"]


def test_report_lines_and_results_file(tmp_path):
    runs = {"f32/fp32": {"llama.cpp": [_run(0, 100, 10, 800)], "rwkvkit": [_run(0, 150, 12, 900)]}}
    runs["f32/fp32"]["llama.cpp"][0].update(loadavg=3.5, interpreter_rss_mb=20.0, tokens=[7, 8])
    runs["f32/fp32"]["rwkvkit"][0]["loadavg"] = 1.0
    nbytes = {"f32/fp32": {"llama.cpp": 500_000_000, "rwkvkit": 400_000_000}}
    speed = {"prompt_tokens": 1024, "decode_tokens": 64, "runs": runs, "bytes_per_token": nbytes,
             "skipped": {"q4_0/q4 rwkvkit": "ConfigError: no q4"}}  # fmt: skip
    load = {"checkpoint_bytes": 3 * 2**30, "seconds": 100.0, "pairs": {
        "q8_0/int8": {"llama.cpp": {"peak_rss_mb": 1000.0, "load_s": 0.2},
                      "rwkvkit": {"peak_rss_mb": 3000.0, "load_s": 30.0, "rss_after_load_mb": 2000.0}},
        "q4_0/q4": {"llama.cpp": {"peak_rss_mb": 900.0, "load_s": 0.2},
                    "skipped rwkvkit": "ConfigError"}}}  # fmt: skip
    summary = cp.summarize(runs, nbytes, bw=20e9)
    outputs = {"f32/fp32": {"llama.cpp vs rwkvkit": dict(cp.agreement([1, 2], [1, 3]), logits_rel_rms=1e-3)}}
    res = {
        "date": "2026-01-01", "command": "python benchmarks/cpu_peers.py", "rwkvkit_commit": "abc",
        "torch": "2.13", "gguf_writer": "rwkvkit", "args": {"jobs": 2, "threads": 2, "passes": 1},
        "llama_cpp": {"commit": "0c1e57098", "cached": True, "build_s": 274.0, "features": ["AVX2"]},
        "machine": {"cpu": "AMD EPYC", "cpus": 2, "flags": ["avx2"], "torch_cpu_capability": "AVX512",
                    "read_bandwidth": 20e9, "bf16_matmul_peak": 4e11},
        "speed": speed, "summary": summary, "outputs": outputs, "load": load,
    }  # fmt: skip
    targets = cp.evaluate_targets(summary, load["pairs"])
    lines = cp.report_lines(res, targets)
    text = "\n".join(lines)
    assert "WARNING: other work shared the CPUs (load average up to 3.5 on 2 CPUs)" in text
    assert "skipped q4_0/q4 rwkvkit: ConfigError: no q4" in text
    assert (
        "q8_0/int8  llama.cpp   1000 MB, rwkvkit   3000 MB (after loading 2000 MB, in 30 s), x 3.00" in text
    )
    assert "1.5B q8_0/int8 load peak RSS vs llama.cpp: 3.00x (target <= 1.20x): missed" in text
    out = tmp_path / "r.md"
    cp.write_results(
        out, {**res, "targets": [dict(vars(t), status=t.status) for t in targets]}, lines, targets
    )
    md = out.read_text()
    assert "| f32/fp32 prefill vs llama.cpp | 1.50x | >= 1.30x | met |" in md
    assert md.count("```") == 4  # the report and the raw JSON, each in a code block
    assert '"tokens"' not in md and '"interpreter_rss_mb": 20.0' in md
