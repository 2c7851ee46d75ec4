"""Taylor importance that accumulates over the training steps themselves (no extra forward or backward).

The first-order Taylor score of a weight, ``|w * dL/dw|``, is noisy from one batch to the next: scored on a few
batches at each step, consecutive pruning steps disturb different channels. Here it is averaged over every optimizer
step with an exponential moving average, so the channels chosen at step k are the ones step k+1 would also choose.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from kdprune.pruning.carry import IndexMap, take

SCORED = (nn.Conv2d, nn.BatchNorm2d)  # the layers torch-pruning's magnitude importance reads weights of


class TaylorEMA:
    """Per weight element of every conv and BatchNorm of ``model``: an EMA of ``|w * grad|`` over optimizer steps,
    with a time constant of ``steps`` steps. ``as_weights`` shows it to torch-pruning's group importance in place of
    the weights, so groups (concat offsets, coupled layers, input channels of consumers) are scored by torch-pruning's
    own reduction: the accumulated Taylor score of a channel is the L1 "magnitude" of its accumulated terms."""

    def __init__(self, steps: float = 1.0):
        self.set_time_constant(steps)
        self.acc: dict[str, torch.Tensor] = {}
        self.updates = 0
        self._params: list[tuple[str, nn.Parameter]] | None = None

    def set_time_constant(self, steps: float) -> None:
        """Average over about ``steps`` optimizer steps (an EMA with decay ``1 - 1/steps``)."""
        self.decay = max(0.0, 1.0 - 1.0 / max(float(steps), 1.0))

    def _scored(self, model: nn.Module) -> list[tuple[str, nn.Parameter]]:
        if self._params is None:
            self._params = [(f"{n}.weight", m.weight) for n, m in model.named_modules()
                            if isinstance(m, SCORED) and getattr(m, "weight", None) is not None]
        return self._params

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """After backward, before the optimizer step: fold this step's ``|w * grad|`` into the average."""
        for name, p in self._scored(model):
            if p.grad is None:
                continue
            x = (p.detach() * p.grad).abs_()
            a = self.acc.get(name)
            if a is None:
                self.acc[name] = x
            else:
                if a.device != x.device:  # restored from a checkpoint on the CPU, training on a GPU
                    a = self.acc[name] = a.to(x.device)
                a.mul_(self.decay).add_(x, alpha=1.0 - self.decay)
        self.updates += 1

    @contextmanager
    def as_weights(self, model: nn.Module):
        """Within the block, every scored weight reads as its accumulated score (weights are put back after)."""
        swapped = []
        try:
            for name, p in self._scored(model):
                a = self.acc.get(name)
                if a is not None and a.shape == p.shape:
                    swapped.append((p, p.data))
                    p.data = a.to(p.device)
            yield
        finally:
            for p, data in swapped:
                p.data = data

    def reindex(self, index_map: IndexMap, prefix: str = "") -> None:
        """After a pruning step: keep the accumulated scores of the kept elements (``index_map`` names carry
        ``prefix``, e.g. ``model.`` for the LightningModule's names)."""
        for name, a in list(self.acc.items()):
            if (kept := index_map.get(prefix + name)) is not None:
                self.acc[name] = take(a, a.shape, kept)
        self._params = None  # the model's parameters are new tensors

    def state_dict(self) -> dict:
        return {"acc": {k: v.detach().cpu() for k, v in self.acc.items()}, "updates": self.updates}

    def load_state_dict(self, state: dict, device: torch.device | str = "cpu") -> None:
        self.acc = {k: v.to(device) for k, v in state.get("acc", {}).items()}
        self.updates = int(state.get("updates", 0))
        self._params = None
