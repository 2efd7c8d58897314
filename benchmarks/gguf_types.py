"""What each GGUF type costs a model: file size, weight and logit error, cross-entropy.

Writes ``--model`` (default: the model shipped with rwkvkit, an RWKV-7 of 7.3 M parameters) as a
GGUF of every type rwkvkit writes, loads it back, and compares it with the model as loaded in
float32: the largest relative RMS error of a weight matrix, the relative RMS error of the logits,
and the cross-entropy over ``--tokens`` tokens of a Python standard library file (``--text``).
Prints a markdown table (the README's GGUF table comes from the default run).

    python benchmarks/gguf_types.py [--model M] [--tokenizer T] [--text textwrap.py] [--tokens 2048]
"""

from __future__ import annotations

import argparse
import sysconfig
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

import rwkvkit
from rwkvkit.formats import save
from rwkvkit.utils.testing import rel_rms

DTYPES = ("f32", "bf16", "q8_0", "q4_0")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--model", default="default", help="a checkpoint of RWKV-6 or 7 (default: the shipped model)"
    )
    ap.add_argument("--tokenizer", default="default", help="its tokenizer (a name or a path)")
    ap.add_argument("--text", default="textwrap.py", help="a file of the Python standard library to score")
    ap.add_argument("--tokens", type=int, default=2048, help="how many of its tokens to score")
    args = ap.parse_args()

    model = rwkvkit.load(args.model, dtype=torch.float32)
    tok = rwkvkit.load_tokenizer(args.tokenizer)
    text = (Path(sysconfig.get_paths()["stdlib"]) / args.text).read_text()
    ids = torch.tensor([tok.encode(text)[: args.tokens]])

    def score(m):
        with torch.no_grad():
            logits = m(ids)[0]
        return logits, F.cross_entropy(logits[0, :-1], ids[0, 1:]).item()

    ref, ce_ref = score(model)
    weights = {k: v for k, v in model.state_dict().items() if v.dim() == 2 and v.numel() > 10_000}
    print(f"{args.model}: {model.config}; {ids.shape[1]} tokens of {args.text}, cross-entropy {ce_ref:.4f}")
    print("| dtype | MiB | worst matrix rel. RMS | logits rel. RMS | cross-entropy |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as d:
        for dtype in DTYPES:
            path = save(model, Path(d) / f"m_{dtype}.gguf", "gguf", dtype=dtype)
            loaded = rwkvkit.load(path, dtype=torch.float32)
            logits, ce = score(loaded)
            sd = loaded.state_dict()
            worst = max(rel_rms(w, sd[k]) for k, w in weights.items())
            print(
                f"| {dtype} | {path.stat().st_size / 2**20:.2f} | {worst:.4f} | {rel_rms(ref, logits):.4f} | "
                f"{ce:.4f} ({ce - ce_ref:+.4f}) |"
            )


if __name__ == "__main__":
    main()
