"""``rwkvkit info`` and ``rwkvkit generate`` for every RWKV version."""

from __future__ import annotations

import pytest
import torch

import rwkvkit
from rwkvkit.cli.main import main
from rwkvkit.models.rwkv.config import RWKVConfig
from rwkvkit.models.rwkv.init import random_checkpoint

CONFIGS = {
    "4": RWKVConfig(version="4", n_layer=2, n_embd=64, vocab_size=256),
    "5.0": RWKVConfig(version="5.0", n_layer=2, n_embd=64, vocab_size=256, head_size=32, v5_log_bonus=True),
    "5.1": RWKVConfig(version="5.1", n_layer=2, n_embd=64, vocab_size=256, head_size=32, v5_log_bonus=True),
    "5.2": RWKVConfig(version="5.2", n_layer=2, n_embd=64, vocab_size=256, head_size=32),
    "6": RWKVConfig(version="6", n_layer=2, n_embd=64, vocab_size=256, head_size=32,
                    lora_mix=8, lora_decay=8),
    "7": RWKVConfig(version="7", n_layer=2, n_embd=64, vocab_size=256, head_size=32,
                    lora_w=8, lora_a=8, lora_v=4, lora_g=16),
}  # fmt: skip


@pytest.mark.parametrize("version", sorted(CONFIGS))
def test_info_and_generate(version, tmp_path, capsys):
    path = random_checkpoint(CONFIGS[version], tmp_path / f"v{version}.pth", seed=1)
    assert main(["info", str(path)]) == 0
    assert f"RWKV-{version}" in capsys.readouterr().out

    args = ["generate", "--model", str(path), "--tokenizer", "bytes", "--prompt", "Hi",
            "--max-tokens", "8", "--temperature", "0", "--no-stream"]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out.rstrip("\n")

    model = rwkvkit.load(path)
    tok = rwkvkit.load_tokenizer("bytes")
    text = rwkvkit.generate(model, tok, "Hi", max_new_tokens=8, temperature=0)
    assert printed == "Hi" + text
    # greedy generation is the argmax chain of the model itself
    ids = tok.encode("Hi")
    with torch.no_grad():
        logits, state = model(torch.tensor([ids]))
        out = []
        for _ in range(8):
            nxt = int(logits[0, -1].argmax())
            out.append(nxt)
            logits, state = model(torch.tensor([[nxt]]), state)
    assert tok.encode(text) == out or text == tok.decode(out)
