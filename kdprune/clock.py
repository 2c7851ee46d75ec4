"""Wall time of a training epoch's steps: images/s and the teacher's share, for TensorBoard and summary.json."""

from __future__ import annotations

import time


class EpochClock:
    """Training batches only (validation excluded): ``reset`` at the epoch's start, ``batch`` after each step, ``kd``
    adds the seconds of the teacher's forward and the KD loss. CPU-exact; on a GPU the kernels run asynchronously,
    so ``kd`` counts launch time (an under-estimate)."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.t0 = self.t_last = time.perf_counter()
        self.images, self.kd = 0, 0.0

    def batch(self, images: int) -> None:
        self.images += images
        self.t_last = time.perf_counter()

    def images_per_s(self) -> float | None:
        dt = self.t_last - self.t0
        return self.images / dt if dt > 0 and self.images else None

    def kd_ms_per_step(self, batch: int) -> float:
        """The teacher's forward + the KD loss, ms per training step of ``batch`` images."""
        return round(1000 * self.kd / max(self.images / max(batch, 1), 1), 2)

    def kd_share(self) -> float | None:
        dt = self.t_last - self.t0
        return self.kd / dt if dt > 0 else None
