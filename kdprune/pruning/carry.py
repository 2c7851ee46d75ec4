"""Which elements of each parameter survive a structured pruning step, so per-element state (optimizer moments,
accumulated importance) can be carried onto the new, smaller tensors instead of restarting.

torch-pruning replaces every pruned parameter with a new ``nn.Parameter`` holding ``index_select``-ed weights, and
slices ``.grad`` the same way (``torch_pruning.pruner.function._prune_parameter_and_grad``). So before the step each
parameter's ``.grad`` is set to its own flat element indices; after it, the new parameter's ``.grad`` says which old
elements it holds, whatever dimensions and dependency chains torch-pruning followed. torch-pruning has no API of its
own for this (its examples rebuild the optimizer from scratch).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

IndexMap = dict[str, tuple[torch.Tensor, torch.Size]]  # parameter name -> (kept flat indices, new shape)
_EXACT = {torch.float32: 2**24, torch.float64: 2**53, torch.float16: 2**11, torch.bfloat16: 2**8}


def prune_with_index_map(module: nn.Module, prune: Callable[[], None]) -> IndexMap:
    """Run ``prune()`` (which removes channels of ``module``'s parameters) and return, for every parameter whose
    shape changed, the flat indices (into the old tensor) of the elements it kept. Gradients are cleared."""
    before = {}
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.numel() > _EXACT.get(p.dtype, 0):
                raise ValueError(f"{name}: {p.numel():,} elements cannot be indexed exactly in {p.dtype}")
            p.grad = torch.arange(p.numel(), device=p.device, dtype=p.dtype).view_as(p)
            before[name] = p.shape
    prune()
    out: IndexMap = {}
    for name, p in module.named_parameters():
        if name in before and p.shape != before[name]:
            if p.grad is None or p.grad.shape != p.shape:
                raise RuntimeError(f"{name}: pruning did not carry its index marker")
            out[name] = (p.grad.detach().flatten().round().long(), p.shape)
        p.grad = None
    return out


def take(t: torch.Tensor, old_shape: torch.Size, kept: tuple[torch.Tensor, torch.Size]) -> torch.Tensor:
    """``t`` (a tensor shaped like the old parameter, e.g. Adam's ``exp_avg``) restricted to the kept elements."""
    idx, shape = kept
    if t.shape != old_shape:
        return t  # a scalar (Adam's step) or per-group value: unchanged
    return t.flatten()[idx.to(t.device)].view(shape).clone()


def carry_optimizer_state(old_state: dict[str, dict], old_shapes: dict[str, torch.Size], index_map: IndexMap,
                          params: dict[str, nn.Parameter], optimizer: torch.optim.Optimizer) -> int:
    """Put each parameter's old optimizer state (by name) into ``optimizer`` for its new tensor, indexed to the kept
    elements. Returns how many parameters got their state back."""
    n = 0
    for name, state in old_state.items():
        p = params.get(name)
        if p is None:
            continue
        kept = index_map.get(name)
        optimizer.state[p] = {k: (take(v, old_shapes[name], kept) if kept is not None and torch.is_tensor(v) else v)
                              for k, v in state.items()}
        n += 1
    return n
