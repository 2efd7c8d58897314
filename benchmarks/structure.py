"""Counts that show the shape of the code base (issue 17), for this checkout or another one.

    python benchmarks/structure.py                    # this checkout
    python benchmarks/structure.py --root ../old      # another checkout (a git worktree of an old commit)

Printed:

* version branches: lines of ``src/rwkvkit`` that compare an RWKV version (``version ==``,
  ``!=``, ``in``, ``not in``, ``version.startswith``, or ``== "7"`` / ``in ("4", ...`` with a
  version literal), outside the version registry
  ``models/rwkv/versions.py`` (and the layers each version's spec names);
* internal imports (``import rwkvkit...`` / ``from rwkvkit... import``, relative ones included) and
  how many of them are deferred (inside a function body rather than at module level);
* lines of ``generation/engine.py`` + ``generation/generate.py``.

``duplicates`` (the pairs of repeated code) is a separate tool: ``duplicates --repo src``.
"""

from __future__ import annotations

import argparse
import ast
import re
from pathlib import Path

_LITERAL = r"['\"](?:4|5\.[012]|6|7)['\"]"
VERSION_BRANCH = re.compile(
    r"\bversion\b\s*(==|!=|\bin\b|\bnot in\b)|\bversion\.startswith\("
    rf"|(==|!=)\s*{_LITERAL}|\bin \(\s*{_LITERAL}"
)
REGISTRY = ("models/rwkv/versions.py",)


def python_files(pkg: Path) -> list[Path]:
    return sorted(p for p in pkg.rglob("*.py") if "__pycache__" not in p.parts)


def version_branches(pkg: Path) -> list[str]:
    hits = []
    for path in python_files(pkg):
        rel = path.relative_to(pkg).as_posix()
        if rel in REGISTRY:
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if VERSION_BRANCH.search(code) and not code.lstrip().startswith(("RWKV", '"', "'")):
                hits.append(f"{rel}:{n}: {line.strip()}")
    return hits


def internal_imports(pkg: Path) -> tuple[int, list[tuple[Path, ast.stmt]]]:
    """(how many internal imports, the deferred ones as ``(file, statement)``). An import inside a
    function is deferred; one under a module-level ``if TYPE_CHECKING:`` or ``try:`` is not."""
    total, deferred = 0, []
    for path in python_files(pkg):
        tree = ast.parse(path.read_text())
        top = set(id(n) for n in tree.body)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                internal = any(a.name.split(".")[0] == "rwkvkit" for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                internal = node.level > 0 or (node.module or "").split(".")[0] == "rwkvkit"
            else:
                continue
            if not internal:
                continue
            total += 1
            if id(node) not in top and not _in_type_checking(tree, node):
                deferred.append((path, node))
    return total, deferred


def _in_type_checking(tree: ast.Module, node: ast.AST) -> bool:
    for stmt in tree.body:
        if isinstance(stmt, ast.If) and "TYPE_CHECKING" in ast.unparse(stmt.test):
            if any(n is node for n in ast.walk(stmt)):
                return True
        if isinstance(stmt, ast.Try) and any(n is node for n in stmt.body):
            return True  # a module-level try/except import (optional dependency) is not deferred
    return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=str(Path(__file__).resolve().parents[1]), help="checkout to count")
    ap.add_argument("--list", action="store_true", help="also list each version branch and deferred import")
    args = ap.parse_args()
    pkg = Path(args.root) / "src" / "rwkvkit"
    branches = version_branches(pkg)
    total, deferred = internal_imports(pkg)
    gen = pkg / "generation"
    gen_lines = sum(len((gen / f).read_text().splitlines()) for f in ("engine.py", "generate.py"))
    print(f"version branches outside the registry: {len(branches)}")
    print(f"internal imports: {total}, deferred: {len(deferred)}")
    print(f"lines of generation/engine.py + generation/generate.py: {gen_lines}")
    if args.list:
        where = [f"{path.relative_to(pkg).as_posix()}:{node.lineno}" for path, node in deferred]
        print("\n".join(["", "version branches:", *branches, "", "deferred imports:", *where]))


if __name__ == "__main__":
    main()
