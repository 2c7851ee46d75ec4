"""The QAT phase: the last epochs of the run train the fake-quantized graph, then BN and observers freeze."""

from __future__ import annotations

import lightning as L
import torch.distributed as dist
from lightning.pytorch.utilities import rank_zero_info
from omegaconf import DictConfig

from kdprune.errors import UserError
from kdprune.pruning import epoch_index


class QATPhase(L.Callback):
    """At the start of ``start_epoch`` the module's student becomes its fake-quantized graph
    (``DetectionModule.start_qat``); at ``freeze_bn_epoch`` BatchNorm statistics freeze (the fold is final); at
    ``freeze_observer_epoch`` the activation/weight ranges freeze, so the last epochs train against the exact scales
    that are exported. ``best.pt`` stays the float model of the epochs before (see UltralyticsCheckpoint)."""

    def __init__(self, *, start_epoch: int, freeze_bn_epoch: int, freeze_observer_epoch: int, per_channel: bool,
                 imgsz: int):
        self.start_epoch, self.freeze_bn_epoch = start_epoch, freeze_bn_epoch
        self.freeze_observer_epoch, self.per_channel, self.imgsz = freeze_observer_epoch, per_channel, imgsz

    @classmethod
    def from_config(cls, cfg: DictConfig, *, max_epochs: int, imgsz: int, prune_end: int | None) -> QATPhase:
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

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module) -> None:
        e = trainer.current_epoch
        if e < self.start_epoch:
            return
        if pl_module.qat is None:
            pl_module.start_qat(self.imgsz, per_channel=self.per_channel)
            rank_zero_info(f"kdprune: QAT from epoch {e + 1}: INT8 fake-quant "
                           f"({'per-channel' if self.per_channel else 'per-tensor'} weights) "
                           f"{pl_module.qat.state()['fake_quant']}")
        qat = pl_module.qat
        for what in qat.advance(bn=e >= self.freeze_bn_epoch, observers=e >= self.freeze_observer_epoch):
            _sync_buffers(qat.graph)  # under DDP: rank 0's statistics and ranges, one set from here
            rank_zero_info(f"kdprune: QAT epoch {e + 1}: "
                           + ("BatchNorm statistics frozen" if what == "bn" else "quantization ranges frozen"))
        qat.train(True)
        pl_module.log("quant/phase", 1.0 + qat.bn_frozen + qat.observers_frozen, on_step=False, on_epoch=True,
                      batch_size=1)


def _sync_buffers(graph) -> None:
    """Under DDP, rank 0's BN statistics and quantization ranges for every rank at each freeze: each rank observed
    its own data shard (measured: activation scales 5 % apart across 2 ranks), and from here they must be one set."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        for b in graph.buffers():
            dist.broadcast(b, src=0)
