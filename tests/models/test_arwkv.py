"""ARWKV hybrid (issue 9, first piece): built from a transformers teacher it carries the teacher's
embeddings, norms, MLPs and head; one call equals any split into calls; the decoding state does not
grow with the context; it decodes through rwkvkit.generate."""

from __future__ import annotations

import pytest
import torch

import rwkvkit
from rwkvkit.errors import ConfigError, InputError
from rwkvkit.models.arwkv import ARWKV, ARWKVConfig

transformers = pytest.importorskip("transformers")


def _teacher(kind: str = "qwen2", tie: bool = True):
    common = dict(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tie)  # fmt: skip
    if kind == "qwen2":
        cfg = transformers.Qwen2Config(**common)
        model = transformers.Qwen2ForCausalLM(cfg)
    else:
        cfg = transformers.LlamaConfig(**common)
        model = transformers.LlamaForCausalLM(cfg)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():  # norms away from 1 so a missed copy shows
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


@pytest.mark.parametrize("kind,tie", [("qwen2", True), ("llama", False)])
def test_student_carries_the_teacher_weights(kind, tie):
    teacher = _teacher(kind, tie)
    student = ARWKV.from_transformers(teacher, head_size=16)
    assert student.config.n_layer == 2 and student.config.n_head == 4 and student.config.tie_embeddings == tie
    x = torch.randn(2, 5, 64, generator=torch.Generator().manual_seed(1))
    layer, mine = teacher.model.layers[1], student.blocks[1]
    with torch.no_grad():
        # fp32, the same operations: MLP and norms equal the teacher's to rounding
        torch.testing.assert_close(mine.mlp(x), layer.mlp(x), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(mine.ln1(x), layer.input_layernorm(x), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(mine.ln2(x), layer.post_attention_layernorm(x), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(student.ln_out(x), teacher.model.norm(x), rtol=1e-5, atol=1e-6)
    assert torch.equal(student.emb.weight, teacher.model.embed_tokens.weight)
    assert torch.equal(student.head.weight, teacher.lm_head.weight)


def test_one_call_equals_pieces_and_tokens():
    student = ARWKV.from_transformers(_teacher(), head_size=16).eval()
    tokens = torch.randint(0, 256, (2, 23), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full, s_full = student(tokens)
        a, s = student(tokens[:, :9])
        b, s = student(tokens[:, 9:], s)
        steps, st = [], None
        for t in range(tokens.shape[1]):
            out, st = student(tokens[:, t : t + 1], st)
            steps.append(out)
    # fp32: chunked WKV against the one-token form, 23 tokens
    torch.testing.assert_close(torch.cat([a, b], 1), full, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-4, atol=1e-5)
    for name in ("att_shift", "wkv"):
        torch.testing.assert_close(s[name], s_full[name], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(st[name], s_full[name], rtol=1e-4, atol=1e-5)


def test_decoding_state_does_not_grow_with_context():
    student = ARWKV.from_transformers(_teacher(), head_size=16).eval()
    sizes = []
    with torch.no_grad():
        for n in (4, 64, 300):
            _, st = student(torch.randint(0, 256, (1, n), generator=torch.Generator().manual_seed(n)))
            sizes.append(sum(t.numel() * t.element_size() for t in st.tensors.values()))
    assert sizes[0] == sizes[1] == sizes[2]


def test_generate_decodes_a_student():
    student = ARWKV.from_transformers(_teacher(), head_size=16).eval()
    tok = rwkvkit.load_tokenizer("bytes")
    a = rwkvkit.generate(student, tok, "abc", max_new_tokens=8, top_k=1, seed=0)
    b = rwkvkit.generate(student, tok, "abc", max_new_tokens=8, top_k=1, seed=1)
    assert isinstance(a, str) and a == b  # greedy: the seed does not matter


def test_errors():
    with pytest.raises(ConfigError, match="multiple of head_size"):
        ARWKVConfig(vocab_size=8, n_layer=1, n_embd=48, intermediate_size=8, head_size=64)
    with pytest.raises(ConfigError, match="positive integer"):
        ARWKVConfig(vocab_size=8, n_layer=0, n_embd=64, intermediate_size=8)
    with pytest.raises(ConfigError, match="Qwen2/Llama"):
        ARWKV.from_transformers(torch.nn.Linear(2, 2))
    student = ARWKV.from_transformers(_teacher(), head_size=16)
    with pytest.raises(InputError, match="outside the model's vocabulary"):
        student(torch.tensor([[3, 256]]))


@pytest.mark.parametrize("tie", [True, False])
def test_saved_student_reloads_with_rwkvkit_load(tmp_path, tie):
    student = ARWKV.from_transformers(_teacher("qwen2", tie), head_size=16).eval()
    path = tmp_path / "student.safetensors"
    student.save(path)
    loaded = rwkvkit.load(path)
    assert isinstance(loaded, ARWKV) and loaded.config == student.config
    assert (loaded.head.weight is loaded.emb.weight) == tie
    tokens = torch.randint(0, 256, (2, 17), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        a, sa = student(tokens)
        b, sb = loaded(tokens)
    assert torch.equal(a, b) and torch.equal(sa["wkv"], sb["wkv"])  # the same bits, the same arithmetic
    with pytest.raises(rwkvkit.errors.CheckpointError, match="ARWKV model"):
        rwkvkit.formats.describe(path)  # `rwkvkit info` says what it is instead of failing deep inside
