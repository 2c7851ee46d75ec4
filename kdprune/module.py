"""The LightningModule: ultralytics' DetectionModel trained with ultralytics' loss, optimizer, schedule and EMA."""

from __future__ import annotations

import time
from contextlib import nullcontext

import lightning as L
import torch

from kdprune.clock import EpochClock
from kdprune.compression import Compression
from kdprune.data import prepare_batch
from kdprune.distill import Distiller, Teacher, kd_scale_at
from kdprune.yolo import (
    DetectionCriterion,
    DetectionEvaluator,
    LRSchedule,
    ModelEMA,
    build_optimizer,
    in_fp32,
    nominal_accumulate,
    optimizer_iterations,
    raw_head,
    refresh_ema,
)


class DetectionModule(L.LightningModule):
    """Trains a YOLO detector the way ultralytics' DetectionTrainer does, inside Lightning's loops.

    Optimization is manual because ultralytics ramps gradient accumulation during warm-up (Lightning's
    ``accumulate_grad_batches`` is fixed) and updates the EMA after each optimizer step. Validation runs on the EMA.
    ``training_step`` returns ``{loss, det_loss, kd_loss, ...}``.

    With a ``teacher`` and a ``distiller``, each step adds ``kd_scale * distiller(student, teacher)`` (per image, times
    the batch size, as ultralytics' loss is) to the detection loss; ``kd_schedule`` sets ``kd_scale`` per epoch.
    """

    def __init__(self, model: torch.nn.Module, hyp, names: dict[int, str], data: dict, *, val: dict,
                 grad_clip: float | None = None, ema: bool = False, plot_every: int = 0,
                 criterion: DetectionCriterion | None = None,
                 distiller: Distiller | None = None, teacher: Teacher | None = None, kd_schedule: dict | None = None,
                 train_args: dict | None = None, compression: Compression | None = None):
        super().__init__()
        self.train_args = dict(train_args or {})  # ultralytics' train args, written into every best.pt / last.pt
        self.model, self.hyp, self.names, self.data = model, hyp, dict(names), data
        self.grad_clip, self.use_ema, self.plot_every = grad_clip, ema, plot_every
        self.automatic_optimization = False
        # v8DetectionLoss (E2ELoss for end-to-end heads like YOLO26), with the configured classification loss
        self.criterion = criterion if criterion is not None else DetectionCriterion(model)
        if (distiller is None) != (teacher is None):
            raise ValueError("distillation needs both a teacher and a distiller")
        self.distiller = distiller  # a submodule: its adapters train, are checkpointed, and follow pruning
        self.teacher = teacher  # not a submodule (see Teacher): never trained, saved or wrapped
        self.kd_schedule = dict(kd_schedule or {})
        self.kd_scale = 1.0
        self.kd_ms_per_step: float | None = None  # teacher forward + KD loss, last epoch
        self.clock = EpochClock()  # this epoch's training steps: images/s, the teacher's share
        self.ema: ModelEMA | None = None
        self.val_args = dict(val)  # NMS settings of every evaluation (val_settings)
        self.evaluator = DetectionEvaluator(names, **self.val_args)
        self.schedule: LRSchedule | None = None
        self.resolved_optim: dict = {}
        self.accumulate_nominal, self._optim_args = 1, None  # set with the optimizer (configure_optimizers)
        self.last_opt_step = -1
        self.val_metrics: dict = {}
        self.plot_batch = None  # (batch, nms output) of the first val batch on plotting epochs
        self._ema_state = None
        self._bns = None
        # pruning and QAT: their phases, the removals so far, the fake-quantized graph (stepped by CompressionSteps)
        self.compression = compression if compression is not None else Compression()
        self.bn_l1 = 0.0  # L1 sparsity on BN gammas (network slimming), set by the pruning phase

    # ---- setup -------------------------------------------------------------------------------------------------
    def _batches_per_epoch(self) -> int:
        """Training batches per epoch. Lightning sets ``num_training_batches`` only after ``configure_optimizers``
        and ``on_fit_start`` have run, so before that it is counted from the (cheap to build) loader."""
        nb = self.trainer.num_training_batches
        return max(int(nb if nb != float("inf") else len(self.trainer.datamodule.train_dataloader())), 1)

    def configure_optimizers(self):
        dm = self.trainer.datamodule
        nb = self._batches_per_epoch()
        epochs = self.trainer.max_epochs
        accumulate, decay = nominal_accumulate(self.hyp, dm.batch * self.trainer.world_size, nb, epochs)
        iterations = optimizer_iterations(len(dm.train_set), dm.batch, self.hyp.nbs, epochs)
        opt, self.resolved_optim = build_optimizer(self.trainable(), self.hyp, len(self.names), iterations, decay)
        self.accumulate_nominal, self._optim_args = accumulate, (iterations, decay)
        return opt

    def optimizer_state(self) -> tuple[dict, dict]:
        """Every parameter's optimizer state and shape, by name (what ``new_optimizer(carry=...)`` puts back)."""
        opt = self.trainer.strategy.optimizers[0]
        named = dict(self.named_parameters())
        return ({n: dict(opt.state[p]) for n, p in named.items() if p in opt.state},
                {n: p.shape for n, p in named.items()})

    def set_bn_sparsity(self, value: float) -> None:
        """L1 on BN gammas (network slimming) from the next step on; 0 switches it off."""
        self.bn_l1 = float(value)

    def new_optimizer(self, carry: tuple | None = None) -> None:
        """A new optimizer over the current parameters (after channels were removed, or the QAT graph was built), with
        ``carry``'s state for the parameters that have one (else moments restart), and an EMA that reads the new
        tensors. (Under DDP, ``CompressionSteps`` then wraps the new tensors.)"""
        from kdprune.pruning.carry import carry_optimizer_state

        opt, _ = build_optimizer(self.trainable(), self.hyp, len(self.names), *self._optim_args)
        if carry is not None:
            carry_optimizer_state(*carry, dict(self.named_parameters()), opt)
        self.trainer.strategy.optimizers = [opt]
        if self.ema is not None:
            refresh_ema(self.ema)
        self._bns = None

    def accumulate_gradients(self, batches: int) -> None:
        """``.grad`` of the detection loss over ``batches`` fresh training batches, no optimizer step (first-order
        Taylor scores for a pruning step with no accumulated ones); under DDP each rank's own, not all-reduced."""
        self.model.zero_grad(set_to_none=True)
        ddp = self.trainer.strategy.model
        with ddp.no_sync() if hasattr(ddp, "no_sync") else nullcontext():
            for i, batch in enumerate(self.trainer.datamodule.train_dataloader()):
                if i >= batches:
                    break
                batch = prepare_batch(batch, self.device)
                loss, _, _ = self.criterion(self.model(batch["img"]), batch)
                loss.sum().backward()

    def trainable(self) -> torch.nn.Module:
        """What the optimizer trains: the student, and the distillation adapters if there are any."""
        if self.distiller is not None and any(True for _ in self.distiller.parameters()):
            return torch.nn.ModuleList([self.model, self.distiller])
        return self.model

    def on_fit_start(self) -> None:
        if self.teacher is not None:
            self.teacher.to(self.device)
            self._teacher_metrics()
        self.schedule = LRSchedule(self.trainer.max_epochs, self._batches_per_epoch(), self.hyp,
                                   self.accumulate_nominal)
        if self.use_ema and self.qat is None:  # no EMA once QAT runs (see start_qat)
            self.ema = ModelEMA(self.model)
            if self._ema_state is not None:
                self.ema.ema.load_state_dict(self._ema_state["state_dict"])
                self.ema.updates = self._ema_state["updates"]
        self.optimizers().zero_grad()

    def _teacher_metrics(self) -> None:
        """The teacher's val mAP, logged once per run (measured here unless its training already measured it)."""
        if not self.trainer.is_global_zero:
            return
        info = self.teacher.measure(self.trainer.datamodule.val_dataloader(shard=False), self.data, self.device,
                                    self.val_args)
        self.print(f"kdprune: teacher {info['model']} ({info['source']}): val mAP50-95 {info['mAP50-95']:.4f}, "
                   f"mAP50 {info['mAP50']:.4f}")
        for lg in self.loggers:
            lg.log_metrics({"teacher/mAP50-95": info["mAP50-95"], "teacher/mAP50": info["mAP50"]}, step=0)

    @property
    def qat(self):
        """The fake-quantized graph once the QAT phase started (it trains ``self.model``'s tensors), else None."""
        return self.compression.qat

    @property
    def pruning_history(self) -> list:
        return self.compression.history

    @property
    def eval_model(self) -> torch.nn.Module:
        if self.qat is not None:
            return self.qat
        return self.ema.ema if self.ema is not None else self.model

    def run_record(self, ckpt) -> object:
        """What the stages need from this finished run (``kdprune.export.stages.RunRecord``), read once here: the
        checkpoints ``ckpt`` (the ``UltralyticsCheckpoint``) saved, whether pruning removed anything, the teacher, and
        the QAT graph in eval mode (BN from running statistics, ranges as frozen: the exported arithmetic)."""
        from kdprune.export.stages import RunRecord

        if self.qat is not None:
            self.qat.train(False)
        t = self.teacher
        return RunRecord(best=ckpt.best, last=ckpt.last, pre_prune=ckpt.pre_prune, pruned=bool(self.pruning_history),
                         teacher=t.model if t is not None else None, teacher_info=t.info if t is not None else None,
                         qat_graph=self.qat.graph if self.qat is not None else None,
                         qat_note=str(self.qat.state()["fake_quant"]) if self.qat is not None else "")

    @property
    def student(self) -> torch.nn.Module:
        """What the training step runs: the model, or its fake-quantized graph during QAT."""
        return self.qat if self.qat is not None else self.model

    # ---- training ----------------------------------------------------------------------------------------------
    def on_train_epoch_start(self) -> None:
        self.clock.reset()
        if self.teacher is not None:
            self.kd_scale = kd_scale_at(self.current_epoch, self.trainer.max_epochs, **self.kd_schedule)
            self.log("train/kd_scale", self.kd_scale, on_step=False, on_epoch=True, batch_size=1)

    def training_step(self, batch: dict, batch_idx: int):
        opt = self.optimizers()
        ni = batch_idx + self.schedule.nb * self.current_epoch
        accumulate = self.schedule.apply(opt.optimizer, ni)
        bs = batch["img"].shape[0]  # (images in [0, 1]: the DataModule's on_after_batch_transfer)
        teacher = None
        if self.teacher is not None:
            t0 = time.perf_counter()
            teacher = raw_head(self.teacher(batch["img"]))
            self.clock.kd += time.perf_counter() - t0
        preds, teacher = in_fp32(self.student(batch["img"])), in_fp32(teacher)
        fg_needed = teacher is not None and self.distiller.needs_foreground
        with torch.autocast(self.device.type, enabled=False):  # mixed precision: the losses stay in fp32
            det_loss, items, fg = self.criterion(preds, batch, foreground=fg_needed)
            loss = det_loss.sum()
            out = {"det_loss": loss.detach()}
            if teacher is not None:
                t0 = time.perf_counter()
                kd_loss, kd_items = self.distiller(raw_head(preds), teacher, fg)
                loss = loss + self.kd_scale * kd_loss * bs  # per image -> per batch, as ultralytics' loss
                self.clock.kd += time.perf_counter() - t0
                out["kd_loss"] = kd_loss.detach()
        if self.trainer.world_size > 1:
            loss = loss * self.trainer.world_size  # DDP averages gradients; ultralytics scales back to the sum
        self.manual_backward(loss)
        if self.bn_l1:
            self._bn_sparsity()
        if ni - self.last_opt_step >= accumulate:
            self.clip_gradients(opt, gradient_clip_val=self.grad_clip, gradient_clip_algorithm="norm")
            opt.step()
            opt.zero_grad()
            if self.ema is not None:
                self.ema.update(self.model)
            self.last_opt_step = ni
        self.clock.batch(bs)
        self.log_dict({f"train/{k}": v for k, v in items.items()}, on_step=True, on_epoch=True, batch_size=bs,
                      prog_bar=True, sync_dist=False)
        if teacher is not None:  # each KD term beside the detection loss, in TensorBoard (not the progress bar)
            self.log_dict({f"train/kd_{k}": v for k, v in kd_items.items()}, on_step=True, on_epoch=True,
                          batch_size=bs, sync_dist=False)
        return {"loss": loss.detach(), **out, **items}

    def _bn_sparsity(self) -> None:
        """Network slimming's subgradient of ``bn_l1 * |gamma|``, added to every BatchNorm weight's gradient."""
        if self._bns is None:
            self._bns = [m.weight for m in self.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        for w in self._bns:
            if w.grad is not None:
                w.grad.add_(torch.sign(w.detach()), alpha=self.bn_l1)

    def on_train_epoch_end(self) -> None:
        self.criterion.update()
        if self.ema is not None:
            self.ema.update_attr(self.model, include=["yaml", "nc", "args", "names", "stride"])
        for i, g in enumerate(self.optimizers().optimizer.param_groups):  # per epoch, as ultralytics logs it
            self.log(f"lr/pg{i}", g["lr"], on_step=False, on_epoch=True, batch_size=1)
        if (rate := self.clock.images_per_s()) is not None:
            self.log("perf/train_images_per_s", rate, batch_size=1)
        if self.teacher is not None and self.trainer.num_training_batches:  # teacher forward + KD loss per step
            self.kd_ms_per_step = self.clock.kd_ms_per_step(self.trainer.datamodule.batch)
            self.log("perf/kd_ms_per_step", self.kd_ms_per_step, batch_size=1)
            if (share := self.clock.kd_share()) is not None:
                self.log("perf/kd_share_of_step", share, batch_size=1)

    # ---- validation --------------------------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self.evaluator.reset(self.eval_model, self.device, self.data)
        self.eval_model.eval()
        self.plot_batch = None

    def validation_step(self, batch: dict, batch_idx: int):
        model = self.eval_model
        with torch.autocast(self.device.type, enabled=False):  # fp32: bf16 would round boxes to 2 px at 256
            preds = model(batch["img"])
            _, items, _ = self.criterion(preds, batch)
            out = self.evaluator.update(preds, batch)
        bs = batch["img"].shape[0]
        self.log_dict({f"val/{k}": v for k, v in items.items()}, on_step=False, on_epoch=True, batch_size=bs,
                      sync_dist=True)
        if batch_idx == 0 and self._is_plot_epoch():
            self.plot_batch = (batch, out)

    def _is_plot_epoch(self) -> bool:
        last = self.current_epoch + 1 >= (self.trainer.max_epochs or 1)
        return bool(self.plot_every) and ((self.current_epoch + 1) % self.plot_every == 0 or last)

    def on_validation_epoch_end(self) -> None:
        m = self.evaluator.compute()
        self.val_metrics = m
        self.log_dict({f"val/{k}": m[k] for k in ("precision", "recall", "mAP50", "mAP50-95", "fitness")},
                      prog_bar=False, batch_size=1, sync_dist=False, rank_zero_only=True)
        self.log("val/mAP50-95_pbar", m["mAP50-95"], prog_bar=True, logger=False, batch_size=1, rank_zero_only=True)

    # ---- checkpoints (Lightning's, for resume) -------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.ema is not None:
            checkpoint["ema"] = {"state_dict": self.ema.ema.state_dict(), "updates": self.ema.updates}
        checkpoint["last_opt_step"] = self.last_opt_step
        checkpoint["compression"] = self.compression.phase_state()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Runs before the weights are loaded: a pruned run's architecture is rebuilt by replaying its removals."""
        self._ema_state = checkpoint.get("ema")
        self.last_opt_step = checkpoint.get("last_opt_step", -1)
        if self.distiller is not None and self.distiller.adapters is not None:  # pruned adapters: resize to load
            self.distiller.adapters.match(checkpoint["state_dict"], "distiller.adapters.")
        self.compression.load_phase_state(self, Compression.from_checkpoint(checkpoint))
        if self.qat is not None:  # a run stopped during QAT: no EMA from here (see Compression.start_qat)
            self._ema_state = None
