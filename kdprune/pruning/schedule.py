"""Pruning schedules as pure functions of the step (Torch-Pruning's ``scheduler`` convention).

``fraction_at(k, steps, shape)`` is the share of the final pruning ratio reached after step ``k`` of ``steps``;
``PruneSchedule`` maps steps to the training epochs at whose start they run.
"""

from __future__ import annotations

from dataclasses import dataclass

from kdprune.registry import Registry

# Schedule shapes (``prune.shape``): share of the final ratio at progress t = k / steps in (0, 1) after step k.
# ``cubic`` is Zhu & Gupta's gradual schedule (To prune, or not to prune, 2017): large steps first, while the network
# still has redundancy, small ones near the end. ``linear`` takes equal steps; ``oneshot`` all at once.
PRUNE_SHAPES: Registry = Registry("pruning schedule shape")
PRUNE_SHAPES.register("cubic", lambda t: 1.0 - (1.0 - t) ** 3)
PRUNE_SHAPES.register("linear", lambda t: t)
PRUNE_SHAPES.register("oneshot", lambda t: 1.0)


def fraction_at(k: int, steps: int, shape: str = "cubic") -> float:
    """Fraction of the final ratio after step ``k`` (0 = none yet, ``steps`` = all of it), for a shape of
    ``PRUNE_SHAPES``."""
    curve = PRUNE_SHAPES.lookup(shape, "prune.shape")
    if k <= 0:
        return 0.0
    if k >= steps:
        return 1.0
    return float(curve(k / steps))


def epoch_index(value, max_epochs: int) -> int:
    """An epoch index from the config, for every phase (pruning, QAT): ``k >= 0`` as written (0-based), ``-k``
    counted from the end (``-4`` in a 25-epoch run: epoch 21, the start of the last four)."""
    v = int(value)
    return v + max_epochs if v < 0 else v


@dataclass(frozen=True)
class PruneSchedule:
    """Pruning steps spread evenly over epochs ``start_epoch`` .. ``end_epoch`` (0-based, both included)."""

    start_epoch: int
    end_epoch: int
    steps: int
    shape: str = "cubic"

    def __post_init__(self):
        if self.shape == "oneshot":
            object.__setattr__(self, "steps", 1)
            object.__setattr__(self, "end_epoch", self.start_epoch)

    def epochs(self) -> list[int]:
        """The epoch at whose start each step runs."""
        if self.steps == 1:
            return [self.end_epoch]
        span = self.end_epoch - self.start_epoch
        return [self.start_epoch + round(k * span / (self.steps - 1)) for k in range(self.steps)]

    def fraction(self, k: int) -> float:
        """Share of the final ratio after step ``k`` (1-based)."""
        return fraction_at(k, self.steps, self.shape)

    def validate(self, max_epochs: int) -> str | None:
        """What is wrong with this schedule for a run of ``max_epochs``, or None."""
        if (msg := PRUNE_SHAPES.problem(self.shape, "prune.shape")) is not None:
            return msg
        if self.steps < 1:
            return f"prune.steps={self.steps}: must be >= 1"
        if not 0 <= self.start_epoch <= self.end_epoch:
            return f"prune.start_epoch={self.start_epoch}, prune.end_epoch={self.end_epoch}: need 0 <= start <= end"
        if self.end_epoch >= max_epochs:
            return (f"prune.end_epoch={self.end_epoch}: the last step must run before the last epoch "
                    f"(trainer.max_epochs={max_epochs}); leave recovery epochs after it")
        if self.steps > 1 and len(set(self.epochs())) < self.steps:
            return (f"prune.steps={self.steps} do not fit in epochs {self.start_epoch}..{self.end_epoch}: at most "
                    f"{self.end_epoch - self.start_epoch + 1} steps, one per epoch")
        return None
