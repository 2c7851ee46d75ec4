"""Optimizer and learning-rate schedule exactly as ultralytics' trainer builds them."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import torch
from ultralytics.engine.trainer import BaseTrainer
from ultralytics.utils.torch_utils import one_cycle


def build_optimizer(model: torch.nn.Module, hyp, nc: int, iterations: float, decay: float):
    """Ultralytics' parameter groups (decayed weights, BN weights, biases) and optimizer choice, incl. ``auto``.

    Calls ``BaseTrainer.build_optimizer`` on a stand-in holding only what it reads (``args``, ``data``), so we follow
    the pinned release's rules rather than a copy of them. Returns ``(optimizer, resolved)`` where ``resolved`` holds
    the optimizer name, lr0 and warmup_bias_lr that ``auto`` may have chosen.
    """
    shim = SimpleNamespace(args=SimpleNamespace(**vars(hyp)), data={"nc": nc})
    opt = BaseTrainer.build_optimizer(shim, model=model, name=hyp.optimizer, lr=hyp.lr0, momentum=hyp.momentum,
                                      decay=decay, iterations=iterations)
    if any(g.get("fused") for g in opt.param_groups):
        # ultralytics asks for fused Adam/AdamW on CUDA; fused steps unscale AMP gradients themselves, so Lightning's
        # AMP plugin refuses to clip them (optim.grad_clip) and trainer=gpu failed at its first step. The same groups
        # in the default (foreach) implementation: same update, and the clip runs on unscaled gradients.
        for g in opt.param_groups:
            g.pop("fused")
        opt = type(opt)(opt.param_groups)
    for g in opt.param_groups:
        g.setdefault("initial_lr", g["lr"])
    resolved = {k: getattr(shim.args, k) for k in ("optimizer", "lr0", "warmup_bias_lr")}
    return opt, resolved


class LRSchedule:
    """Ultralytics' schedule as a pure function of the training step: warm-up then linear or cosine decay.

    Warm-up (first ``warmup_epochs`` of batches, leaving at least one epoch) ramps every lr from 0 (biases from
    ``warmup_bias_lr``) to ``initial_lr * lf(epoch)``, momentum from ``warmup_momentum``, and gradient accumulation from
    1 to its nominal value. Keyed to the global batch index so a pruning step that rebuilds the optimizer continues it.
    """

    def __init__(self, epochs: int, batches_per_epoch: int, hyp, accumulate: int):
        self.epochs, self.nb, self.accumulate = epochs, batches_per_epoch, accumulate
        self.hyp = hyp
        linear = lambda x: max(1 - x / epochs, 0) * (1.0 - hyp.lrf) + hyp.lrf  # noqa: E731 (ultralytics' own)
        self.lf = one_cycle(1, hyp.lrf, epochs) if hyp.cos_lr else linear
        warmup_epochs = min(hyp.warmup_epochs, max(epochs - 1, 0))
        self.nw = round(warmup_epochs * batches_per_epoch) if warmup_epochs > 0 else 0

    def apply(self, optimizer, ni: int) -> int:
        """Set lr/momentum of every param group for global batch ``ni``; return the accumulation to use."""
        epoch = ni // max(self.nb, 1)
        base = self.lf(epoch)
        if self.nw and ni <= self.nw:
            xi = [0, self.nw]
            for g in optimizer.param_groups:
                start = self.hyp.warmup_bias_lr if g.get("param_group") == "bias" else 0.0
                g["lr"] = float(np.interp(ni, xi, [start, g["initial_lr"] * base]))
                if "momentum" in g:
                    g["momentum"] = float(np.interp(ni, xi, [self.hyp.warmup_momentum, self.hyp.momentum]))
            return max(1, int(np.interp(ni, xi, [1, self.accumulate]).round()))
        for g in optimizer.param_groups:
            g["lr"] = g["initial_lr"] * base
            if "momentum" in g:
                g["momentum"] = self.hyp.momentum
        return self.accumulate


def nominal_accumulate(hyp, batch: int, batches_per_epoch: int, epochs: int) -> tuple[int, float]:
    """Ultralytics' nominal-batch accumulation (nbs) and the weight decay scaled to it."""
    accumulate = max(round(hyp.nbs / batch), 1)
    decay = hyp.weight_decay * batch * accumulate / hyp.nbs
    return min(accumulate, max(batches_per_epoch * epochs, 1)), decay


def optimizer_iterations(n_images: int, batch: int, nbs: int, epochs: int) -> int:
    """The iteration count ultralytics' ``optimizer=auto`` decides on."""
    return math.ceil(n_images / max(batch, nbs)) * epochs
