"""Size budgets: what a model costs (params, MACs, estimated INT8 bytes) and the ratio that meets a budget."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch_pruning as tp
from torch import nn

from kdprune.pruning.arena import peak_activation_bytes
from kdprune.registry import Registry
from kdprune.yolo.prunable import SPLITTABLE
from kdprune.yolo.rawhead import not_exported

# Bytes of the full-INT8 TFLite file (``onnx_to_tflite_int8(..., per_channel=True)`` of the fp32 ONNX of
# ``RawHeadModel(model, one2one=False)``), per exported conv/linear layer, BatchNorm folded into the conv. Measured by
# reading the flatbuffers that ``bench/int8_size.py`` writes (yolo11n, yolov8n, yolo26n; nc=3, pruned 0-60 %, 128 and
# 256 px; table in bench/results/estimators/int8_bytes.json):
# - 1 byte per weight (int8);
# - per output channel, exactly 28 bytes: the int32 bias (4), the weight's per-channel scale (float32, 4) and zero
#   point (int64, 8), and the bias's own per-channel scale and zero point (4 + 8);
# - per layer, ``INT8_BYTES_PER_LAYER`` for everything else, which pruning does not change: each conv brings ~5.9
#   tensors (its weight, bias and output; the SiLU's LOGISTIC and MUL outputs; its share of the concat/add/pad/
#   resize/transpose/attention tensors and of the converter's requantize ops) at ~184 bytes each (name ~50 B, shape,
#   per-tensor activation scale + zero point, flatbuffer tables, buffer alignment) and ~3.7 operators. Measured
#   1,056-1,098 B/layer on yolo11n (C2PSA attention adds reshape/transpose/matmul tensors), 1,082-1,089 on yolo26n,
#   1,020-1,046 on yolov8n. Tensor names carry TF's per-process counters ("model_32/tf.nn.convolution_78/..."), so
#   the later a conversion runs in a process the longer they get (+26 B/layer by the 17th conversion; the first
#   conversion of a process gives the 1,056); the converter also adds a few requantize ops depending on the weights
#   and calibration (+8 on the pruned yolo11n: +15 B/layer). 1,120 is the largest measured plus ~20 B/layer (one
#   more digit in every name). The file's fixed part (signature, metadata, operator codes: ~1 KB) is inside that.
#   An ultralytics C2f/C3k2 counts as its ``SplitC2f`` form (cv1 as two convs: one layer more), so a model gets the
#   same estimate before and after ``merge_split_blocks``; the merged export, one conv + a SPLIT op, is ~280 B
#   smaller per block than the split one (bench: yolo11n at 30 %, 2.2 KB over 8 blocks), still under the estimate.
# Per-tensor weights (``per_channel=False``) are ~24 B/channel smaller (one weight scale and zero point, one bias
# scale and zero point per tensor): only the int32 bias stays per channel, ``INT8_BYTES_PER_CHANNEL_PER_TENSOR``
# (fitted on litert-torch files of the pruned yolo11n, bench/RESULTS.md; per-channel's constant over-estimated them
# by 8 %, so a per-tensor target was pruned to ~1.8 MB for a 2 MB budget).
INT8_BYTES_PER_CHANNEL = 28
INT8_BYTES_PER_CHANNEL_PER_TENSOR = 4
INT8_BYTES_PER_LAYER = 1_120
BUDGET_TOLERANCE = 0.03  # a solved model lands at most this far under its budget (unless round_to forbids it)


def _split_blocks(model: nn.Module) -> int:
    """How many ultralytics C2f/C3k2 blocks (unsplit) ``model`` holds."""
    return sum(type(m) in SPLITTABLE for m in model.modules())


def int8_bytes(model: nn.Module, per_channel: bool = True) -> int:
    """Estimated size in bytes of the model's full-INT8 TFLite file: for each exported conv/linear layer (BatchNorm
    folded), 1 byte per weight + ``INT8_BYTES_PER_CHANNEL`` per output channel (``..._PER_TENSOR`` for per-tensor
    weights) + ``INT8_BYTES_PER_LAYER`` of graph structure (a C2f/C3k2 counted in its split form, cv1 as two layers).

    A walk over the module tree (no export), strictly increasing in every layer's channels. On the YOLO models of
    ``bench/int8_size.py`` it lands 0.1-1 % above the real file (yolo11n: 0.1-0.5 %)."""
    skip = not_exported(model)
    per_ch = INT8_BYTES_PER_CHANNEL if per_channel else INT8_BYTES_PER_CHANNEL_PER_TENSOR
    n = 0
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)) and id(m) not in skip:
            n += m.weight.numel() + per_ch * m.weight.shape[0] + INT8_BYTES_PER_LAYER
    return n + INT8_BYTES_PER_LAYER * _split_blocks(model)


# TFLite Micro's arena = the planned activations (``peak_activation_bytes``: measured 1.7 % under TFLM's "head" on
# yolo11n at 160 px) + its persistent "tail": per conv output channel, the requantize multiplier and shift (2 int32);
# per exported conv/linear layer, its share of the interpreter's structures (TfLiteEvalTensor 24 B per tensor,
# NodeAndRegistration 64 B per op, op data; ~6 tensors and ~3.7 ops per conv). Read from print_allocations() on
# yolo11n files; the fit and its error: bench/arena_estimate.py, bench/RESULTS.md.
ARENA_BYTES_PER_CHANNEL = 8
ARENA_BYTES_PER_LAYER = 660
ARENA_HEAD_SCALE = 1.02


def arena_bytes(model: nn.Module, imgsz: int) -> int:
    """Estimated TFLite Micro tensor arena (bytes of RAM) of the model's full-INT8 file at ``imgsz``."""
    skip = not_exported(model)
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and id(m) not in skip]
    tail = sum(ARENA_BYTES_PER_CHANNEL * m.weight.shape[0] + ARENA_BYTES_PER_LAYER for m in layers)
    return int(ARENA_HEAD_SCALE * peak_activation_bytes(model, imgsz)) + tail


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, imgsz: int) -> int:
    """Multiply-accumulates of one forward at ``imgsz`` (torch-pruning's counter), without touching BN statistics."""
    was_training = model.training
    model.eval()
    try:
        p = next(model.parameters())
        macs, _ = tp.utils.count_ops_and_params(model, torch.zeros(1, 3, imgsz, imgsz, device=p.device, dtype=p.dtype))
    finally:
        model.train(was_training)
    return int(macs)


# What a budget (``prune.target.<kind>``) can be set on: kind -> cost(model, imgsz, per_channel), ``per_channel`` the
# INT8 file's weight granularity. A new budget is one entry here.
MEASURES: Registry[Callable[..., int]] = Registry("budget")
MEASURES.register("params", lambda m, imgsz, per_channel: count_params(m))
MEASURES.register("macs", lambda m, imgsz, per_channel: count_macs(m, imgsz))
MEASURES.register("int8_bytes", lambda m, imgsz, per_channel: int8_bytes(m, per_channel))
MEASURES.register("arena_bytes", lambda m, imgsz, per_channel: arena_bytes(m, imgsz))  # TFLite Micro's arena (RAM)


def measure(model: nn.Module, kind: str, imgsz: int, per_channel: bool = True) -> int:
    return MEASURES[kind](model, imgsz, per_channel)


def model_costs(model: nn.Module, imgsz: int, per_channel: bool = True) -> dict[str, int]:
    """Every cost a budget can be set on: parameters, MACs at ``imgsz``, estimated INT8 export bytes (flash, for
    per-channel or per-tensor weights) and TFLite Micro arena (RAM)."""
    return {kind: measure(model, kind, imgsz, per_channel) for kind in MEASURES}


def solve_ratio(cost_at: Callable[[float], int], budget: int, *, hi: float = 0.999, iters: int = 18,
                tol: float = BUDGET_TOLERANCE) -> tuple[float, int, float]:
    """The smallest pruning ratio in ``[0, hi]`` whose cost is within the budget, by bisection.

    ``cost_at(ratio)`` is the cost of the model pruned to ``ratio`` (non-increasing in the ratio). Stops as soon as a
    ratio lands in ``[budget * (1 - tol), budget]``. Returns ``(ratio, cost, over)``, ``over`` the largest ratio
    tried that was over budget; raises ``ValueError(cost at hi)`` if even ``hi`` does not fit.
    """
    c0 = cost_at(0.0)
    if c0 <= budget:
        return 0.0, c0, 0.0
    c_hi = cost_at(hi)
    if c_hi > budget:
        raise ValueError(c_hi)
    lo, best = 0.0, (hi, c_hi)
    for _ in range(iters):
        if best[1] >= budget * (1 - tol):
            break
        mid = (lo + best[0]) / 2
        c = cost_at(mid)
        if c <= budget:
            best = (mid, c)
        else:
            lo = mid
    return (*best, lo)
