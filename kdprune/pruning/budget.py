"""Size budgets: what a model costs (params, MACs, estimated INT8 bytes) and the ratio that meets a budget."""

from __future__ import annotations

from typing import Callable

import torch
import torch_pruning as tp
from torch import nn

# Per output channel of a conv in a per-channel INT8 TFLite model: weight scale (float32) + zero point (int64),
# the int32 bias, and the bias's own scale + zero point: 4 + 8 + 4 + 4 + 8 bytes. BatchNorm folds into the conv.
INT8_BYTES_PER_CHANNEL = 28
BUDGET_TOLERANCE = 0.03  # a solved model lands at most this far under its budget (unless round_to forbids it)


def int8_bytes(model: nn.Module) -> int:
    """Estimated size of the model's full-INT8 export: 1 byte per conv/linear weight (BatchNorm folded) plus
    ``INT8_BYTES_PER_CHANNEL`` of quantization parameters and bias per output channel. Graph structure and
    activation quantization parameters (a few KB) are not counted."""
    n = 0
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            n += m.weight.numel() + INT8_BYTES_PER_CHANNEL * m.weight.shape[0]
    return n


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


MEASURES: dict[str, Callable[..., int]] = {
    "params": lambda m, imgsz: count_params(m),
    "macs": lambda m, imgsz: count_macs(m, imgsz),
    "int8_bytes": lambda m, imgsz: int8_bytes(m),
}


def measure(model: nn.Module, kind: str, imgsz: int) -> int:
    return MEASURES[kind](model, imgsz)


def model_costs(model: nn.Module, imgsz: int) -> dict[str, int]:
    """Every cost a budget can be set on: parameters, MACs at ``imgsz``, estimated INT8 export bytes."""
    return {kind: measure(model, kind, imgsz) for kind in MEASURES}


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
