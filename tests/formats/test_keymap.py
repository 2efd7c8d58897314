"""The key-map engine and the layout tables: exact inverses, well-formed tables, and the same math.

A lossless round trip alone cannot catch a table that is self-consistent but wrong (RWKV-6's five
lerp blocks put in the wrong order, say), so the fla maps are also checked by computing the
official formulas from the official tensors and fla's forward (as written in ``fla/layers/rwkv6.py``
and ``rwkv7.py``) from the mapped tensors.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rwkvkit.errors import CheckpointError
from rwkvkit.formats import blinkdl, hf, hf_fla
from rwkvkit.formats.keymap import (
    IDENTITY,
    SQUEEZE,
    STACK,
    TRANSPOSE,
    count_layers,
    expand,
    foreign_patterns,
    lora_blocks_in,
    lora_blocks_out,
    to_foreign,
    to_native,
)
from rwkvkit.models.rwkv.config import RWKVConfig

V6 = RWKVConfig(version="6", n_layer=2, n_embd=32, vocab_size=50, head_size=16, lora_mix=4, lora_decay=8)
V7 = RWKVConfig(version="7", n_layer=2, n_embd=32, vocab_size=50, head_size=16,
                lora_w=8, lora_a=4, lora_v=4, lora_g=8)  # fmt: skip


def _random_sd(config: RWKVConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) for k, s in blinkdl.expected_shapes(config).items()}


@pytest.mark.parametrize(
    "transform, shapes",
    [
        (IDENTITY, [(3, 4)]),
        (TRANSPOSE, [(3, 5)]),
        (SQUEEZE, [(1, 1, 7)]),
        (STACK, [(1, 1, 6)] * 5),
        (lora_blocks_in((3, 0, 1, 2, 4)), [(8, 5 * 3)]),
        (lora_blocks_out((3, 0, 1, 2, 4)), [(5, 3, 8)]),
    ],
)
def test_transforms_are_exact_inverses(transform, shapes):
    xs = [torch.randn(s) for s in shapes]
    back = transform.to_native(transform.to_foreign(*xs))
    assert len(back) == len(xs)
    for a, b in zip(xs, back):
        assert a.shape == b.shape and torch.equal(a, b)


def test_block_permutation_moves_whole_blocks():
    w1 = torch.arange(2 * 5 * 3, dtype=torch.float32).reshape(2, 15)  # C=2, blocks of D=3 columns
    out = lora_blocks_in((3, 0, 1, 2, 4)).to_foreign(w1)  # (5D, C), fla order r, w, k, v, g
    blocks = w1.reshape(2, 5, 3)
    assert torch.equal(out[0:3], blocks[:, 3].t()) and torch.equal(out[3:6], blocks[:, 0].t())


@pytest.mark.parametrize("layout", hf.LAYOUTS, ids=lambda lay: lay.name)
def test_tables_are_one_to_one(layout):
    rows = expand(layout.table, 3)
    natives = [n for ns, _, _ in rows for n in ns]
    foreigns = [f for _, f, _ in rows if f is not None]
    assert len(natives) == len(set(natives)) and len(foreigns) == len(set(foreigns))
    for natives_, foreign, _ in (r for r in expand(layout.table, 1)):
        assert all("{i}" not in n for n in natives_) and (foreign is None or "{i}" not in foreign)
    assert layout.marker in foreigns and layout.model_types and layout.source


@pytest.mark.parametrize("layout", hf.LAYOUTS, ids=lambda lay: lay.name)
def test_tables_cover_every_official_key(layout):
    """Every official key of every version the layout holds has exactly one row."""
    for version in layout.versions:
        cfg = {"6": V6, "7": V7}.get(version) or RWKVConfig(
            version=version, n_layer=3, n_embd=32, vocab_size=50, head_size=16
        )
        cfg = cfg.replace(n_layer=3)
        natives = {n for ns, _, _ in expand(layout.table, 3) for n in ns}
        assert natives == set(blinkdl.expected_shapes(cfg)), layout.name


def test_literal_row_overrides_the_template_at_its_layer():
    rows = expand(hf_fla.TABLE_V7, 2)
    by_native = {ns[0]: f for ns, f, _ in rows}
    assert by_native["blocks.0.att.v0"] is None
    assert by_native["blocks.1.att.v0"] == "model.layers.1.attn.v_lora.lora.2.bias"


def test_count_layers():
    keys = ["model.layers.0.attn.r_k", "model.layers.11.attn.r_k", "model.norm.weight"]
    assert count_layers(keys, foreign_patterns(hf_fla.TABLE_V7)) == 12
    assert count_layers(["x"], foreign_patterns(hf_fla.TABLE_V7)) == 0


def test_wrong_version_is_refused_by_name():
    with pytest.raises(CheckpointError, match="keys with no place in this layout") as e:
        to_foreign(_random_sd(V6), hf_fla.TABLE_V7, 2, "fla RWKV-7")
    assert "\n" not in str(e.value)


def test_missing_and_unexpected_foreign_keys_are_named():
    foreign = to_foreign(_random_sd(V7), hf_fla.TABLE_V7, 2, "fla")
    del foreign["model.layers.1.attn.k_k"]
    foreign["model.layers.1.attn.surprise"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as e:
        to_native(foreign, hf_fla.TABLE_V7, 2, "dir")
    msg = str(e.value)
    assert (
        "missing keys [model.layers.1.attn.k_k]" in msg
        and "unexpected keys [model.layers.1.attn.surprise]" in msg
    )


def test_bad_shape_in_a_transform_is_named():
    foreign = to_foreign(_random_sd(V6), hf_fla.TABLE_V6, 2, "fla")
    foreign["model.layers.0.attn.x_proj.2.weight"] = torch.zeros(7)  # 1-D: cannot be transposed back
    with pytest.raises(CheckpointError, match="x_proj.2.weight"):
        to_native(foreign, hf_fla.TABLE_V6, 2, "dir")


def test_old_fla_x_x_is_split():
    sd = _random_sd(V7)
    foreign = to_foreign(sd, hf_fla.TABLE_V7, 2, "fla")
    for i in range(2):
        p = f"model.layers.{i}.attn."
        foreign[p + "x_x"] = torch.cat(
            [foreign.pop(p + x).reshape(1, -1) for x in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g")]
        )
    back = to_native(hf_fla.RWKV7.upgrade(foreign), hf_fla.TABLE_V7, 2, "old fla")
    assert all(torch.equal(back[k], sd[k]) for k in back)


# ---- the fla maps compute the official formulas -------------------------------------------------


def test_fla_rwkv6_maps_compute_the_official_ddlerp_and_decay():
    C, D = V6.n_embd, V6.lora_mix
    sd = _random_sd(V6, seed=3)
    fsd = to_foreign(sd, hf_fla.TABLE_V6, 2, "fla")
    x, prev = torch.randn(2, 5, C), torch.randn(2, 5, C)
    d = prev - x  # BlinkDL's (previous - current); fla's ``delta``
    a, f = "blocks.1.att.", "model.layers.1.attn."

    # official (docs/rwkv6.md#data-dependent-token-shift; order w, k, v, r, g)
    m = torch.tanh((x + d * sd[a + "time_maa_x"]) @ sd[a + "time_maa_w1"]).view(-1, 5, D).transpose(0, 1)
    mw, mk, mv, mr, mg = torch.bmm(m, sd[a + "time_maa_w2"]).view(5, 2, 5, C).unbind(0)
    official = {n: x + d * (sd[a + f"time_maa_{n}"] + mm) for n, mm in zip("wkvrg", (mw, mk, mv, mr, mg))}
    official_decay = (
        sd[a + "time_decay"] + torch.tanh(official["w"] @ sd[a + "time_decay_w1"]) @ sd[a + "time_decay_w2"]
    )

    # fla's RWKV6Attention.forward (fla/layers/rwkv6.py; order r, w, k, v, g)
    h = F.linear(x + d * fsd[f + "x_proj.0.mu"], fsd[f + "x_proj.0.linear.weight"]).view(2, 5, 5, D)
    h = torch.einsum("btnr,hnr->btnh", torch.tanh(h), fsd[f + "x_proj.2.weight"].view(C, 5, -1))
    fla = {n: x + d * mu for n, mu in zip("rwkvg", (h + fsd[f + "x_bias"]).unbind(-2))}
    lora = f + "w_proj.linear.lora."
    fla_decay = F.linear(
        torch.tanh(F.linear(fla["w"], fsd[lora + "0.weight"])), fsd[lora + "2.weight"], fsd[lora + "2.bias"]
    )

    for n in "rwkvg":
        torch.testing.assert_close(fla[n], official[n], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fla_decay, official_decay.expand_as(fla_decay), rtol=1e-5, atol=1e-5)
    # channel mix lerps: LerpLinear.mu
    torch.testing.assert_close(
        x + d * fsd["model.layers.1.ffn.key.mu"], x + d * sd["blocks.1.ffn.time_maa_k"], rtol=0, atol=0
    )


def test_fla_rwkv7_loras_compute_the_official_formulas():
    sd = _random_sd(V7, seed=4)
    fsd = to_foreign(sd, hf_fla.TABLE_V7, 2, "fla")
    x = torch.randn(2, 5, V7.n_embd)
    a, f = "blocks.1.att.", "model.layers.1.attn."

    def lora(name: str, act, bias: bool = True) -> torch.Tensor:  # fla's LoRA.lora Sequential
        p = f + f"{name}_lora.lora."
        return F.linear(
            act(F.linear(x, fsd[p + "0.weight"])), fsd[p + "2.weight"], fsd[p + "2.bias"] if bias else None
        )

    ident = lambda t: t  # noqa: E731
    cases = {
        "w": (lora("w", torch.tanh), sd[a + "w0"] + torch.tanh(x @ sd[a + "w1"]) @ sd[a + "w2"]),
        "a": (lora("a", ident), sd[a + "a0"] + (x @ sd[a + "a1"]) @ sd[a + "a2"]),
        "v": (lora("v", ident), sd[a + "v0"] + (x @ sd[a + "v1"]) @ sd[a + "v2"]),
        "g": (lora("g", torch.sigmoid, bias=False), torch.sigmoid(x @ sd[a + "g1"]) @ sd[a + "g2"]),
    }
    for name, (got, want) in cases.items():
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=name)
    assert torch.equal(fsd[f + "k_k"] * x, sd[a + "k_k"] * x)  # (C,) and (1, 1, C) broadcast alike
