"""The QAT phase's schedule: the last epochs of the run train the fake-quantized graph, then BN and observers freeze."""

from __future__ import annotations

from omegaconf import DictConfig

from kdprune.errors import UserError
from kdprune.pruning.schedule import epoch_index


class QATSchedule:
    """At the start of ``start_epoch`` the student becomes its fake-quantized graph (``Compression.start_qat``); at
    ``freeze_bn_epoch`` BatchNorm statistics freeze (the fold is final); at ``freeze_observer_epoch`` the
    activation/weight ranges freeze, so the last epochs train against the exact scales that are exported. ``best.pt``
    stays the float model of the epochs before (see UltralyticsCheckpoint)."""

    def __init__(self, *, start_epoch: int, freeze_bn_epoch: int, freeze_observer_epoch: int, per_channel: bool,
                 imgsz: int):
        self.start_epoch, self.freeze_bn_epoch = start_epoch, freeze_bn_epoch
        self.freeze_observer_epoch, self.per_channel, self.imgsz = freeze_observer_epoch, per_channel, imgsz

    @classmethod
    def from_config(cls, cfg: DictConfig, *, max_epochs: int, imgsz: int, prune_end: int | None) -> QATSchedule:
        start = epoch_index(cfg.start_epoch, max_epochs)
        bn, obs = epoch_index(cfg.freeze_bn_epoch, max_epochs), epoch_index(cfg.freeze_observer_epoch, max_epochs)
        last = max_epochs - 1
        if not 0 <= start <= last:
            raise UserError(f"quant.start_epoch={cfg.start_epoch} is outside the run (trainer.max_epochs={max_epochs}: "
                            f"epochs 0..{last}, or -1..-{max_epochs} from the end); QAT needs at least one epoch")
        for key, v in (("freeze_bn_epoch", bn), ("freeze_observer_epoch", obs)):
            if not start <= v <= max_epochs:
                raise UserError(f"quant.{key}={cfg[key]} must fall between quant.start_epoch ({start}) and "
                                f"trainer.max_epochs ({max_epochs}, meaning never)")
        if prune_end is not None and prune_end >= start:
            raise UserError(f"quant.start_epoch={start} must come after the last pruning step "
                            f"(prune.end_epoch={prune_end}): QAT trains the final architecture")
        from kdprune.quant import backend, per_channel

        if str(cfg.backend) != backend.NAME:
            raise UserError(f"quant.backend={cfg.backend}: kdprune has one quantization backend, {backend.NAME}")
        return cls(start_epoch=start, freeze_bn_epoch=bn, freeze_observer_epoch=obs,
                   per_channel=per_channel(cfg.granularity), imgsz=imgsz)

    def due(self, epoch: int) -> dict:
        """What ``epoch`` runs: ``{"qat": bool, "bn": freeze BN by now, "observers": freeze ranges by now}``."""
        return {"qat": epoch >= self.start_epoch, "bn": epoch >= self.freeze_bn_epoch,
                "observers": epoch >= self.freeze_observer_epoch}
