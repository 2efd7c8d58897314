"""Loading a transformers causal LM as a distillation teacher, safely, and wrapping it in rwkvkit's
model interface (``logits, state = model(tokens)``) so the trainer's evaluation scores it too."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from rwkvkit.errors import ConfigError, RWKVKitError

SUPPORTED = ("qwen2", "llama")  # RMSNorm + SwiGLU decoders whose layers ARWKV reuses


class TeacherLM(nn.Module):
    """A transformers causal LM behind rwkvkit's interface: ``logits (fp32), None = model(tokens)``."""

    def __init__(self, hf_model: nn.Module) -> None:
        super().__init__()
        self.hf = hf_model

    @property
    def config(self):
        return self.hf.config

    def forward(self, tokens: torch.Tensor, state=None) -> tuple[torch.Tensor, None]:
        if state is not None:
            raise ConfigError("a transformers teacher takes whole windows, not a recurrent state")
        return self.hf(input_ids=tokens, use_cache=False).logits.float(), None


def check_teacher(hf_model: nn.Module) -> None:
    """Raise a clear error unless ``hf_model`` is a decoder ARWKV can be built from."""
    kind = getattr(getattr(hf_model, "config", None), "model_type", None)
    layers = getattr(getattr(hf_model, "model", None), "layers", None)
    if kind not in SUPPORTED or layers is None or not hasattr(hf_model, "lm_head"):
        raise ConfigError(
            f"the teacher is a {kind or type(hf_model).__name__!s} model; ARWKV distillation supports "
            f"transformers causal LMs of the {' and '.join(SUPPORTED)} architectures (RMSNorm, SwiGLU MLP, "
            "model.layers[i].self_attn)"
        )
    if getattr(hf_model.config, "mlp_bias", False):
        raise ConfigError("the teacher's MLPs have biases (mlp_bias=True); ARWKV's SwiGLU has none")


def load_teacher(path: str | Path, dtype: torch.dtype = torch.float32, device="cpu") -> nn.Module:
    """A transformers causal LM from a local directory (``save_pretrained`` output), in eval mode and
    frozen. Only safetensors weights are read (no pickle, no remote code)."""
    path = Path(path)
    if not path.is_dir() or not (path / "config.json").is_file():
        raise ConfigError(
            f"teacher {path} is not a transformers model directory (config.json and *.safetensors, "
            "as written by save_pretrained)"
        )
    if not any(path.glob("*.safetensors")):
        raise ConfigError(f"{path} has no .safetensors weights; rwkvkit reads teachers only from safetensors")
    try:
        from transformers import AutoModelForCausalLM
    except ImportError:
        raise RWKVKitError("distillation needs transformers: pip install 'rwkvkit[hf]'") from None
    model = AutoModelForCausalLM.from_pretrained(
        str(path), dtype=dtype, use_safetensors=True, trust_remote_code=False, local_files_only=True
    )
    check_teacher(model)
    return model.to(device).eval().requires_grad_(False)
