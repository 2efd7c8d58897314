"""Instruction data for the stage 3 demonstration, made from the standard library corpus: for every
documented function, the prompt is its docstring's first line and its signature, the answer is the
function's source. Deterministic; written to runs/distill/sft.jsonl (JSON lines, prompt / answer).

    python experiments/distill/sft_data.py --out runs/distill/sft.jsonl
"""

from __future__ import annotations

import argparse
import ast
import json
from pathlib import Path


def examples(max_answer_chars: int = 1200):
    from rwkvkit.data.corpus import stdlib_sources

    for path in stdlib_sources():
        try:
            source = path.read_text(encoding="utf-8")
            tree = ast.parse(source)
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef):
                continue
            doc = ast.get_docstring(node)
            body = ast.get_source_segment(source, node)
            if not doc or not body or len(body) > max_answer_chars or node.name.startswith("_"):
                continue
            summary = doc.strip().splitlines()[0].strip()
            args = ast.unparse(node.args)
            yield {"prompt": f"# Task: {summary}\n# Signature: def {node.name}({args})\n", "answer": body}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/distill/sft.jsonl", help="where the JSON lines go")
    args = ap.parse_args()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with out.open("w") as f:
        for ex in examples():
            f.write(json.dumps(ex) + "\n")
            n += 1
    print(f"{n} examples -> {out}")


if __name__ == "__main__":
    main()
