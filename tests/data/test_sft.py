"""Fine-tuning data: JSONL pairs and messages rendered in the World chat format, the loss mask beside the
tokens (prepare, open_tokens, the sampler's and the evaluation windows' masks), one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import rwkvkit
from rwkvkit.cli.main import main
from rwkvkit.data import WindowSampler, iter_eval_windows, open_tokens, prepare
from rwkvkit.data.binidx import DataError
from rwkvkit.data.chat import Message, parse_example, world_segments
from rwkvkit.errors import ConfigError

SYSTEM, USER, ASSISTANT = "system", "user", "assistant"

# (JSON line, the rendered document, its answers as they are trained on; None: plain text)
EXAMPLES = [
    ({"prompt": "Hi there", "answer": "Hello!"}, "User: Hi there\n\nAssistant: Hello!\n\n", [" Hello!\n\n"]),
    ({"question": " Q?\r\n", "answer": "A.\n\n\nmore "}, "User: Q?\n\nAssistant: A.\nmore\n\n",
     [" A.\nmore\n\n"]),
    ({"instruction": "Add", "input": "2+2", "output": "4", "id": 7}, "User: Add\n2+2\n\nAssistant: 4\n\n",
     [" 4\n\n"]),
    ({"instruction": "Say hi", "input": "", "output": "hi"}, "User: Say hi\n\nAssistant: hi\n\n",
     [" hi\n\n"]),
    ({"text": "plain text, every token counts"}, "plain text, every token counts", None),
    ({"messages": [{"role": SYSTEM, "content": "Be brief."}, {"role": USER, "content": "x"},
                   {"role": ASSISTANT, "content": "y"}, {"role": USER, "content": "z\n\n\nzz"},
                   {"role": ASSISTANT, "content": "w"}]},
     "System: Be brief.\n\nUser: x\n\nAssistant: y\n\nUser: z\nzz\n\nAssistant: w\n\n", [" y\n\n", " w\n\n"]),
    # developer is system; an answer that follows no user turn gets its own cue; a last user turn is
    # context (no cue, and the separator after it is no target)
    ({"messages": [{"role": "developer", "content": "S"}, {"role": ASSISTANT, "content": "a"},
                   {"role": USER, "content": "u"}]},
     "System: S\n\nAssistant: a\n\nUser: u\n\n", [" a\n\n"]),
]  # fmt: skip


def write_jsonl(path: Path, objs: list) -> Path:
    path.write_text("".join(json.dumps(o) + "\n" for o in objs), encoding="utf-8")
    return path


def test_rendering_of_each_shape():
    for obj, text, answers in EXAMPLES:
        if answers is None:
            continue
        segs = world_segments(parse_example(obj), complete=True)
        assert "".join(s.text for s in segs) == text
        assert [s.text for s in segs if s.answer] == answers
    # the prompt form (what the server continues) of the same conversation differs only at its end
    msgs = [Message(USER, "Hi"), Message(ASSISTANT, "Hel")]
    assert [s.text for s in world_segments(msgs)] == ["User: Hi\n\nAssistant:", " Hel"]
    assert [s.text for s in world_segments(msgs, complete=True)] == ["User: Hi\n\nAssistant:", " Hel\n\n"]
    assert [s.text for s in world_segments([Message(USER, "Hi")])] == ["User: Hi\n\nAssistant:"]
    assert [s.text for s in world_segments([Message(USER, "Hi")], complete=True)] == ["User: Hi\n\n"]
    assert [s.text for s in world_segments([Message(SYSTEM, "S")])] == ["System: S\n\n", "Assistant:"]


@pytest.fixture(scope="module", params=["bytes", "world"])
def sft(request, tmp_path_factory):
    """EXAMPLES prepared with one tokenizer; the second example is held out, so both splits have masks."""
    root = tmp_path_factory.mktemp("sft")
    src = write_jsonl(root / "sft.jsonl", [obj for obj, _, _ in EXAMPLES])
    meta = prepare([src], root / "out", request.param, val_files=["sft.jsonl:2"], quiet=True)
    return request.param, root / "out", meta


def test_prepare_writes_the_loss_mask(sft):
    spec, out, meta = sft
    tok = rwkvkit.load_tokenizer(spec)
    assert meta["version"] == 2 and meta["jsonl_format"] == "auto" and meta["chat_format"] == "world"
    expected = {"train": [e for i, e in enumerate(EXAMPLES) if i != 1], "val": [EXAMPLES[1]]}
    for split, examples in expected.items():
        s = meta["splits"][split]
        tf = open_tokens(out, split)
        assert s["mask"] == f"{split}.mask" and (out / s["mask"]).stat().st_size == s["tokens"] == len(tf)
        assert tf.loss_mask.dtype == np.uint8 and set(np.unique(tf.loss_mask)) <= {0, 1}
        assert s["target_tokens"] == int(tf.loss_mask.sum())
        assert s["chat_documents"] == sum(a is not None for _, _, a in examples)
        off = tf.doc_offsets()
        assert len(off) - 1 == len(examples) == s["documents"]
        for (obj, text, answers), a, b in zip(examples, off[:-1], off[1:]):
            ids, mask = np.asarray(tf.tokens[a:b]).tolist(), tf.loss_mask[a:b].astype(bool)
            assert ids[-1] == 0 and tok.decode(ids[:-1]) == text
            if answers is None:
                assert mask.all()
                continue
            # encoded segment by segment, exactly as the server encodes a conversation
            segs = world_segments(parse_example(obj), complete=True)
            assert ids[:-1] == [i for sg in segs for i in tok.encode(sg.text)]
            assert tok.decode([i for i, m in zip(ids[:-1], mask[:-1]) if m]) == "".join(answers)
            # the separator counts after a final answer (the model learns to stop), not after a user turn
            assert mask[-1] == segs[-1].answer
            if spec == "bytes":  # id 0 is the NUL byte: decode(tokens[mask]) is the answers + separator
                assert tok.decode(np.asarray(ids)[mask].tolist()) == "".join(answers) + "\x00" * bool(
                    mask[-1]
                )


def test_text_only_folders_have_no_mask(tmp_path):
    src = write_jsonl(tmp_path / "t.jsonl", [{"text": "one"}, {"text": "two"}])
    meta = prepare([src], tmp_path / "o", "bytes", val_fraction=0, quiet=True)
    assert meta["version"] == 1 and meta["splits"]["train"]["mask"] is None
    assert meta["splits"]["train"]["target_tokens"] == meta["splits"]["train"]["tokens"]
    assert open_tokens(tmp_path / "o").loss_mask is None and not (tmp_path / "o" / "train.mask").exists()
    # a folder written before masks existed (no "mask" keys) opens as before
    old = json.loads((tmp_path / "o" / "meta.json").read_text())
    for s in old["splits"].values():
        for k in ("mask", "target_tokens", "chat_documents"):
            del s[k]
    (tmp_path / "o" / "meta.json").write_text(json.dumps(old))
    tf = open_tokens(tmp_path / "o")
    assert tf.loss_mask is None and len(tf) == 8
    x, m = WindowSampler(tf, ctx_len=3).next_batch_with_mask(2)
    assert x.shape == (2, 4) and m.shape == (2, 3) and m.all()
    # preparing text over a folder with masks removes them
    src2 = write_jsonl(tmp_path / "c.jsonl", [{"prompt": "p", "answer": "a"}])
    assert prepare([src2], tmp_path / "o2", "bytes", val_fraction=0, quiet=True)["version"] == 2
    assert (tmp_path / "o2" / "train.mask").is_file()
    prepare([src], tmp_path / "o2", "bytes", val_fraction=0, quiet=True)
    assert not (tmp_path / "o2" / "train.mask").exists() and open_tokens(tmp_path / "o2").loss_mask is None


def test_mask_starts_late_and_binidx(tmp_path):
    # text documents before the first chat example are all targets; binidx storage carries the mask too
    objs = [{"text": "aaaa"}, {"text": "bb"}, {"prompt": "p", "answer": "q"}, {"text": "c"}]
    src = write_jsonl(tmp_path / "m.jsonl", objs)
    prepare([src], tmp_path / "o", "bytes", val_fraction=0, format="binidx", quiet=True)
    tf = open_tokens(tmp_path / "o" / "train")  # the binidx prefix, meta.json beside it
    rendered = "User: p\n\nAssistant:"
    expected = [1] * 8 + [0] * len(rendered) + [1] * 5 + [1] * 2  # " q\n\n" and its separator
    assert tf.loss_mask.tolist() == expected and tf.tokenizer.decode(tf.tokens.tolist()).startswith(
        "aaaa\0bb\0"
    )
    assert open_tokens(tmp_path / "o" / "train.bin").loss_mask.tolist() == expected
    (tmp_path / "o" / "train.mask").write_bytes(b"\1" * 3)
    with pytest.raises(DataError, match="loss mask has 3 entries"):
        open_tokens(tmp_path / "o")
    (tmp_path / "o" / "train.mask").unlink()
    with pytest.raises(DataError, match="loss mask file .* is missing"):
        open_tokens(tmp_path / "o")


def test_jsonl_format_option(tmp_path):
    src = write_jsonl(tmp_path / "a.jsonl", [{"prompt": "p", "answer": "a", "text": "t"}])
    with pytest.raises(DataError, match="has both 'text' and 'prompt'"):
        prepare([src], tmp_path / "o", "bytes", val_fraction=0, quiet=True)
    meta = prepare([src], tmp_path / "o", "bytes", val_fraction=0, jsonl_format="text", quiet=True)
    assert meta["splits"]["train"]["mask"] is None and open_tokens(tmp_path / "o").tokens.tolist() == [116, 0]
    meta = prepare([src], tmp_path / "o", "bytes", val_fraction=0, jsonl_format="chat", quiet=True)
    assert meta["splits"]["train"]["chat_documents"] == 1
    # other sources stay plain text whatever the JSONL format
    (tmp_path / "notes.txt").write_text("notes")
    both = [tmp_path / "notes.txt", src]
    prepare(both, tmp_path / "o", "bytes", val_fraction=0, jsonl_format="chat", quiet=True)
    assert open_tokens(tmp_path / "o").loss_mask[:6].tolist() == [1] * 6
    with pytest.raises(ConfigError, match="jsonl_format"):
        prepare([src], tmp_path / "o", "bytes", jsonl_format="xml", quiet=True)


msg = {"role": USER, "content": "x"}
ans = {"role": ASSISTANT, "content": "y"}
BAD = [
    ([1, 2], "auto", "expected a JSON object, not list"),
    ("prompt", "auto", "expected a JSON object, not str"),
    ({"content": "x"}, "auto", "string field 'text'"),
    ({"prompt": "p"}, "auto", "'prompt' needs an 'answer' field"),
    ({"answer": "a"}, "auto", "'answer' without its prompt"),
    ({"instruction": "i", "answer": "a"}, "auto", "'instruction' needs an 'output' field"),
    ({"prompt": "p", "answer": ""}, "auto", "empty 'answer'"),
    ({"instruction": "i", "output": " \n\n "}, "auto", "empty 'output'"),
    ({"prompt": 3, "answer": "a"}, "auto", "'prompt' must be a string, not int"),
    ({"question": "q", "answer": None}, "auto", "'answer' must be a string, not NoneType"),
    ({"instruction": "i", "input": 5, "output": "o"}, "auto", "'input' must be a string, not int"),
    ({"prompt": "p", "question": "q", "answer": "a"}, "auto", "has both 'prompt' and 'question'"),
    ({"messages": [msg, ans], "prompt": "p"}, "auto", "has both 'messages' and 'prompt'"),
    ({"messages": []}, "auto", "'messages' must be a non-empty list"),
    ({"messages": "hi"}, "auto", "'messages' must be a non-empty list"),
    ({"messages": [msg]}, "auto", "no assistant message"),
    ({"messages": [{"role": SYSTEM, "content": "s"}, msg]}, "auto", "no assistant message"),
    ({"messages": [msg, {"role": ASSISTANT, "content": "  "}]}, "auto", "messages[1] is an empty assistant"),
    ({"messages": [{"role": "bot", "content": "x"}, ans]}, "auto", "messages[0].role must be"),
    ({"messages": [{"role": USER}, ans]}, "auto", "messages[0] must be an object with 'role' and 'content'"),
    ({"messages": ["x", ans]}, "auto", "messages[0] must be an object"),
    ({"messages": [{"role": USER, "content": ["x"]}, ans]}, "auto", "'content' must be a string, not list"),
    ({"text": "t", "messages": [msg, ans]}, "auto", "has both 'text' and 'messages'"),
    ({"text": "t"}, "chat", "expected 'prompt' and 'answer'"),
    ({"prompt": "p", "answer": "a"}, "text", "string field 'text'"),
]  # fmt: skip


@pytest.mark.parametrize("obj,fmt,match", BAD)
def test_bad_lines_are_one_line_errors(tmp_path, obj, fmt, match):
    src = write_jsonl(
        tmp_path / "bad.jsonl", [{"text": "fine"} if fmt == "text" else {"prompt": "p", "answer": "a"}]
    )
    with open(src, "a") as f:
        f.write(json.dumps(obj) + "\n")
    with pytest.raises(DataError) as e:
        prepare([src], tmp_path / "o", "bytes", jsonl_format=fmt, quiet=True)
    msg_ = str(e.value)
    assert msg_.startswith(f"{src.resolve()}:2: ") and match in msg_ and "\n" not in msg_, msg_
    assert not (tmp_path / "o" / "meta.json").exists()


def test_cli(tmp_path, capsys):
    src = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": "p", "answer": "a"}, {"text": "t"}])
    assert main(["data", "prepare", str(src), "-o", str(tmp_path / "o"), "--tokenizer", "bytes", "-q",
                 "--val-fraction", "0"]) == 0  # fmt: skip
    assert main(["data", "info", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    line = out.splitlines()[2]  # under the train line, aligned with its columns
    assert line.split() == [
        "7",
        "targets",
        "1",
        "chat",
        "examples",
        "(loss",
        "mask",
        "train.mask)",
    ]  # " a\n\n" 0 t 0
    assert line.index("targets") == out.splitlines()[1].index("tokens")
    assert open_tokens(tmp_path / "o").loss_mask.sum() == 7
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "p", "answer": "a"}, {"messages": [msg]}])
    cases = [
        ([str(bad)], "bad.jsonl:2: 'messages' has no assistant message"),
        ([str(src), "--jsonl-format", "text"], "sft.jsonl:1: expected a JSON object with a string field"),
        ([str(src), "--jsonl-format", "chat"], "sft.jsonl:2: expected 'prompt' and 'answer'"),
    ]  # fmt: skip
    for argv, match in cases:
        assert main(["data", "prepare", *argv, "-o", str(tmp_path / "o2"), "--tokenizer", "bytes"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and match in err, err
    with pytest.raises(SystemExit):  # argparse: exit 2 with the choices
        main(["data", "prepare", str(src), "-o", str(tmp_path / "o2"), "--jsonl-format", "xml"])
    assert "invalid choice" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# Windows with masks


def data(n: int) -> tuple[np.ndarray, np.ndarray]:
    a = np.arange(n, dtype=np.int64) % 65000
    return a, (a % 3 == 0).astype(np.uint8)  # value = position: the mask of a token is known from it


def test_sampler_masks_line_up_with_windows_and_resume():
    a, lm = data(997)
    plain = WindowSampler(a, ctx_len=8, seed=11)
    masked = WindowSampler(a, ctx_len=8, seed=11, loss_mask=lm)
    got = []
    for _ in range(60):  # several epochs (124 windows each)
        x, m = masked.next_batch_with_mask(5)
        assert x.dtype == torch.long and x.shape == (5, 9) and m.dtype == torch.bool and m.shape == (5, 8)
        assert torch.equal(x, plain.next_batch(5))  # the same windows and the same position as next_batch
        assert torch.equal(m, x[:, 1:] % 3 == 0)  # mask[:, t] is the mask of target x[:, t + 1]
        got.append((x, m))
    for k in (0, 24, 59):
        s = WindowSampler(a, ctx_len=8, seed=11, loss_mask=lm)
        for _ in range(k):
            s.next_batch(5)  # next_batch and next_batch_with_mask advance alike
        resumed = WindowSampler(a, ctx_len=8, seed=11, loss_mask=lm)
        resumed.load_state_dict(s.state_dict())
        for x, m in got[k:]:
            x2, m2 = resumed.next_batch_with_mask(5)
            assert torch.equal(x2, x) and torch.equal(m2, m)
    ranks = [WindowSampler(a, ctx_len=8, seed=2, rank=r, world_size=2, loss_mask=lm) for r in range(2)]
    x, m = (torch.cat(t) for t in zip(*(s.next_batch_with_mask(3) for s in ranks)))
    assert torch.equal(m, x[:, 1:] % 3 == 0)
    assert WindowSampler(a, ctx_len=8).next_batch_with_mask(2)[1].all()  # no mask: every target counts
    # the mask may also be given per call (the sampler then holds only the tokens)
    x, m = WindowSampler(a, ctx_len=8, seed=11).next_batch_with_mask(5, lm)
    assert torch.equal(x, got[0][0]) and torch.equal(m, got[0][1])
    with pytest.raises(DataError, match="loss mask has 5 entries"):
        WindowSampler(a, ctx_len=8, loss_mask=lm[:5])
    with pytest.raises(DataError, match="loss mask has 5 entries"):
        WindowSampler(a, ctx_len=8).next_batch_with_mask(2, lm[:5])


def test_sampler_takes_the_token_files_mask(sft):
    _, out, _ = sft
    tf = open_tokens(out, "train")
    x, m = WindowSampler(tf, ctx_len=16, seed=0).next_batch_with_mask(4)
    starts = WindowSampler(tf, ctx_len=16, seed=0).next_starts(4)
    for row, mrow, st in zip(x, m, starts):
        assert row.tolist() == tf.tokens[st : st + 17].tolist()
        assert mrow.tolist() == tf.loss_mask[st + 1 : st + 17].astype(bool).tolist()


@pytest.mark.parametrize("n,ctx,bs", [(1, 4, 2), (13, 4, 3), (100, 7, 4), (0, 3, 2)])
@pytest.mark.parametrize("context_token", [0, None])
def test_eval_windows_score_the_masked_targets_once(n, ctx, bs, context_token):
    a, lm = data(n)
    a = a + 1
    seen = []
    for (x, y, m), (x0, y0, m0) in zip(
        iter_eval_windows(a, ctx, bs, context_token=context_token, loss_mask=lm),
        iter_eval_windows(a, ctx, bs, context_token=context_token),
    ):
        assert torch.equal(x, x0) and torch.equal(y, y0) and torch.equal(m, m0 & ((y - 1) % 3 == 0))
        seen.extend(y[m].tolist())
    first = 0 if context_token is not None else 1
    assert seen == a[first:][lm[first:] == 1].tolist()
    with pytest.raises(DataError, match="loss mask"):
        next(iter_eval_windows(a, ctx, bs, loss_mask=lm[:-1] if n else np.ones(1, np.uint8)))


def test_eval_windows_on_prepared_data(sft):
    spec, out, meta = sft
    tf = open_tokens(out, "train")
    ys = [y[m] for _, y, m in iter_eval_windows(tf, 8, 3, loss_mask=tf.loss_mask)]
    assert int(sum(len(y) for y in ys)) == meta["splits"]["train"]["target_tokens"]
    assert torch.cat(ys).tolist() == np.asarray(tf.tokens)[tf.loss_mask == 1].tolist()
