"""Peak activation memory of the INT8 graph: a cheap estimate of the tensor arena TensorFlow Lite Micro needs.

TFLM plans every activation tensor of the file into one arena, each live from the operator that writes it to the
last one that reads it (its greedy planner packs them close to the peak of that liveness). The estimate replays the
model's forward once at ``imgsz`` (batch 1) under a dispatch mode that records every aten op's tensor inputs and
outputs, and takes the peak over ops of the bytes alive (1 byte per element: int8). It follows the file's graph
where it differs from PyTorch's: BatchNorm and a ReLU/ReLU6 are folded into their conv (no tensor of their own),
SiLU runs as LOGISTIC then MUL (one more tensor alive during it), a conv whose padding is not SAME's (3x3 stride 2)
reads an explicit PAD op's copy of its input, views share their input's memory. Nothing in torch
or torch-pruning measures liveness of a graph by op, hence this module. ``kdprune.pruning.budget.arena_bytes`` adds
TFLM's own structures.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from kdprune.yolo.structure import trace_forward

aten = torch.ops.aten
# folded into the conv before them in the file: BatchNorm, and the activations CONV_2D fuses (model.fused_act_layers)
_FOLDED = {aten._native_batch_norm_legit_no_training.default, aten.batch_norm.default,
           aten.native_batch_norm.default, aten._native_batch_norm_legit.default,
           aten.relu.default, aten.relu_.default, aten.hardtanh.default, aten.hardtanh_.default}
# SiLU is LOGISTIC + MUL in TFLite: two new tensors (the sigmoid's alive while MUL runs), even where PyTorch runs it
# in place (ultralytics' loaded checkpoints do)
_TWO_OPS = {aten.silu.default, aten.silu_.default}


_CONV = {aten.convolution.default, aten.conv2d.default}


def _explicit_pad(args) -> tuple[int, int] | None:
    """A padded conv whose padding is not TFLite's SAME for its kernel and stride: the converter writes an explicit
    PAD op before the CONV_2D (one more tensor, the padded input, alive beside its source). SAME pads
    ((out - 1) * stride + kernel - in) split low-first: (0, 1) for a 3x3 stride-2 kernel on an even input, where
    PyTorch pads (1, 1); (1, 1) for a 4x4 stride-2 kernel (model.pad_free_downsample) and for a 3x3 stride-1 one,
    which need none. Measured on the files: every 3x3 stride-2 conv of YOLO11 (7 in yolo11n) has one, the others not."""
    x, w = args[0], args[1]
    stride, padding = args[3] if len(args) > 3 else (1, 1), args[4] if len(args) > 4 else (0, 0)
    if max(padding) == 0:
        return None
    for n, k, s, p in zip(x.shape[2:], w.shape[2:], stride, padding):
        total = max((-(-n // s) - 1) * s + k - n, 0)
        if (total // 2, total - total // 2) != (p, p):
            return int(padding[0]), int(padding[1])
    return None


class _Recorder(TorchDispatchMode):
    """Per aten op: (keys of its tensor inputs, [(key, elements)] of its outputs, extra transient elements)."""

    def __init__(self, consts: set[int]):
        super().__init__()
        self.consts, self.ops, self.alias, self.keep = consts, [], {}, []
        self.fresh = -1  # keys for tensors an in-place op writes (negative: never a real address)

    def key(self, t: torch.Tensor) -> int:
        k = t.untyped_storage().data_ptr()
        return self.alias.get(k, k)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        ins = [self.key(t) for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor) and t.numel()]
        ins = [k for k in ins if k not in self.consts]
        outs = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor) and t.numel()]
        self.keep.append(out)  # held until the end, so no address is reused by a later tensor
        if func in _FOLDED and ins:  # folded into the conv: its output is the conv's output
            for t in outs:
                self.alias[t.untyped_storage().data_ptr()] = ins[0]
            return out
        if func in _TWO_OPS and outs:
            self.alias[outs[0].untyped_storage().data_ptr()] = self.fresh  # a new tensor, in place or not
            self.fresh -= 1
            self.ops.append((ins, [(self.key(outs[0]), outs[0].numel())], outs[0].numel()))
            return out
        if func in _CONV and ins and (pad := _explicit_pad(args)):  # PAD writes a padded copy, the conv reads it
            x = args[0]
            padded = x.shape[0] * x.shape[1] * (x.shape[2] + 2 * pad[0]) * (x.shape[3] + 2 * pad[1])
            self.ops.append((ins[:1], [(self.fresh, padded)], 0))
            ins = [self.fresh, *ins[1:]]
            self.fresh -= 1
        new = [(self.key(t), t.numel()) for t in outs if self.key(t) not in ins]  # views: no new memory
        if ins or new:
            self.ops.append((ins, new, 0))
        return out


@torch.no_grad()
def peak_activation_bytes(model: nn.Module, imgsz: int) -> int:
    """Peak bytes of int8 activations alive at once during one batch-1 forward at ``imgsz`` (input image included)."""
    was_training = model.training
    model.eval()
    try:
        p = next(model.parameters())
        x = torch.zeros(1, 3, imgsz, imgsz, device=p.device, dtype=p.dtype)
        consts = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
        rec = _Recorder(consts)
        with rec:
            outs = trace_forward(model, x, deployed_only=True)  # the file holds one head branch
    finally:
        model.train(was_training)
    first: dict[int, int] = {rec.key(x): -1}
    size: dict[int, int] = {rec.key(x): x.numel()}
    last: dict[int, int] = {}
    for i, (ins, new, _) in enumerate(rec.ops):
        for k in ins:
            last[k] = i
        for k, n in new:
            first.setdefault(k, i)
            size[k] = max(size.get(k, 0), n)
    end = len(rec.ops)
    for t in outs:
        last[rec.key(t)] = end
    peak = 0
    for i, (_, _, extra) in enumerate(rec.ops):
        live = sum(size[k] for k in size if first[k] <= i <= last.get(k, first[k]))
        peak = max(peak, live + extra)
    return int(peak)
