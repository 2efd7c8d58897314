"""The main job of ``make demo``.

Until a trained default model exists, it builds a random RWKV-7 checkpoint of the official 0.1B
shape (L12, C768, V65536, LoRA 64/64/32/128) in the official format, shows ``rwkvkit info`` for it,
streams a generation (random weights: the text is noise, the machinery is real), and measures the
parity of rwkvkit's logits with the official ``rwkv`` package on the same file.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch


def _section(title: str) -> None:
    print(f"\n=== {title} " + "=" * max(0, 70 - len(title)), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="demo_out", help="folder for the demo checkpoint (default demo_out)")
    parser.add_argument("--preset", default="rwkv7-0.1b", help="model shape (default rwkv7-0.1b)")
    parser.add_argument("--max-tokens", type=int, default=48, help="tokens to generate (default 48)")
    args = parser.parse_args(argv)

    import rwkvkit
    from rwkvkit.cli.main import main as cli
    from rwkvkit.models.rwkv.config import RWKVConfig
    from rwkvkit.models.rwkv.init import random_checkpoint

    torch.set_num_threads(max(1, torch.get_num_threads()))
    cfg = RWKVConfig.from_name(args.preset)
    path = Path(args.out) / f"{args.preset}-random.pth"
    _section(f"1. a random official-format checkpoint of the {args.preset} shape")
    if not path.exists():
        t0 = time.perf_counter()
        random_checkpoint(cfg, path, seed=0, dtype=torch.bfloat16)  # bf16, like official releases
        print(f"wrote {path} in {time.perf_counter() - t0:.1f} s")
    else:
        print(f"reusing {path}")

    _section("2. rwkvkit info")
    cli(["info", str(path)])

    _section("3. rwkvkit generate --stream (random weights: expect noise)")
    prompt = "The Eiffel tower is in the city of"
    t0 = time.perf_counter()
    cli(["generate", "--model", str(path), "--prompt", prompt, "--max-tokens", str(args.max_tokens),
         "--seed", "0", "--dtype", "fp32"])  # fmt: skip
    print(f"({time.perf_counter() - t0:.1f} s including loading)")

    _section("4. parity with the official rwkv package (strategy 'cpu fp32', same file)")
    try:
        import rwkv  # noqa: F401
    except ImportError:
        print("the official package is not installed (pip install rwkv); skipping")
        return 0
    from rwkvkit.utils.official import run_official

    tok = rwkvkit.load_tokenizer("world")
    tokens = tok.encode(
        "\n\nUser: What is RWKV? Please answer in one paragraph.\n\nAssistant: RWKV is a recurrent"
    )
    cut = len(tokens) // 2
    t0 = time.perf_counter()
    ref = run_official(path, tokens, cut)
    print(f"official package: {time.perf_counter() - t0:.1f} s for {len(tokens)} tokens in three modes")
    model = rwkvkit.load(path, dtype="fp32")
    with torch.no_grad():
        seq, _ = model(torch.tensor([tokens]))
        state, tok_logits = None, []
        for t in tokens:
            lg, state = model(torch.tensor([[t]]), state)
            tok_logits.append(lg[0, 0])
        _, st = model(torch.tensor([tokens[:cut]]))
        resume, _ = model(torch.tensor([tokens[cut:]]), st)
    scale = ref["seq"].abs().max().item()
    print(f"{len(tokens)} tokens, max |logit| = {scale:.2f}")
    print(f"  whole sequence       max |logit difference| = {(seq[0] - ref['seq']).abs().max().item():.2e}")
    tok_err = (torch.stack(tok_logits) - ref["tok"]).abs().max().item()
    print(f"  token by token       max |logit difference| = {tok_err:.2e}")
    res_err = (resume[0] - ref["resume"]).abs().max().item()
    print(f"  resumed from a state max |logit difference| = {res_err:.2e}")
    print("  (acceptance bound: 1e-4)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
