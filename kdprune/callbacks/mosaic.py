"""Close mosaic augmentation for the final epochs, as ultralytics' trainer does (``close_mosaic``)."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.utilities import rank_zero_info


class CloseMosaic(L.Callback):
    """Turns mosaic (and mixup/copy-paste) off for the last ``hyp.close_mosaic`` epochs.

    Checked before each epoch's loader is iterated (at fit start, for resumed runs, and at every epoch end).
    """

    def _maybe_close(self, trainer: L.Trainer, pl_module, next_epoch: int) -> None:
        n = int(getattr(pl_module.hyp, "close_mosaic", 0) or 0)
        dm = trainer.datamodule
        if n and next_epoch >= trainer.max_epochs - n and not dm.mosaic_closed:
            rank_zero_info(f"Closing dataloader mosaic from epoch {next_epoch + 1}/{trainer.max_epochs}")
            dm.close_mosaic()

    def on_train_start(self, trainer, pl_module) -> None:
        self._maybe_close(trainer, pl_module, trainer.current_epoch)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._maybe_close(trainer, pl_module, trainer.current_epoch + 1)
