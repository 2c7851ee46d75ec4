"""The total distillation weight over epochs, as a pure function (like the pruning schedules)."""

from __future__ import annotations

import math

from kdprune.registry import Registry

# KD weight shapes (``distill.schedule.shape``): the multiplier at progress x in [0, 1] over the run, going to ``final``
KD_SCHEDULES: Registry = Registry("KD schedule shape")
KD_SCHEDULES.register("constant", lambda x, final: 1.0)
KD_SCHEDULES.register("linear", lambda x, final: 1.0 + (final - 1.0) * x)
KD_SCHEDULES.register("cosine", lambda x, final: final + (1.0 - final) * 0.5 * (1 + math.cos(math.pi * x)))


def kd_scale_at(epoch: int, max_epochs: int, shape: str = "constant", final: float = 1.0,
                warmup_epochs: int = 0) -> float:
    """Multiplier of the KD loss at ``epoch`` (0-based): a linear ramp from 0 over the first ``warmup_epochs``, times a
    ``shape`` (``KD_SCHEDULES``) going from 1 at the first epoch to ``final`` at the last (``constant`` ignores
    ``final``)."""
    curve = KD_SCHEDULES.lookup(shape, "distill.schedule.shape")
    ramp = min(1.0, (epoch + 1) / warmup_epochs) if warmup_epochs > 0 else 1.0
    return ramp * curve(epoch / max(max_epochs - 1, 1), final)
