"""World tokenizer speed: rwkvkit against the official ``rwkv`` TRIE_TOKENIZER, in the same run.

Encodes ~1 MB of Python standard-library source (the first ``.py`` files of the stdlib folder in
name order) with both, checks that the ids are identical, and prints MB/s for each and the ratio;
then the same for decoding. Times are the best of ``--repeat`` runs (after one warm-up run), so
they measure the steady state on a shared machine.

    python benchmarks/tokenizer.py [--mb 1.0] [--repeat 5] [--file TEXT_FILE]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from rwkvkit.tokenizer import WorldTokenizer, load_tokenizer, world_vocab_path
from rwkvkit.utils.perf import best_time


def stdlib_text(n_bytes: int) -> str:
    """About ``n_bytes`` of UTF-8 text from the stdlib's .py files (whole characters only)."""
    parts, size = [], 0
    for path in sorted(Path(os.__file__).parent.glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        parts.append(text)
        size += len(text.encode("utf-8"))
        if size >= n_bytes:
            break
    return "".join(parts).encode("utf-8")[:n_bytes].decode("utf-8", errors="ignore")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=1.0, help="megabytes of text to encode (default 1)")
    ap.add_argument("--repeat", type=int, default=5, help="timed runs per measurement (default 5)")
    ap.add_argument("--file", type=Path, help="encode (the first --mb MB of) this UTF-8 file instead")
    args = ap.parse_args()

    from rwkv.rwkv_tokenizer import TRIE_TOKENIZER  # the package's tokenizer module only

    n_bytes = int(args.mb * 1_000_000)
    if args.file:
        raw = args.file.read_bytes()[:n_bytes]
        text, source = raw.decode("utf-8", errors="ignore"), str(args.file)
    else:
        text, source = stdlib_text(n_bytes), "Python stdlib source"
    mb = len(text.encode("utf-8")) / 1e6
    print(f"python {platform.python_version()}, numpy {np.__version__}, {os.cpu_count()} CPUs")
    print(f"text: {mb:.3f} MB of {source}")

    t = time.perf_counter()
    ours = WorldTokenizer.from_file(world_vocab_path(), name="world")  # uncached, to time construction
    t_ours_load = time.perf_counter() - t
    t = time.perf_counter()
    official = TRIE_TOKENIZER(str(world_vocab_path()))
    t_off_load = time.perf_counter() - t
    print(f"construction: rwkvkit {t_ours_load:.3f} s, official {t_off_load:.3f} s")
    assert load_tokenizer("world").encode("Hello world") == [33155, 40213]

    ids = ours.encode(text)
    ref = official.encode(text)
    if ids != ref:
        first = next((i for i, (a, b) in enumerate(zip(ids, ref)) if a != b), min(len(ids), len(ref)))
        sys.exit(f"MISMATCH: ids differ from the official tokenizer at token {first}")
    print(f"ids identical: {len(ids)} tokens ({mb * 1e6 / len(ids):.2f} bytes/token)")

    rows = []
    t_ours = best_time(lambda: ours.encode(text), args.repeat)
    t_off = best_time(lambda: official.encode(text), max(1, min(args.repeat, 3)))
    rows.append(("encode", t_ours, t_off))
    assert ours.decode(ids) == official.decode(ids) == text
    t_ours = best_time(lambda: ours.decode(ids), args.repeat)
    t_off = best_time(lambda: official.decode(ids), args.repeat)
    rows.append(("decode", t_ours, t_off))

    print(f"{'':8s} {'rwkvkit':>16s} {'official':>16s} {'speed-up':>9s}")
    for name, a, b in rows:
        speed = f"{mb / a:10.2f} MB/s {mb / b:10.2f} MB/s {b / a:8.2f}x"
        print(f"{name:8s} {speed}   ({a * 1e3:.1f} ms vs {b * 1e3:.1f} ms)")


if __name__ == "__main__":
    main()
