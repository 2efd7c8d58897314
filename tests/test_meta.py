"""on_meta builds models on the meta device without initialising meta tensors, and nothing else."""

from __future__ import annotations

import torch

from rwkvkit.utils.meta import on_meta


def test_meta_tensors_skip_initialisation_and_real_ones_do_not():
    before = torch.nn.init.normal_
    with on_meta():
        meta = torch.nn.Linear(8, 4)
        real = torch.nn.Linear(8, 4, device="cpu")  # built on the CPU inside the context
        ones = torch.nn.init.ones_(torch.empty(3, device="cpu"))
    assert meta.weight.is_meta and not real.weight.is_meta
    assert real.weight.abs().sum() > 0 and real.weight.abs().max() <= 8**-0.5  # kaiming-uniform bound
    assert torch.equal(ones, torch.ones(3))
    assert torch.nn.init.normal_ is before  # restored


def test_the_initialisers_are_restored_after_an_error():
    before = dict(vars(torch.nn.init))
    try:
        with on_meta():
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert all(vars(torch.nn.init)[k] is v for k, v in before.items())
