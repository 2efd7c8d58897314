"""LoRA and PiSSA adapters on the projection matrices of an RWKV model.

A LoRA adapter (Hu et al. 2021) leaves a frozen projection ``W [out, in]`` alone and learns a
low-rank correction beside it::

    y = x W^T + b  +  s * (dropout(x) A^T) B^T        A [r, in], B [out, r], s = alpha / r

* ``init="lora"``: ``A`` Kaiming-uniform (``a = sqrt(5)``, the bound ``1 / sqrt(in)`` of an
  ``nn.Linear``), ``B = 0``: a fresh adapter adds exact zeros, so the model's output is bitwise
  that of the base model.
* ``init="pissa"`` (Meng et al. 2024, "PiSSA: principal singular values and singular vectors
  adaptation"): ``A`` and ``B`` start from the top ``r`` singular triplets of ``W = U S V^T``,
  ``A = sqrt(S_r / s) V_r^T``, ``B = U_r sqrt(S_r / s)`` (so ``s B A = U_r S_r V_r^T``), and the
  frozen weight becomes the residual ``W - s B A``: the initial output equals the base model's up to
  rounding, and training moves the principal directions instead of a random subspace.
  ``init="pissa_niter_N"`` replaces the full SVD by ``torch.svd_lowrank(W, q=r, niter=N)`` (a few
  subspace iterations: seconds instead of minutes on large matrices). These are peft's conventions
  exactly (``peft.tuners.lora.layer.LoraLayer.pissa_init``: the same factors, the same ``q = r``),
  and ``tests/finetune/test_lora.py`` holds rwkvkit's factors and forward to peft's.

Which modules: :func:`apply_lora` wraps the ``nn.Linear`` modules whose paths match ``targets``; the
default, :data:`DEFAULT_TARGETS` ``("att", "ffn")``, is every projection of the time and channel mixes
of every block, for every version, and never the embedding or the output head:

======= ======================================================================================
RWKV-4  att.key/value/receptance/output, ffn.key/receptance/value
RWKV-5  att.receptance/key/value/gate/output (no gate in 5.0), ffn.key/receptance/value
RWKV-6  att.receptance/key/value/gate/output, ffn.key/receptance/value
RWKV-7  att.receptance/key/value/output, ffn.key/value
======= ======================================================================================

(The small LoRA matrices inside the v6/v7 time mix, ``w1, w2, a1, ...``, are raw parameters, not
``nn.Linear``: they stay frozen.)

Why rwkvkit does not use peft at run time, although peft is the well-kept implementation and is
this module's test oracle:

* names: peft's ``lora.Linear`` moves the base weight to ``<name>.base_layer.weight`` and keeps the
  adapter in per-adapter-name dicts (``<name>.lora_A.default.weight``). :class:`LoRALinear` keeps the
  frozen weight at ``<name>.weight``, the official checkpoint name, so the base model's own state
  dict, rwkvkit's key tables and the trainer's checkpoints (saved and resumed bitwise from plain
  ``state_dict()`` tensors) read the same keys with or without an adapter; its two factors are
  plain ``<name>.lora_A`` / ``<name>.lora_B``;
* the forward: peft's ``forward(x, *args, **kwargs)`` walks its active adapters, variants and
  mixed-batch options in Python on every call, where :class:`LoRALinear` is the two products and one
  add of the formula above. Measured on a 768 x 768 projection, r = 16, 2 threads (a shared 2-core
  CPU): one token 74 us per call here against 85 us for peft's ``lora.Linear`` (a plain
  ``nn.Linear`` 49 us); a ``[4, 256]`` forward and backward is dominated by the products and the
  same for both. An RWKV step calls 6-8 projections per layer, so decoding with an unmerged adapter
  pays peft's difference 6-8 times per layer;
* weight: ``import peft`` imports transformers and accelerate (2.3 s here), for ~150 lines of
  rwkvkit code; and its adapter files (a folder with ``adapter_config.json``) carry neither
  rwkvkit's checksums nor the base model's fingerprint (:mod:`rwkvkit.finetune.adapter`).

Example::

    >>> model = rwkvkit.load("rwkv7-0.1b.pth")
    >>> names = apply_lora(model, r=16, alpha=32)        # freezes the base, returns wrapped names
    >>> names[:2]
    ['blocks.0.att.receptance', 'blocks.0.att.key']
    >>> opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    >>> ...                                              # train
    >>> merge_lora(model)                                # plain nn.Linear again, W + s B A
    >>> rwkvkit.formats.save(model, "tuned.safetensors")
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Iterator, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
import xxhash

from rwkvkit.errors import ConfigError
from rwkvkit.inference.quant import quantize_weight

__all__ = [
    "DEFAULT_TARGETS", "INITS", "LoRALinear", "apply_lora", "find_targets", "lora_modules",
    "lora_parameters", "merge_lora", "parse_init",
]  # fmt: skip

DEFAULT_TARGETS: tuple[str, ...] = ("att", "ffn")  # every projection of every time and channel mix
INITS = ("lora", "pissa", "pissa_niter_N")  # N: subspace iterations of torch.svd_lowrank
_NITER = re.compile(r"pissa_niter_(\d+)")


def parse_init(init: str) -> int | None:
    """``"lora"`` -> None; ``"pissa"`` -> 0 (full SVD); ``"pissa_niter_4"`` -> 4; else ConfigError."""
    if init == "lora":
        return None
    if init == "pissa":
        return 0
    m = _NITER.fullmatch(init)
    if m is None or int(m.group(1)) < 1:
        raise ConfigError(f"unknown LoRA init {init!r}; use 'lora', 'pissa' or 'pissa_niter_N' (N >= 1)")
    return int(m.group(1))


def weight_digest(weight: torch.Tensor) -> str | None:
    """A digest of a weight's values rounded to bf16 (xxh3-128), the same for a base model loaded in
    fp32 or bf16: how an adapter file recognises the base it was trained on. None for a weight on
    the meta device (no values yet)."""
    if weight.device.type == "meta":
        return None
    w = weight.detach().to("cpu", torch.bfloat16).contiguous()
    h = xxhash.xxh3_128(f"{list(w.shape)}\0".encode())
    h.update(w.view(-1).view(torch.int16).numpy())
    return h.hexdigest()


class LoRALinear(nn.Module):
    """A frozen linear layer plus a trainable low-rank update (see the module docstring).

    ``y = F.linear(x, weight, bias) + scaling * F.linear(F.linear(dropout(x), lora_A), lora_B)``

    Parameters (state-dict names): ``weight [out, in]`` and ``bias`` (the wrapped ``nn.Linear``'s own
    tensors, frozen, not copied), ``lora_A [r, in]`` and ``lora_B [out, r]`` (trainable); after a
    PiSSA init also the buffers ``lora_A0``, ``lora_B0``, the initial factors (the frozen weight is
    then the residual ``W - scaling * lora_B0 @ lora_A0``; :mod:`rwkvkit.finetune.adapter` needs
    them to rebuild the model on the original base). With ``quantize="int8"`` the frozen weight is
    stored as the buffers ``weight_int8 [out, in]`` and ``weight_scale [out]`` instead (per output
    row, :func:`rwkvkit.inference.quant.quantize_weight`) and dequantized in each forward.

    The factors are created in the base weight's dtype when that is fp32 or fp64, else in fp32 (the
    optimiser then updates fp32 numbers, as peft's ``autocast_adapter_dtype``); outside autocast the
    low-rank branch computes in that dtype and is cast back to the output's.

    Example::

        >>> lin = nn.Linear(64, 32, bias=False)
        >>> lora = LoRALinear(lin, r=4, alpha=8)
        >>> x = torch.randn(2, 64)
        >>> torch.equal(lora(x), lin(x))                 # B = 0: bitwise the base layer
        True
    """

    weight: torch.Tensor | None
    lora_A0: torch.Tensor | None
    lora_B0: torch.Tensor | None
    weight_int8: torch.Tensor | None
    weight_scale: torch.Tensor | None

    def __init__(
        self,
        base: nn.Linear,
        r: int = 8,
        alpha: float = 16,
        dropout: float = 0.0,
        *,
        dtype: torch.dtype | None = None,
        generator: torch.Generator | None = None,
        digest: str | None = None,
    ) -> None:
        """Wrap ``base`` (its weight is frozen and shared, not copied). ``generator`` draws ``A``;
        ``digest``: :func:`weight_digest` of the base weight when the caller has it already."""
        super().__init__()
        if type(base) is not nn.Linear:
            raise ConfigError(f"LoRALinear wraps an nn.Linear, got {type(base).__name__}")
        _check_hyper(r, alpha, dropout)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.r, self.alpha, self.scaling = int(r), float(alpha), float(alpha) / int(r)
        self.init = "lora"
        self.weight = base.weight.requires_grad_(False)  # the same Parameter: nothing is copied
        self.bias = None if base.bias is None else base.bias.requires_grad_(False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.dropout_p = float(dropout)
        # the base weight as it was before any change (an adapter file's fingerprint of its base)
        self.base_digest = digest or weight_digest(base.weight)
        self.targets: tuple[str, ...] | None = None  # the patterns that chose it (apply_lora)
        w = base.weight
        if dtype is None:
            dtype = w.dtype if w.dtype in (torch.float32, torch.float64) else torch.float32
        self.lora_A = nn.Parameter(torch.empty(self.r, self.in_features, device=w.device, dtype=dtype))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, self.r, device=w.device, dtype=dtype))
        # peft's and microsoft/LoRA's init of A: nn.Linear's own (bound 1 / sqrt(in)); B stays zero
        with torch.no_grad():
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5), generator=generator)
        self.register_buffer("lora_A0", None)
        self.register_buffer("lora_B0", None)
        self.register_buffer("weight_int8", None)
        self.register_buffer("weight_scale", None)

    def extra_repr(self) -> str:
        q = ", int8" if self.weight_int8 is not None else ""
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, r={self.r}, "
            f"alpha={self.alpha:g}, init={self.init}, dropout={self.dropout_p:g}{q}"
        )

    # ---- initialisation --------------------------------------------------------------------------
    @torch.no_grad()
    def pissa_(self, niter: int = 0, seed: int = 0) -> None:
        """Re-initialise as PiSSA: ``A``, ``B`` from the top ``r`` singular triplets of the weight,
        which becomes the residual. ``niter = 0``: full SVD (``torch.linalg.svd``); ``niter > 0``:
        ``torch.svd_lowrank(W, q=r, niter=niter)``, its random start drawn from ``seed`` (torch's
        global generator is left as it was)."""
        W = self.base_weight().float()
        if niter == 0:
            U, S, Vh = torch.linalg.svd(W, full_matrices=False)
            Ur, Sr, Vhr = U[:, : self.r], S[: self.r], Vh[: self.r]
        else:
            devices = [W.device] if W.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(seed)
                Ur, Sr, Vr = torch.svd_lowrank(W, q=self.r, niter=niter)
            Vhr = Vr.T
        root = torch.sqrt(Sr / self.scaling)  # s B A = U_r S_r V_r^T
        A0 = root[:, None] * Vhr  # diag(sqrt(S_r / s)) V_r^T  [r, in]
        B0 = Ur * root[None, :]  # U_r diag(sqrt(S_r / s))    [out, r]
        self.start_from_(A0, B0, "pissa" if niter == 0 else f"pissa_niter_{niter}")

    @torch.no_grad()
    def start_from_(self, A0: torch.Tensor, B0: torch.Tensor, init: str) -> None:
        """Make ``A0, B0`` the initial factors and the frozen weight the residual ``W - s B0 A0``.

        The one place the residual is computed (fp32, then the weight's dtype): a PiSSA init and a
        PiSSA adapter loaded on the original base give the same residual bit for bit."""
        dt = self.lora_A.dtype
        self.lora_A0, self.lora_B0 = A0.to(dt).clone(), B0.to(dt).clone()
        self.lora_A.copy_(self.lora_A0)
        self.lora_B.copy_(self.lora_B0)
        # (s B0) A0, in peft's order of operations: the same residual bit for bit
        residual = self.base_weight().float() - (self.scaling * self.lora_B0.float()) @ self.lora_A0.float()
        self._set_base_weight(residual)
        self.init = init

    @torch.no_grad()
    def quantize_int8_(self) -> None:
        """Store the frozen weight as int8 with one scale per output row (QLoRA-style, weight-only):
        a quarter of fp32's bytes, dequantized to the input's dtype in each forward."""
        if self.weight_int8 is not None:
            return
        q, scale = quantize_weight(self.weight)
        self.weight_int8, self.weight_scale = q, scale
        self.weight = None  # the float Parameter is dropped (the wrapped nn.Linear still has it)

    # ---- the frozen weight -------------------------------------------------------------------------
    def base_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The frozen weight as a float tensor (dequantized when stored as int8)."""
        if self.weight_int8 is not None:
            dtype = dtype or self.weight_scale.dtype
            return self.weight_int8.to(dtype) * self.weight_scale.to(dtype)[:, None]
        return self.weight if dtype is None else self.weight.to(dtype)

    def _set_base_weight(self, value: torch.Tensor) -> None:
        if self.weight_int8 is not None:
            self.weight_int8, self.weight_scale = quantize_weight(value)
        else:
            self.weight.copy_(value.to(self.weight.dtype))

    def delta_weight(self) -> torch.Tensor:
        """``scaling * B @ A`` in fp32, ``[out, in]`` (what :func:`merge_lora` adds; peft's order)."""
        return (self.lora_B.detach().float() @ self.lora_A.detach().float()) * self.scaling

    # ---- forward ---------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [..., in]`` -> ``[..., out]``: the frozen product plus the scaled low-rank branch."""
        if self.weight_int8 is not None:
            dt = torch.get_autocast_dtype(x.device.type) if _autocast_on(x) else x.dtype
            y = _Int8Product.apply(x.to(dt), self.weight_int8, self.weight_scale, self.bias)
        else:
            y = F.linear(x, self.weight, self.bias)
        h = self.dropout(x)
        if h.dtype != self.lora_A.dtype and not _autocast_on(x):
            h = h.to(self.lora_A.dtype)
        return y + (F.linear(F.linear(h, self.lora_A), self.lora_B) * self.scaling).to(y.dtype)

    def to_linear(self) -> nn.Linear:
        """A plain ``nn.Linear`` holding ``W + scaling * B @ A`` (the base weight's dtype; frozen)."""
        w = self.base_weight()
        dtype = w.dtype if self.weight_int8 is None else self.weight_scale.dtype
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                        device=w.device, dtype=dtype)  # fmt: skip
        merged = (w.detach().float() + self.delta_weight()).to(dtype)
        lin.weight = nn.Parameter(merged, requires_grad=False)
        if self.bias is not None:
            lin.bias = self.bias
        return lin


class _Int8Product(torch.autograd.Function):
    """``F.linear(x, weight_int8 * scale, bias)`` that keeps only the int8 weight for the backward
    (autograd would keep the dequantized copy of every layer until then, undoing the int8 saving);
    the frozen weight and bias get no gradient."""

    @staticmethod
    def forward(ctx, x, q, scale, bias):
        with torch.autocast(x.device.type, enabled=False):
            w = q.to(x.dtype) * scale.to(x.dtype)[:, None]
            y = F.linear(x, w, None if bias is None else bias.to(x.dtype))
        ctx.save_for_backward(q, scale)
        return y

    @staticmethod
    def backward(ctx, dy):
        q, scale = ctx.saved_tensors
        with torch.autocast(dy.device.type, enabled=False):
            dx = dy @ (q.to(dy.dtype) * scale.to(dy.dtype)[:, None]) if ctx.needs_input_grad[0] else None
        return dx, None, None, None


def _autocast_on(x: torch.Tensor) -> bool:
    return torch.is_autocast_enabled(x.device.type)


def _check_hyper(r: int, alpha: float, dropout: float) -> None:
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise ConfigError(f"LoRA rank r must be an integer >= 1, got {r!r}")
    if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha > 0):
        raise ConfigError(f"LoRA alpha must be a number > 0, got {alpha!r}")
    if not (isinstance(dropout, (int, float)) and 0 <= dropout < 1):
        raise ConfigError(f"LoRA dropout must be in [0, 1), got {dropout!r}")


# ---- which modules ---------------------------------------------------------------------------------


def _matches(pattern: str, path: str) -> bool:
    """Whether the dotted ``pattern`` (shell wildcards per component) names a contiguous run of the
    components of the module path ``path``: ``"att.key"`` and ``"blocks.*.att.key"`` match
    ``blocks.3.att.key``; ``"ffn"`` matches every module inside a channel mix."""
    want, have = pattern.split("."), path.split(".")
    return any(
        all(fnmatch.fnmatchcase(have[i + j], p) for j, p in enumerate(want))
        for i in range(len(have) - len(want) + 1)
    )


def _linear_kinds(model: nn.Module) -> list[str]:
    """The distinct names of the model's ``nn.Linear`` modules, block indices dropped."""
    kinds: dict[str, None] = {}
    for name, m in model.named_modules():
        if type(m) is nn.Linear:
            kinds[re.sub(r"^blocks\.\d+\.", "", name)] = None
    return list(kinds)


def find_targets(model: nn.Module, targets: Sequence[str] | str = DEFAULT_TARGETS) -> list[str]:
    """The paths of the ``nn.Linear`` modules of ``model`` that ``targets`` name, in module order.

    A pattern is matched against whole path components (see :func:`_matches`); one that names no
    ``nn.Linear`` is a ConfigError that lists the model's linear modules.

    Example::

        >>> find_targets(model, ["att.key", "blocks.0.ffn"])
        ['blocks.0.att.key', 'blocks.0.ffn.key', 'blocks.0.ffn.value', 'blocks.1.att.key', ...]
    """
    patterns = [targets] if isinstance(targets, str) else list(targets)
    if not patterns or not all(isinstance(p, str) and p for p in patterns):
        raise ConfigError(f"LoRA targets must be a non-empty list of module patterns, got {targets!r}")
    linears = [n for n, m in model.named_modules() if type(m) is nn.Linear]
    for p in patterns:
        if not any(_matches(p, n) for n in linears):
            wrapped = " (some modules already carry LoRA)" if any(lora_modules(model)) else ""
            raise ConfigError(
                f"LoRA target {p!r} matches no nn.Linear of this model{wrapped}; its linear modules are "
                f"{', '.join(_linear_kinds(model)) or 'none'} (in every block: blocks.N.<name>)"
            )
    return [n for n in linears if any(_matches(p, n) for p in patterns)]


def lora_modules(model: nn.Module) -> Iterator[tuple[str, LoRALinear]]:
    """``(path, module)`` of every :class:`LoRALinear` of ``model``, in module order."""
    return ((n, m) for n, m in model.named_modules() if isinstance(m, LoRALinear))


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The trainable factors (``lora_A``, ``lora_B``) of every adapter of ``model``."""
    return [p for _, m in lora_modules(model) for p in (m.lora_A, m.lora_B)]


def _replace(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


# ---- apply / merge ---------------------------------------------------------------------------------


def apply_lora(
    model: nn.Module,
    r: int = 8,
    alpha: float = 16,
    dropout: float = 0.0,
    targets: Sequence[str] | str = DEFAULT_TARGETS,
    init: str = "lora",
    seed: int = 0,
    *,
    dtype: torch.dtype | None = None,
    quantize: str | None = None,
) -> list[str]:
    """Freeze ``model`` and wrap the ``nn.Linear`` modules ``targets`` names with :class:`LoRALinear`.

    Args:
        model: an RWKV model (any ``nn.Module`` works: only its ``nn.Linear`` modules are touched).
        r, alpha, dropout: rank, ``scaling = alpha / r``, dropout on the low-rank branch's input.
        targets: module patterns (:func:`find_targets`); default every time- and channel-mix
            projection (:data:`DEFAULT_TARGETS`), never ``emb`` or ``head``.
        init: ``"lora"`` (B = 0: the output is bitwise unchanged), ``"pissa"`` (full SVD) or
            ``"pissa_niter_N"`` (randomised SVD with N subspace iterations); see the module docstring.
        seed: draws every ``A`` of a LoRA init (one generator, modules in order) and the random start
            of ``pissa_niter_N``; torch's global generator is not used.
        dtype: of the factors; None: the base weight's if fp32/fp64, else fp32.
        quantize: None, or ``"int8"``: store every frozen wrapped weight as int8 with per-row
            scales (QLoRA-style; after a PiSSA init the residual is what is quantized).

    Returns:
        The wrapped module paths. Every parameter of ``model`` except the new factors has
        ``requires_grad=False`` afterwards.

    Example::

        >>> model = random_model(RWKVConfig(version="6", n_layer=2, n_embd=64, vocab_size=256,
        ...                                 head_size=32, lora_mix=8, lora_decay=8))
        >>> apply_lora(model, r=4, targets=["att.key", "att.value"])
        ['blocks.0.att.key', 'blocks.0.att.value', 'blocks.1.att.key', 'blocks.1.att.value']
    """
    _check_hyper(r, alpha, dropout)
    niter = parse_init(init)
    if quantize not in (None, "int8"):
        raise ConfigError(f"quantize must be None or 'int8', got {quantize!r}")
    names = find_targets(model, targets)
    patterns = [targets] if isinstance(targets, str) else list(targets)
    model.requires_grad_(False)
    g = torch.Generator().manual_seed(seed)
    for name in names:
        base = model.get_submodule(name)
        module = LoRALinear(base, r, alpha, dropout, dtype=dtype, generator=_generator_on(g, base.weight))
        module.targets = tuple(patterns)
        if niter is not None:
            module.pissa_(niter, seed)
        if quantize == "int8":
            module.quantize_int8_()
        _replace(model, name, module)
    return names


def _generator_on(g: torch.Generator, t: torch.Tensor) -> torch.Generator:
    """``g`` itself for CPU tensors; a generator on ``t``'s device seeded from ``g`` otherwise."""
    if t.device.type == "cpu":
        return g
    seed = int(torch.randint(0, 2**62, (1,), generator=g))
    return torch.Generator(device=t.device).manual_seed(seed)


@torch.no_grad()
def merge_lora(model: nn.Module) -> list[str]:
    """Replace every :class:`LoRALinear` of ``model`` by a plain ``nn.Linear`` holding
    ``W + scaling * B @ A`` (after PiSSA: the residual plus the product), in place.

    The result is a plain model: :func:`rwkvkit.formats.save` writes it in any format and
    ``rwkvkit.load`` reads it back with no adapter code. Its parameters keep ``requires_grad=False``
    (as :func:`apply_lora` left them; a model loaded from the saved file is trainable as usual).
    Returns the merged module paths.

    Example::

        >>> apply_lora(model); ...; merge_lora(model)
        >>> rwkvkit.formats.save(model, "merged.pth", format="blinkdl")
    """
    names = []
    for name, module in list(lora_modules(model)):
        _replace(model, name, module.to_linear())
        names.append(name)
    return names
