"""The default model shipped in the package: present, small, loadable, usable from the CLI."""

from __future__ import annotations

import torch

import rwkvkit
from rwkvkit.assets import DEFAULT_DIR, default_model_path
from rwkvkit.cli.main import main


def test_shipped_files():
    for name in ("model.safetensors", "tokenizer.json", "config.toml", "loss.csv", "loss.png", "train.log"):
        assert (DEFAULT_DIR / name).is_file(), name
    assert default_model_path().stat().st_size <= 25 * 10**6


def test_load_default_and_its_tokenizer():
    model = rwkvkit.load("default")
    tok = rwkvkit.load_tokenizer("default")
    assert model.config.version == "7" and model.dtype == torch.bfloat16
    assert tok.vocab_size <= model.config.vocab_size
    ids = tok.encode("def main():\n    return 0\n")
    assert tok.decode(ids) == "def main():\n    return 0\n"
    # it learned Python: after "import", " os" is far likelier than under a uniform guess
    with torch.no_grad():
        logits, _ = model(torch.tensor([tok.encode("import")]))
    logp = torch.log_softmax(logits[0, -1], -1)
    assert logp[tok.encode(" os")[0]] > -6.0 > -torch.log(torch.tensor(float(tok.vocab_size)))


def test_generate_without_model_uses_the_default(capsys):
    assert (
        main(["generate", "--prompt", "def ", "--max-tokens", "8", "--temperature", "0", "--no-stream"]) == 0
    )
    out = capsys.readouterr().out
    assert out.startswith("def ") and len(out) > len("def ")


def test_greedy_fp32_and_bf16_agree_on_the_first_32_tokens():
    tok = rwkvkit.load_tokenizer("default")
    prompt = "import os\n\n\ndef main():\n"
    texts = {}
    for dtype in ("fp32", "bf16"):
        model = rwkvkit.load("default", dtype=dtype)
        gen = rwkvkit.generate(
            model, tok, prompt, max_new_tokens=32, temperature=0, stop_tokens=(), stream=True
        )
        "".join(gen)
        texts[dtype] = gen.tokens
    assert len(texts["fp32"]) == 32 and texts["fp32"] == texts["bf16"]


def test_generate_fast_path_from_the_cli(capsys):
    """``--fast bf16`` gives the same greedy text as the reference on the default model (its weights
    are bf16 already, so only activation rounding differs), ``--fast int8`` runs."""
    args = ["generate", "--prompt", "import os\n", "--max-tokens", "8", "--temperature", "0", "--no-stream"]
    assert main(args) == 0
    ref = capsys.readouterr().out
    assert main([*args, "--fast", "bf16"]) == 0
    assert capsys.readouterr().out == ref
    assert main([*args, "--fast", "int8"]) == 0
    assert capsys.readouterr().out.startswith("import os\n")
