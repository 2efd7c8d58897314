"""Building a model on the meta device, cheaply: :func:`on_meta`.

A model about to receive a checkpoint's tensors is built on the meta device (shapes only, no
memory), then its parameters are replaced (``load_state_dict(assign=True)``). Its modules still run
their initialisers (``nn.Embedding`` calls ``init.normal_``, ``nn.Linear`` ``init.kaiming_uniform_``),
and torch 2.13 routes those on meta tensors through a function that imports ``torch._dynamo``
the first time: about 3 seconds on a 2-core CPU, for values that do not exist. Inside
:func:`on_meta` the ``torch.nn.init`` functions return meta tensors untouched; every other tensor,
in this thread or any other, is initialised as usual.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch


def _skipping_meta(init):
    @functools.wraps(init)
    def wrapper(tensor, *args, **kwargs):
        if isinstance(tensor, torch.Tensor) and tensor.is_meta:
            return tensor  # nothing to initialise: the checkpoint's tensors replace it
        return init(tensor, *args, **kwargs)

    return wrapper


@contextlib.contextmanager
def on_meta() -> Iterator[None]:
    """``with on_meta(): model = Model(config)`` builds ``model`` on the meta device, skipping the
    initialisation of its (meta) tensors."""
    init = torch.nn.init
    names = [
        n for n in vars(init) if n.endswith("_") and not n.startswith("_") and callable(getattr(init, n))
    ]
    saved = {n: getattr(init, n) for n in names}
    try:
        for n, fn in saved.items():
            setattr(init, n, _skipping_meta(fn))
        with torch.device("meta"):
            yield
    finally:
        for n, fn in saved.items():
            setattr(init, n, fn)
