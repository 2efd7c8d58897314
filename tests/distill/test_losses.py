"""ARWKV distillation losses: the teacher's attention inputs and outputs are recorded exactly,
stage 1 trains only the time mixes and lowers the alignment error, the KD and SFT losses follow
their formulas."""

from __future__ import annotations

import pytest
import torch

from rwkvkit.distill import alignment_loss, kd_loss, sft_loss, teacher_attention_io, trainable_for_stage
from rwkvkit.errors import ConfigError
from rwkvkit.models.arwkv import ARWKV

transformers = pytest.importorskip("transformers")


def _teacher():
    cfg = transformers.Qwen2Config(
        vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
    )  # fmt: skip
    torch.manual_seed(0)
    return transformers.Qwen2ForCausalLM(cfg).eval()


def _tokens(B=2, T=12, seed=0):
    return torch.randint(0, 128, (B, T), generator=torch.Generator().manual_seed(seed))


def test_recorded_attention_io_rebuilds_the_teacher_stream():
    teacher, tokens = _teacher(), _tokens()
    io = teacher_attention_io(teacher, tokens)
    with torch.no_grad():
        hs = teacher(input_ids=tokens, output_hidden_states=True).hidden_states  # h_0 .. h_L (last normed)
        for i, layer in enumerate(teacher.model.layers):
            x, o = io[i]
            # fp32: the same modules on the same tensors
            torch.testing.assert_close(x, layer.input_layernorm(hs[i]), rtol=1e-5, atol=1e-6)
            mid = hs[i] + o
            nxt = mid + layer.mlp(layer.post_attention_layernorm(mid))
            if i + 1 < len(teacher.model.layers):  # h_{i+1} from the recorded attention output
                torch.testing.assert_close(nxt, hs[i + 1], rtol=1e-5, atol=1e-5)


def test_stage1_trains_only_the_time_mixes_and_lowers_the_error():
    teacher, tokens = _teacher(), _tokens(4, 16)
    student = ARWKV.from_transformers(teacher, head_size=16)
    frozen = {k: v.clone() for k, v in student.state_dict().items() if ".att." not in k}
    params = trainable_for_stage(student, 1)
    att_ids = {id(p) for b in student.blocks for n, p in b.att.named_parameters()
               if not (b.layer_id == 0 and n in ("v0", "v1", "v2"))}  # fmt: skip
    assert {id(p) for p in params} == att_ids
    io = teacher_attention_io(teacher, tokens)
    opt = torch.optim.Adam(params, lr=3e-3)
    first = alignment_loss(student, io).item()
    for _ in range(40):
        loss = alignment_loss(student, io)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert alignment_loss(student, io).item() < 0.5 * first
    for k, v in student.state_dict().items():
        if k in frozen:
            assert torch.equal(v, frozen[k]), k


def test_stage2_can_freeze_the_mlps():
    student = ARWKV.from_transformers(_teacher(), head_size=16)
    with_mlp = {id(p) for p in trainable_for_stage(student, 2)}
    without = {id(p) for p in trainable_for_stage(student, 2, train_mlp=False)}
    assert without < with_mlp
    assert id(student.blocks[0].mlp.up_proj.weight) in with_mlp - without
    assert id(student.emb.weight) not in with_mlp  # embeddings and head stay the teacher's
    with pytest.raises(ConfigError, match="stages are 1, 2 and 3"):
        trainable_for_stage(student, 4)


def test_kd_loss_is_the_softened_kl():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 5, 7, generator=g), torch.randn(2, 5, 7, generator=g)
    assert kd_loss(t, t).item() == pytest.approx(0.0, abs=1e-6)
    tau = 2.0
    p, q = torch.softmax(t / tau, -1), torch.softmax(s / tau, -1)
    manual = (p * (p.log() - q.log())).sum(-1).mean() * tau**2  # KL(teacher || student) per token
    torch.testing.assert_close(kd_loss(s, t, tau), manual, rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match="vocabulary"):
        kd_loss(s, t[..., :6])


def test_sft_loss_scores_only_answer_tokens():
    g = torch.Generator().manual_seed(1)
    logits, labels = torch.randn(1, 4, 9, generator=g), torch.tensor([[-100, -100, 3, 5]])
    manual = torch.nn.functional.cross_entropy(logits[0, 2:], labels[0, 2:])
    torch.testing.assert_close(sft_loss(logits, labels), manual)
