"""The prunable rewrite of C2f / C3k2: ``cv1(x).chunk(2)`` as two convolutions, and the merge back.

torch-pruning's dependency graph cannot follow a channel ``chunk`` (on a raw YOLO11 it fails with an IndexError at
the C3k2 split), so each C2f/C3k2 is rebuilt with ``cv0`` (first half) and ``cv1`` (second half): identical outputs,
BN eps/momentum kept. ``merge_split_blocks`` writes the blocks back as ultralytics' own classes, so a pruned model
saves as modules that plain ``ultralytics.YOLO`` loads; that needs equal halves (prune them in lockstep).
"""

from __future__ import annotations

from copy import deepcopy

import torch
from torch import nn
from ultralytics.nn.modules.block import C2f, C3k2

SPLITTABLE = (C2f, C3k2)  # exact types: subclasses with other forwards (C2fAttn, ...) are left alone
_LAYER_ATTRS = ("i", "f", "type", "np")  # what ultralytics' parse_model sets on each layer and its forward reads


def _out_slice(conv: nn.Module, start: int, end: int) -> nn.Module:
    """A copy of an ultralytics ``Conv`` (conv + BN + act) keeping output channels ``start:end``."""
    new = deepcopy(conv)
    c, bn = new.conv, new.bn
    c.weight = nn.Parameter(c.weight.data[start:end].clone())
    if c.bias is not None:
        c.bias = nn.Parameter(c.bias.data[start:end].clone())
    c.out_channels = end - start
    bn.weight = nn.Parameter(bn.weight.data[start:end].clone())
    bn.bias = nn.Parameter(bn.bias.data[start:end].clone())
    bn.running_mean = bn.running_mean[start:end].clone()
    bn.running_var = bn.running_var[start:end].clone()
    bn.num_features = end - start
    return new


def _out_concat(a: nn.Module, b: nn.Module) -> nn.Module:
    """The ultralytics ``Conv`` whose output channels are ``a``'s followed by ``b``'s."""
    new = deepcopy(a)
    c, bn = new.conv, new.bn
    cat = lambda x, y: torch.cat([x.detach(), y.detach()], 0)  # noqa: E731
    c.weight = nn.Parameter(cat(a.conv.weight, b.conv.weight))
    if c.bias is not None:
        c.bias = nn.Parameter(cat(a.conv.bias, b.conv.bias))
    c.out_channels = c.weight.shape[0]
    bn.weight = nn.Parameter(cat(a.bn.weight, b.bn.weight))
    bn.bias = nn.Parameter(cat(a.bn.bias, b.bn.bias))
    bn.running_mean = cat(a.bn.running_mean, b.bn.running_mean)
    bn.running_var = cat(a.bn.running_var, b.bn.running_var)
    bn.num_features = c.out_channels
    return new


def _copy_layer_attrs(src: nn.Module, dst: nn.Module) -> None:
    for k in _LAYER_ATTRS:
        if hasattr(src, k):
            setattr(dst, k, getattr(src, k))


class SplitC2f(nn.Module):
    """C2f / C3k2 with ``cv1`` split into ``cv0`` and ``cv1`` (first / second half of the original output)."""

    def __init__(self, block: nn.Module):
        super().__init__()
        c = block.c
        self.origin = type(block)
        self.cv0 = _out_slice(block.cv1, 0, c)
        self.cv1 = _out_slice(block.cv1, c, 2 * c)
        self.cv2, self.m = block.cv2, block.m
        _copy_layer_attrs(block, self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = [self.cv0(x), self.cv1(x)]
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))

    def merge(self) -> nn.Module:
        """The equivalent ultralytics block (``self.origin``); the two halves must have equal widths."""
        c0, c1 = self.cv0.conv.out_channels, self.cv1.conv.out_channels
        if c0 != c1:
            raise ValueError(f"{self.origin.__name__} halves differ ({c0} vs {c1} channels): ultralytics' block "
                             "splits cv1 into two equal halves, so prune cv0 and cv1 in lockstep")
        block = self.origin.__new__(self.origin)  # rebuilt from parts: the constructor would re-init weights
        nn.Module.__init__(block)
        block.c = c0
        block.cv1 = _out_concat(self.cv0, self.cv1)
        block.cv2, block.m = self.cv2, self.m
        _copy_layer_attrs(self, block)
        return block


def _replace(module: nn.Module, match, make) -> int:
    n = 0
    for name, child in module.named_children():
        if match(child):
            setattr(module, name, make(child))
            n += 1
        else:
            n += _replace(child, match, make)
    return n


def split_blocks(model: nn.Module) -> int:
    """Rewrite every C2f / C3k2 in ``model`` (in place) as ``SplitC2f``; return how many."""
    return _replace(model, lambda m: type(m) in SPLITTABLE, SplitC2f)


def merge_split_blocks(model: nn.Module) -> int:
    """Write every ``SplitC2f`` in ``model`` (in place) back as ultralytics' own block; return how many."""
    return _replace(model, lambda m: isinstance(m, SplitC2f), lambda m: m.merge())

