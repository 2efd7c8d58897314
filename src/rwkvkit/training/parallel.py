"""Parallelism, activation checkpointing and compilation, applied to a model from the outside.

The model code stays single-device PyTorch (torchtitan's rule). :func:`parallelize` wraps it in a
fixed order: activation checkpointing per block, then ``torch.compile`` per block, then data
parallelism: DDP, or FSDP2 (``fully_shard`` on every block, then on the root for the embedding,
final norm and head). Blocks are the units because each block's ``forward`` is one call.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager, nullcontext

import torch
import torch.distributed as dist
import torch.nn as nn

log = logging.getLogger("rwkvkit.train")


def world() -> tuple[int, int]:
    """(rank, world size): (0, 1) without a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed(device: str) -> tuple[int, int]:
    """Join the process group torchrun describes in the environment (gloo on CPU, nccl on CUDA)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return world()


def shutdown(barrier: bool = True) -> None:
    """Leave the process group (all ranks at once), if one is initialised. Without this, a gloo
    group's threads can still be alive at interpreter exit and abort the process (SIGABRT,
    "terminate called without an active exception") after the work is done."""
    if dist.is_available() and dist.is_initialized():
        if barrier:
            dist.barrier()
        dist.destroy_process_group()


def blocks_of(model: nn.Module) -> nn.ModuleList:
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.ModuleList):
        raise TypeError(f"{type(model).__name__} has no `blocks` ModuleList to wrap")
    return blocks


def parallelize(model: nn.Module, mode: str, activation_checkpointing: bool = False, compile: bool = False):
    """Wrap ``model`` for training; ``mode`` is none, ddp or fsdp. Returns the module to call."""
    blocks = blocks_of(model)
    if activation_checkpointing:
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

        for i, block in enumerate(blocks):
            blocks[i] = checkpoint_wrapper(block)
    if compile:
        for i, block in enumerate(blocks):
            try:
                blocks[i] = torch.compile(block)
            except Exception as e:  # noqa: BLE001 - compilation is optional; say so and go on
                log.warning("torch.compile failed for block %d (%s); running it eagerly", i, e)
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model)
    if mode == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in blocks:
            fully_shard(block)
        fully_shard(model)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model under DDP (FSDP2 shards in place, so it is the model itself)."""
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


@contextmanager
def gradient_sync(model: nn.Module, mode: str, sync: bool):
    """Skip the gradient all-reduce on all but the last backward of an optimiser step."""
    if mode == "ddp" and not sync:
        with model.no_sync():
            yield
    elif mode == "fsdp":
        model.set_requires_gradient_sync(sync)
        yield
    else:
        with nullcontext():
            yield


def full_state_dict(model: nn.Module, mode: str) -> dict[str, torch.Tensor]:
    """The whole model's state dict on CPU (gathered from the shards under FSDP2; all ranks call it)."""
    if mode == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}


def optimizer_state(model: nn.Module, optimizer, mode: str) -> dict:
    if mode == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(
            model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
    return optimizer.state_dict()


def load_optimizer_state(model: nn.Module, optimizer, state: dict, mode: str) -> None:
    if mode == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(
            model, optimizer, optim_state_dict=state, options=StateDictOptions(full_state_dict=True)
        )
    else:
        optimizer.load_state_dict(state)


def all_reduce_mean(value: float) -> float:
    rank, size = world()
    if size == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item()) / size
