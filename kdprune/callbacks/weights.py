"""weights/last.pt and weights/best.pt in ultralytics' format after every validation."""

from __future__ import annotations

from pathlib import Path

import lightning as L

from kdprune.yolo import save_ultralytics_checkpoint


class UltralyticsCheckpoint(L.Callback):
    """Writes the EMA model as ``last.pt`` every epoch and as ``best.pt`` when val fitness (mAP50-95) improves.

    These are plain ultralytics checkpoints (``ultralytics.YOLO(path)`` loads them). Lightning's own ModelCheckpoint
    keeps the full training state for ``ckpt_path=`` resume beside them. ``best.pt`` is chosen only among models of
    the final architecture: a pruning step (which removes channels) starts the race for best again.
    """

    def __init__(self, dirpath: str | Path):
        self.dirpath = Path(dirpath)
        self.best_fitness: float | None = None
        self.best_epoch: int | None = None
        self.best_metrics: dict = {}
        self.best_arch = 0  # removals in the pruning history when best.pt was written

    @property
    def last(self) -> Path:
        return self.dirpath / "last.pt"

    @property
    def best(self) -> Path:
        return self.dirpath / "best.pt"

    @property
    def pre_prune(self) -> Path:
        return self.dirpath / "pre_prune.pt"

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module) -> None:
        """The student as it was just before the first pruning step chooses its channels (a row of the report): the
        epoch whose start chooses them (``CompressionSteps``, after this callback) is the dense model's last."""
        if pl_module.compression.pre_prune_due(trainer.current_epoch) and trainer.is_global_zero:
            m = pl_module.val_metrics or {}
            save_ultralytics_checkpoint(self.pre_prune, pl_module.eval_model, epoch=trainer.current_epoch,
                                        train_args=pl_module.train_args, fitness=m.get("fitness"),
                                        metrics={f"metrics/{k}(B)": m[k] for k in ("mAP50", "mAP50-95") if k in m},
                                        updates=pl_module.ema.updates if pl_module.ema is not None else 0)

    def on_validation_end(self, trainer: L.Trainer, pl_module) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or not pl_module.val_metrics:
            return
        m = pl_module.val_metrics
        if pl_module.qat is not None:
            # Fake-quant epochs: best.pt stays the best float model before QAT; last.pt gets the QAT-trained float
            # weights (a plain ultralytics model; the INT8 artifacts come from the exports)
            save_ultralytics_checkpoint(self.last, pl_module.model, epoch=trainer.current_epoch,
                                        train_args=pl_module.train_args, fitness=m["fitness"],
                                        metrics={f"metrics/{k}(B)": m[k] for k in ("mAP50", "mAP50-95")},
                                        extra={"qat": pl_module.qat.state()})
            return
        fitness = m["fitness"]
        arch = len(pl_module.pruning_history)
        if arch != self.best_arch:  # pruned since: an earlier, larger model is no longer a candidate
            self.best_fitness, self.best_arch = None, arch
        metrics = {f"metrics/{k}(B)": m[k] for k in ("precision", "recall", "mAP50", "mAP50-95")}
        kw = dict(epoch=trainer.current_epoch, train_args=pl_module.train_args, metrics=metrics, fitness=fitness,
                  updates=pl_module.ema.updates if pl_module.ema is not None else 0,
                  extra={"pruning_history": pl_module.pruning_history} if pl_module.pruning_history else None)
        save_ultralytics_checkpoint(self.last, pl_module.eval_model, **kw)
        if self.best_fitness is None or fitness >= self.best_fitness:
            self.best_fitness, self.best_epoch = fitness, trainer.current_epoch
            self.best_metrics = {k: v for k, v in m.items() if k != "per_class"}
            save_ultralytics_checkpoint(self.best, pl_module.eval_model, **kw)

    def state_dict(self) -> dict:
        return {"best_fitness": self.best_fitness, "best_epoch": self.best_epoch, "best_metrics": self.best_metrics,
                "best_arch": self.best_arch}

    def load_state_dict(self, state_dict: dict) -> None:
        self.best_fitness = state_dict.get("best_fitness")
        self.best_epoch = state_dict.get("best_epoch")
        self.best_metrics = state_dict.get("best_metrics", {})
        self.best_arch = state_dict.get("best_arch", 0)
