"""The main job of ``make demo``: the default model, shipped with rwkvkit, at work.

1. ``rwkvkit info default``: the RWKV-7 trained on Python's standard library (no training here);
2. it writes Python code from a prompt, streamed, and the decoding speed is printed;
3. the same weights, converted to the official ``.pth`` format, run in the official ``rwkv``
   package: the largest logit difference shows rwkvkit computes what the reference computes.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

import rwkvkit
from rwkvkit.cli.main import main as cli
from rwkvkit.formats import convert
from rwkvkit.utils.official import run_official

PROMPT = 'def read_config(path):\n    """Read a configuration file and return a dict."""\n'


def _section(title: str) -> None:
    print(f"\n=== {title} " + "=" * max(0, 74 - len(title)), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", default="demo_out", help="folder for the converted checkpoint (default demo_out)"
    )
    parser.add_argument("--max-tokens", type=int, default=200, help="tokens to generate (default 200)")
    parser.add_argument("--prompt", default=PROMPT, help="the code to continue")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    args = parser.parse_args(argv)

    _section("1. rwkvkit info default")
    cli(["info", "default"])

    _section("2. the default model writes Python (temperature 0.7, top-p 0.9, penalties 0.4)")
    model = rwkvkit.load("default", dtype="fp32")
    tok = rwkvkit.load_tokenizer("default")
    sys.stdout.write(args.prompt)
    t0 = time.perf_counter()
    gen = rwkvkit.generate(model, tok, args.prompt, max_new_tokens=args.max_tokens, temperature=0.7,
                           top_p=0.9, presence_penalty=0.4, frequency_penalty=0.4, seed=args.seed,
                           stream=True)  # fmt: skip
    first = None
    for piece in gen:
        if first is None:
            first = time.perf_counter()
        sys.stdout.write(piece)
        sys.stdout.flush()
    t1 = time.perf_counter()
    n = len(gen.tokens)
    prompt_tokens = len(tok.encode(args.prompt))
    print(f"\n\n[{n} tokens in {t1 - t0:.2f} s: prefill of {prompt_tokens} tokens + first token "
          f"{(first or t1) - t0:.3f} s, then {max(n - 1, 0) / max(t1 - (first or t1), 1e-9):.0f} tokens/s "
          f"decoding (fp32 weights, batch 1)]")  # fmt: skip

    _section("3. the same weights in the official rwkv package (cpu fp32)")
    try:
        import rwkv  # noqa: F401
    except ImportError:
        print("the official package is not installed (pip install rwkv); skipping")
        return 0

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pth = out / "default-model.pth"
    convert("default", pth, to="blinkdl", dtype="fp32")
    tokens = tok.encode(args.prompt)
    cut = len(tokens) // 2
    ref = run_official(pth, tokens, cut)
    with torch.no_grad():
        seq, _ = model(torch.tensor([tokens]))
        state, per_token = None, []
        for t in tokens:
            lg, state = model(torch.tensor([[t]]), state)
            per_token.append(lg[0, 0])
    print(f"{len(tokens)} prompt tokens, max |logit| {ref['seq'].abs().max().item():.1f}")
    print(f"  whole sequence   max |logit difference| = {(seq[0] - ref['seq']).abs().max().item():.2e}")
    tok_err = (torch.stack(per_token) - ref["tok"]).abs().max().item()
    print(f"  token by token   max |logit difference| = {tok_err:.2e}   (bound in the tests: 1e-4)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
