"""Fine-tuning a pretrained RWKV model: the model-side pieces.

* :mod:`~rwkvkit.finetune.lora`: LoRA and PiSSA adapters on the projection matrices
  (:func:`apply_lora`, :class:`LoRALinear`, :func:`merge_lora`), optionally over int8 frozen weights;
* :mod:`~rwkvkit.finetune.adapter`: adapter files holding only the LoRA tensors, with a fingerprint
  of the base model (:func:`save_adapter`, :func:`load_adapter`);
* :mod:`~rwkvkit.finetune.state_tuning`: a trainable initial WKV state (:class:`StateTuned`),
  exported as an ordinary :class:`rwkvkit.State`;
* :mod:`~rwkvkit.finetune.workflow`: whole runs on rwkvkit's trainer (:func:`finetune`, the
  ``rwkvkit finetune`` command) and :func:`merge` of an adapter into a plain checkpoint.

Example::

    >>> import rwkvkit
    >>> from rwkvkit.finetune import apply_lora, merge_lora, save_adapter
    >>> model = rwkvkit.load("rwkv7-0.1b.pth")
    >>> apply_lora(model, r=16, alpha=32, init="pissa_niter_4")
    >>> ...                                          # train the lora_A / lora_B parameters
    >>> save_adapter(model, "my.adapter.safetensors", base="rwkv7-0.1b.pth")
    >>> merge_lora(model)                            # or a plain model, for rwkvkit.formats.save
"""

from rwkvkit.finetune.adapter import load_adapter, read_adapter, save_adapter
from rwkvkit.finetune.lora import (
    DEFAULT_TARGETS,
    LoRALinear,
    apply_lora,
    find_targets,
    lora_modules,
    lora_parameters,
    merge_lora,
)
from rwkvkit.finetune.state_tuning import StateTuned
from rwkvkit.finetune.workflow import finetune, merge

__all__ = [
    "DEFAULT_TARGETS", "LoRALinear", "StateTuned", "apply_lora", "find_targets", "load_adapter",
    "lora_modules", "lora_parameters", "merge", "merge_lora", "read_adapter", "save_adapter", "finetune",
]  # fmt: skip
