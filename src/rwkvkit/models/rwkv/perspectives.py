"""Multiple temporal perspectives for a trained RWKV-4 (Dumitru, Peteleaza, Surdeanu, arXiv 2402.02625).

``P`` copies ("perspectives") of the hidden stream run through the *same* trained network. Every
weight is shared except the token-shift mixing vectors: perspective ``i`` has its own
``time_mix_{k,v,r}[i]`` in every time mix and ``time_mix_{k,r}[i]`` in every channel mix, so each
perspective blends the previous token differently and keeps its own recurrent state::

    x_i = LN0(emb[tokens])                    # the same start for every perspective
    for each block l, for each perspective i (run as one batch of P * B sequences):
        x_i = x_i + TimeMix_l(LN1_l(x_i); time_mix_{k,v,r}[l, i])
        x_i = x_i + ChannelMix_l(LN2_l(x_i); time_mix_{k,r}[l, i])
    h_i = LN_out(x_i)
    alpha = softmax_P(W_c mean_i h_i)         # W_c: Linear(C -> P, no bias), "convert3" in the paper's code
    logits = sum_i alpha_i head(h_i)          # a token-wise mixture of the perspectives' logits

The mixes start as copies of the trained ones; perspectives ``1 .. P-1`` get Gaussian noise of
std ``noise`` (absolute, in the units of the mixes, which lie in about [0, 1]) to break the
symmetry, perspective 0 keeps the trained values exactly, and ``W_c`` starts N(0, 0.01). Only
these are meant to be fine-tuned: the wrapper freezes every loaded weight. It adds
``L * 5 * (P - 1) * C + C * P`` parameters to the model (the P mixes replace the base's one set);
``L * 5 * P * C + C * P`` are trainable. With ``P = 1`` the wrapper computes exactly what the base
model computes (alpha is 1).

Cost: P times the compute and the recurrent state of the base model, still linear in the length.

The recurrent state is an ordinary :class:`rwkvkit.state.State` whose tensors carry a perspective
axis after the batch axis (``att_shift [L, B, P, C]``, ``wkv [L, B, P, 3, C]``,
``ffn_shift [L, B, P, C]``), so batch operations (``select``, ``cat``), ``save`` and ``load`` work
on it unchanged; it does not fit the base model (and the base model's state does not fit here).
"""

from __future__ import annotations

import math
from numbers import Integral, Real

import torch
import torch.nn as nn

from rwkvkit.errors import ConfigError, StateError
from rwkvkit.layers.rwkv4 import RWKV4TimeMix, lerp_mix
from rwkvkit.layers.token_shift import acc_dtype, token_shift
from rwkvkit.models.recurrent import RecurrentLM
from rwkvkit.models.rwkv.model import RWKV, Block
from rwkvkit.ops import wkv4
from rwkvkit.state import State, state_shapes

__all__ = ["MultiPerspectiveRWKV", "PerspectiveMixes", "train_only_time_mix"]

STATE_NAMES = ("att_shift", "wkv", "ffn_shift")


class PerspectiveMixes(nn.Module):
    """The per-perspective copies of one sub-layer's ``time_mix_*`` vectors, each ``(P, 1, 1, C)``.

    Built from a trained time mix or channel mix: perspective 0 is the trained ``(1, 1, C)`` mix,
    perspectives ``1 .. P-1`` the same plus ``noise * N(0, 1)`` drawn from ``generator``.
    """

    def __init__(self, sublayer: nn.Module, P: int, noise: float, generator: torch.Generator) -> None:
        super().__init__()
        self.names = tuple(
            n for n, _ in sublayer.named_parameters(recurse=False) if n.startswith("time_mix_")
        )
        for name in self.names:
            trained = getattr(sublayer, name).detach()  # (1, 1, C)
            mix = trained.expand(P, *trained.shape).clone()  # (P, 1, 1, C), in the base's dtype
            eps = torch.randn(mix[1:].shape, generator=generator) * noise  # drawn on the CPU in fp32
            mix[1:] += eps.to(mix)
            setattr(self, name, nn.Parameter(mix))


class MultiPerspectiveRWKV(RecurrentLM):
    """``P`` temporal perspectives of a trained RWKV-4. ``logits, state = model(tokens, state)``.

    Args:
        base: a trained :class:`rwkvkit.models.rwkv.model.RWKV` with ``config.version == "4"``. Its
            modules are shared, not copied: the wrapper sets ``requires_grad=False`` on every base
            parameter (in place) and never writes to them; converting the wrapper's dtype or device
            converts the base as well.
        n_perspectives: P >= 1 (the paper uses 4).
        noise: std of the Gaussian noise added to the mixes of perspectives 1 .. P-1 (absolute; the
            trained mixes lie in about [0, 1]); 0 gives P identical perspectives.
        seed: seeds the noise and ``W_c``'s N(0, 0.01) init (a private generator; torch's global
            one is not touched).

    Attributes:
        base: the wrapped model (frozen).
        mixes: ``mixes[l]["att"]`` and ``mixes[l]["ffn"]``: :class:`PerspectiveMixes` of layer l.
        combine: ``W_c``, ``Linear(C, P, bias=False)`` mapping the mean of the ``h_i`` to the logits
            of ``alpha``.

    Example::

        >>> mp = MultiPerspectiveRWKV(base, n_perspectives=4, noise=1e-2, seed=0)
        >>> opt = torch.optim.Adam(mp.trainable_parameters(), lr=1e-3)
        >>> logits, state, alpha = mp(tokens, return_alpha=True)   # alpha [B, T, P]
    """

    def __init__(self, base: RWKV, n_perspectives: int = 4, noise: float = 1e-2, seed: int = 0) -> None:
        super().__init__()
        if not isinstance(base, RWKV):
            raise ConfigError(f"MultiPerspectiveRWKV wraps an rwkvkit RWKV model, got {type(base).__name__}")
        if base.config.spec.time_mix is not RWKV4TimeMix:
            raise ConfigError(
                f"multiple temporal perspectives are defined for RWKV-4 (token-shift lerps "
                f"time_mix_k/v/r), got an RWKV-{base.config.version} model"
            )
        P = n_perspectives
        if isinstance(P, bool) or not isinstance(P, Integral) or P < 1:
            raise ConfigError(f"n_perspectives must be an integer >= 1 (the paper uses 4), got {P!r}")
        if isinstance(noise, bool) or not isinstance(noise, Real) or not (0 <= noise < math.inf):
            raise ConfigError(f"noise must be a finite number >= 0 (e.g. 1e-2), got {noise!r}")
        base.requires_grad_(False)
        self.base = base
        self.n_perspectives = int(P)
        self.noise = float(noise)
        g = torch.Generator().manual_seed(seed)
        self.mixes = nn.ModuleList(
            nn.ModuleDict(
                {
                    "att": PerspectiveMixes(block.att, self.n_perspectives, self.noise, g),
                    "ffn": PerspectiveMixes(block.ffn, self.n_perspectives, self.noise, g),
                }
            )
            for block in base.blocks
        )
        C = base.config.n_embd
        self.combine = nn.Linear(C, self.n_perspectives, bias=False, device=base.device, dtype=base.dtype)
        with torch.no_grad():
            w = torch.randn(self.combine.weight.shape, generator=g) * 0.01
            self.combine.weight.copy_(w)

    # ---- bookkeeping -------------------------------------------------------------------------
    @property
    def config(self):
        """The base model's config (sizes, vocabulary)."""
        return self.base.config

    @property
    def embedding(self) -> nn.Embedding:
        return self.base.emb

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters fine-tuning updates: every perspective's mixes and ``W_c``."""
        return [p for p in self.parameters() if p.requires_grad]

    def added_parameters(self) -> int:
        """Parameters beyond the base model's: ``L * 5 * (P - 1) * C + C * P``.

        The P per-perspective mixes replace the base's single set, so one set per layer is not new.
        """
        new = sum(p.numel() for p in self.mixes.parameters()) + self.combine.weight.numel()
        replaced = sum(
            getattr(sub, name).numel()
            for layer, block in zip(self.mixes, self.base.blocks, strict=True)
            for sub, mixes in ((block.att, layer["att"]), (block.ffn, layer["ffn"]))
            for name in mixes.names
        )
        return new - replaced

    @property
    def added_fraction(self) -> float:
        """``added_parameters() / base.num_params()``."""
        return self.added_parameters() / self.base.num_params()

    def initial_state(self, batch_size: int = 1) -> State:
        """The state before any token, for every perspective (what ``state=None`` means)."""
        base = State.initial(self.config, self.n_perspectives * batch_size, device=self.device)
        return State({n: self._split(base[n]) for n in STATE_NAMES}, self.config.version)

    def check_state(self, state: State, batch_size: int) -> None:
        """Raise StateError unless ``state`` is a perspectives state of this model for ``batch_size``."""
        P = self.n_perspectives
        shapes = state_shapes(self.config, batch_size)
        expected = {n: (*s[:2], P, *s[2:]) for n, s in shapes.items()}
        if not isinstance(state, State) or set(state.tensors) != set(expected):
            raise StateError("the state is not an RWKV state; pass the state this model returned, or None")
        for name, shape in expected.items():
            if tuple(state[name].shape) != shape:
                raise StateError(
                    f"state tensor {name!r} has shape {tuple(state[name].shape)} but this "
                    f"{P}-perspective model with batch size {batch_size} needs {shape} ([L, B, P, ...]); "
                    "a base model's state does not fit a MultiPerspectiveRWKV"
                )

    # Perspectives run as one batch of P * B sequences, perspective-major (row p * B + b); the
    # State keeps them as [L, B, P, ...] so that its batch axis stays axis 1.
    def _merge(self, t: torch.Tensor) -> torch.Tensor:
        """``[L, B, P, ...]`` -> ``[L, P * B, ...]``."""
        return t.transpose(1, 2).flatten(1, 2)

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        """``[L, P * B, ...]`` -> ``[L, B, P, ...]``."""
        return t.unflatten(1, (self.n_perspectives, -1)).transpose(1, 2).contiguous()

    # ---- forward -----------------------------------------------------------------------------
    def forward(
        self,
        tokens: torch.Tensor,
        state: State | None = None,
        *,
        impl: str = "auto",
        full_output: bool = True,
        return_alpha: bool = False,
    ) -> tuple[torch.Tensor, State] | tuple[torch.Tensor, State, torch.Tensor]:
        """Run a batch of token sequences through every perspective.

        Args:
            tokens: LongTensor ``[B, T]`` (a 1-D ``[T]`` is taken as ``B = 1``).
            state: the state this model returned after the previous tokens, or None.
            impl: WKV implementation, as for :class:`rwkvkit.models.rwkv.model.RWKV`.
            full_output: False: logits (and alpha) of the last position only.
            return_alpha: also return the mixture weights ``alpha`` (float32 ``[B, T, P]``).

        Returns:
            ``(logits [B, T, V] float32, new_state)``, and ``alpha`` with ``return_alpha=True``.
        """
        tokens, state = self._begin(tokens, state)
        B, T = tokens.shape
        P = self.n_perspectives
        att_shift, wkv, ffn_shift = (self._merge(state[n]) for n in STATE_NAMES)  # [L, P * B, ...]

        blocks = self.base.blocks
        x = blocks[0].ln0(self.base.emb(tokens))  # the same for every perspective: computed once
        x = x.repeat(P, 1, 1)  # [P * B, T, C]
        new = {n: [] for n in STATE_NAMES}
        for i, (block, mixes) in enumerate(zip(blocks, self.mixes, strict=True)):
            x, s_att, s_wkv, s_ffn = self._block(block, mixes, x, att_shift[i], wkv[i], ffn_shift[i], impl)
            new["att_shift"].append(s_att)
            new["wkv"].append(s_wkv)
            new["ffn_shift"].append(s_ffn)

        if not full_output:
            x = x[:, -1:]
        h = self.base.ln_out(x).unflatten(0, (P, B))  # [P, B, T, C]
        alpha = torch.softmax(self.combine(h.mean(0)).float(), dim=-1)  # [B, T, P]
        # [P, B, T, V] logits of every perspective (P times the base's logits memory), then the
        # alpha-weighted sum over perspectives; with P = 1, alpha is exactly 1 and this is the base.
        logits = torch.einsum("btp,pbtv->btv", alpha, self.base.head(h).float())
        new_state = State(
            {n: self._split(torch.stack(ts).float()) for n, ts in new.items()},
            self.config.version,
            logits=logits[:, -1].detach().clone(),
        )
        if return_alpha:
            return logits, new_state, alpha
        return logits, new_state

    def _block(
        self,
        block: Block,
        mixes: nn.ModuleDict,
        x: torch.Tensor,
        att_shift: torch.Tensor,
        wkv_state: torch.Tensor,
        ffn_shift: torch.Tensor,
        impl: str,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One RWKV-4 block on ``x [P * B, T, C]`` with perspective ``p``'s mixes on rows ``p * B ..``.

        The same math as :class:`rwkvkit.layers.rwkv4.RWKV4TimeMix` and ``RWKV4ChannelMix``; only
        the lerps differ: ``x`` and the shifted ``x`` are viewed ``[P, B, T, C]`` and each mix
        ``(P, 1, 1, C)`` broadcasts over its perspective's rows.
        """
        P = self.n_perspectives
        att, ffn, m_att, m_ffn = block.att, block.ffn, mixes["att"], mixes["ffn"]

        def lerps(xx: torch.Tensor, shift: torch.Tensor):
            cur = xx.unflatten(0, (P, -1))  # [P, B, T, C]
            prev = token_shift(xx, shift).unflatten(0, (P, -1))
            return lambda mix: lerp_mix(cur, prev, mix).flatten(0, 1)  # [P * B, T, C]

        # time mix ("att"): k, v, the decay and the WKV sums in fp32, as in RWKV4TimeMix
        xx = block.ln1(x)
        lerp = lerps(xx, att_shift)
        acc = acc_dtype(xx)
        r = torch.sigmoid(att.receptance(lerp(m_att.time_mix_r)))
        k = att.key(lerp(m_att.time_mix_k)).to(acc)
        v = att.value(lerp(m_att.time_mix_v)).to(acc)
        w = -torch.exp(att.time_decay.to(acc))
        y, wkv_state = wkv4(w, att.time_first.to(acc), k, v, wkv_state, impl=impl)
        x = x + att.output(r * y.to(xx.dtype))
        att_shift = xx[:, -1]

        # channel mix ("ffn"): sigmoid(W_r x_r) * W_v relu(W_k x_k)^2
        xx = block.ln2(x)
        lerp = lerps(xx, ffn_shift)
        r = torch.sigmoid(ffn.receptance(lerp(m_ffn.time_mix_r)))
        k = torch.relu(ffn.key(lerp(m_ffn.time_mix_k))).square()
        return x + r * ffn.value(k), att_shift, wkv_state, xx[:, -1]


def train_only_time_mix(model: RWKV) -> list[nn.Parameter]:
    """Freeze every parameter of ``model`` except its ``time_mix_*`` vectors (in place).

    The baseline of the perspectives paper with ``P = 1``: fine-tune only the trained token-shift
    mixes (RWKV-4 and RWKV-5 name them ``time_mix_*``). Returns the parameters left trainable.
    """
    named = list(model.named_parameters())
    keep = {name for name, _ in named if name.rsplit(".", 1)[-1].startswith("time_mix_")}
    if not keep:
        raise ConfigError(
            f"{type(model).__name__} has no time_mix_* parameters (RWKV-4 and RWKV-5 have them; "
            "RWKV-6 and RWKV-7 name their lerps time_maa_* / x_*)"
        )
    for name, p in named:
        p.requires_grad_(name in keep)
    return [p for name, p in named if name in keep]
