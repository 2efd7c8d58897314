"""The direction of imports inside rwkvkit (docs/architecture.md): parsed, not imported.

Every ``import`` statement of every module counts, deferred ones (inside functions) included, so a
dependency cannot hide in a function body.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

from benchmarks.structure import internal_imports

PKG = Path(__file__).resolve().parents[1] / "src" / "rwkvkit"

APPLICATIONS = ("vision", "timeseries", "distill")
PROGRAMS = ("cli", "demo")  # entry points: `rwkvkit ...`, `python -m rwkvkit.demo`
# what the model code (layers, models) must never import
ABOVE_MODELS = ("training", "finetune", "generation", "inference", "cli", "serve", *APPLICATIONS)


def module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@functools.cache
def imports_of(path: Path) -> list[tuple[int, str]]:
    """``(line, imported rwkvkit module)`` for every import statement of ``path``."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # `from rwkvkit.x import y` may import the module rwkvkit.x.y
            found += [(node.lineno, f"{target}.{a.name}") for a in node.names]
            found.append((node.lineno, target))
    return [(line, m) for line, m in found if m == "rwkvkit" or m.startswith("rwkvkit.")]


def modules() -> list[Path]:
    return sorted(p for p in PKG.rglob("*.py") if "__pycache__" not in p.parts)


def area(module: str) -> str:
    """``rwkvkit.ops.rwkv7.chunk`` -> ``ops``; ``rwkvkit.state`` -> ``state``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def violations(rule) -> list[str]:
    out = []
    for path in modules():
        src = area(module_name(path))
        for line, target in imports_of(path):
            dst = area(target)
            if rule(src, dst, target):
                out.append(f"{path.relative_to(PKG)}:{line} imports {target}")
    return sorted(set(out))


def test_the_parser_sees_deferred_and_relative_imports(tmp_path):
    """The checker itself: an import inside a function and a relative import are both found."""
    mod = PKG / "models" / "_probe_for_test.py"
    try:
        mod.write_text("def f():\n    from rwkvkit.training import loop\n\nfrom ..cli import main\n")
        imports_of.cache_clear()
        found = {m for _, m in imports_of(mod)}
        assert "rwkvkit.training.loop" in found and "rwkvkit.cli.main" in found
        models_to_cli = violations(lambda s, d, t: s == "models" and d == "cli")
        assert any("_probe_for_test.py" in v for v in models_to_cli)
    finally:
        mod.unlink()
        imports_of.cache_clear()


def test_ops_import_only_ops_and_errors():
    bad = violations(lambda src, dst, t: src == "ops" and dst not in ("ops", "errors") and t != "rwkvkit")
    assert not bad, "rwkvkit.ops must stay a self-contained tier of tensor operators:\n" + "\n".join(bad)


@pytest.mark.parametrize("lower", ["layers", "models"])
def test_model_code_does_not_import_what_uses_it(lower):
    bad = violations(lambda src, dst, t: src == lower and dst in ABOVE_MODELS)
    assert not bad, f"rwkvkit.{lower} imports from above it:\n" + "\n".join(bad)


@pytest.mark.parametrize("app", ["vision", "timeseries"])
def test_vision_and_time_series_do_not_import_the_lm_trainer(app):
    """They build and initialise their models from rwkvkit.models and share rwkvkit.optim and
    rwkvkit.utils.runlog with the LM trainer, not the trainer itself."""
    bad = violations(lambda src, dst, t: src == app and dst == "training")
    assert not bad, f"rwkvkit.{app} imports rwkvkit.training:\n" + "\n".join(bad)


def test_only_the_cli_imports_the_cli():
    bad = violations(lambda src, dst, t: dst == "cli" and src not in PROGRAMS)
    assert not bad, "a library package imports the command line:\n" + "\n".join(bad)


def test_only_the_cli_imports_the_server():
    """rwkvkit.serve is a top layer beside the command line (it needs the optional serve extra)."""
    bad = violations(lambda src, dst, t: dst == "serve" and src not in ("serve", *PROGRAMS))
    assert not bad, "a library package imports rwkvkit.serve:\n" + "\n".join(bad)


def test_layers_do_not_import_models():
    bad = violations(lambda src, dst, t: src == "layers" and dst == "models")
    assert not bad, "rwkvkit.layers is below rwkvkit.models:\n" + "\n".join(bad)


def test_deferred_imports_say_why():
    """An import inside a function hides a dependency; outside the command line (whose subcommands
    import their machinery on use, so that ``rwkvkit --help`` stays fast) each one says why it is
    deferred (an optional package, an import cycle with rwkvkit.formats, ...) with ``# deferred:``."""
    _, deferred = internal_imports(PKG)  # the counter of benchmarks/structure.py: one definition
    assert deferred, "the parser found no deferred import at all: the CLI has some"
    bad = []
    for path, node in deferred:
        if area(module_name(path)) in PROGRAMS:
            continue
        lines = path.read_text().splitlines()[node.lineno - 1 : node.end_lineno]
        if not any("# deferred:" in line for line in lines):
            bad.append(f"{path.relative_to(PKG)}:{node.lineno}: {lines[0].strip()}")
    assert not bad, "deferred imports without a reason (move them to module level):\n" + "\n".join(bad)
