"""1x1 student->teacher adapters for feature distillation, which follow the student's pruning."""

from __future__ import annotations

import torch
from torch import nn


def _conv(c_in: int, c_out: int) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=1, bias=True)


class FeatureAdapters(nn.Module):
    """One 1x1 conv per detection level mapping the student's neck feature to the teacher's width.

    Where the widths are equal (self-distillation from the unpruned model, or student and teacher of one size) the
    adapter starts as the identity, so identical networks have zero feature loss from the first step.

    Pruning: the adapters are not rebuilt from scratch. When the pruner removes channels of a neck feature, it reports
    the removed indices (as the dependency graph propagates them to Detect's first convs) and ``prune_inputs`` drops the
    same input channels here, so each adapter keeps its trained weights for the channels that remain.
    """

    def __init__(self, student_channels: list[int], teacher_channels: list[int]):
        super().__init__()
        if len(student_channels) != len(teacher_channels):
            raise ValueError(f"{len(student_channels)} student levels vs {len(teacher_channels)} teacher levels")
        self.convs = nn.ModuleList(_conv(s, t) for s, t in zip(student_channels, teacher_channels))
        for conv, (s, t) in zip(self.convs, zip(student_channels, teacher_channels)):
            if s == t:
                with torch.no_grad():
                    conv.weight.copy_(torch.eye(s).view(s, s, 1, 1))
                    conv.bias.zero_()

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        return [conv(f) for conv, f in zip(self.convs, feats)]

    def in_channels(self) -> list[int]:
        return [c.in_channels for c in self.convs]

    @torch.no_grad()
    def prune_inputs(self, level: int, removed: list[int]) -> None:
        """Drop input channels ``removed`` (indices into the current input) of level ``level``'s adapter."""
        old = self.convs[level]
        gone = set(int(i) for i in removed)
        keep = [i for i in range(old.in_channels) if i not in gone]
        new = _conv(len(keep), old.out_channels).to(old.weight.device, old.weight.dtype)
        new.weight.copy_(old.weight[:, keep])
        new.bias.copy_(old.bias)
        if old.weight.grad is not None:  # sliced like the weights, as torch-pruning does (kdprune.pruning.carry)
            new.weight.grad = old.weight.grad[:, keep].clone()
            new.bias.grad = old.bias.grad.clone() if old.bias.grad is not None else None
        self.convs[level] = new

    def match(self, state_dict: dict, prefix: str) -> None:
        """Resize to the input widths stored in ``state_dict`` (a pruned run being resumed), before it is loaded."""
        for i, conv in enumerate(self.convs):
            w = state_dict.get(f"{prefix}convs.{i}.weight")
            if w is not None and w.shape[1] != conv.in_channels:
                self.convs[i] = _conv(w.shape[1], conv.out_channels).to(conv.weight.device, conv.weight.dtype)
