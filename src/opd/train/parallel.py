"""Data-parallel training of one model over processes, sharded with FSDP2.

On several processes (``accelerate launch`` or ``torchrun``; NCCL on GPUs, gloo on CPU
processes, the same code) the trained model is sharded with ``torch.distributed.fsdp``'s
``fully_shard``: each decoder layer, then the whole model. Parameters, gradients and the
optimizer state exist as 1/N shards on each process; a layer's full parameters are gathered
for its forward and backward pass and freed after. Master weights stay float32; on GPUs a
mixed-precision policy computes in bf16 and reduces gradients in float32.

Gradients are summed over processes, not averaged: each process scales its loss by its
share of the step's tokens on all processes, so the sum is the gradient of the token mean
over every rollout of the step. On one process the model is left as it is; every function
here works on both.

Every process must take part in each forward and backward pass of a sharded model (the
gathers are collective): ``sharded`` tells callers when generation must be kept in step
(``synced_gpus``) and micro-batch counts evened out.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict,
                                                     set_optimizer_state_dict)
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

FULL_ON_CPU = StateDictOptions(full_state_dict=True, cpu_offload=True)


def sharded(model: Any) -> bool:
    return isinstance(model, FSDPModule)


def decoder_layers(model: Any) -> list[torch.nn.Module]:
    layers = getattr(getattr(model, "base_model", None), "layers", None)
    if layers is None:
        raise TypeError(f"{type(model).__name__}: no decoder layers at model.base_model.layers "
                        "to shard")
    return list(layers)


def shard(model: Any, *, bf16: bool) -> Any:
    """Shard ``model`` in place over the default process group (each decoder layer, then the
    rest: embeddings, final norm and LM head); returns it. ``bf16``: compute in bf16 from the
    float32 shards, reduce gradients in float32."""
    policy = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
              if bf16 else MixedPrecisionPolicy())
    for layer in decoder_layers(model):
        fully_shard(layer, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)          # a sum over processes
            module.set_force_sum_reduction_for_comms(True)  # gloo has no pre-scaled sum
    return model


def grad_norm_value(norm: torch.Tensor) -> float:
    """A gradient norm as a number (``clip_grad_norm_`` returns a DTensor on shards)."""
    return float(norm.full_tensor() if isinstance(norm, DTensor) else norm)


def full_state_dict(model: Any) -> dict[str, torch.Tensor]:
    """The full weights on the CPU of process 0 (other processes get an empty dict); every
    process must call it when the model is sharded."""
    return get_model_state_dict(model, options=FULL_ON_CPU)


def full_parameters(model: Any) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, full tensor) of every parameter on every process, one gathered at a time (for
    reloading a colocated generator); every process must consume it when sharded."""
    for name, p in model.named_parameters():
        yield name, (p.full_tensor() if isinstance(p, DTensor) else p).detach()


def optimizer_state(model: Any, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer state keyed by parameter name, full tensors on the CPU of process 0
    (collective when sharded)."""
    return get_optimizer_state_dict(model, optimizer, options=FULL_ON_CPU)


def load_optimizer_state(model: Any, optimizer: torch.optim.Optimizer,
                         state: dict[str, Any]) -> None:
    """Restore ``optimizer_state``'s output (read by every process) into this process's
    shards."""
    set_optimizer_state_dict(model, optimizer, state,
                             options=StateDictOptions(full_state_dict=True))
