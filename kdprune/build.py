"""Building a run's parts from its config, as every task builds them (training, the sensitivity scan, the bench
scripts): ultralytics' hyperparameters, the dataset and the student, the DataModule, the LightningModule and the
Trainer with the run's callbacks and loggers."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from kdprune.callbacks import CompressionSteps, UltralyticsCheckpoint
from kdprune.compression import Compression
from kdprune.data import YOLODataModule, resolve_data
from kdprune.environment import warn_if_emulated_bf16
from kdprune.losses.objectives import build_criterion, build_distiller
from kdprune.module import DetectionModule
from kdprune.recipe import training_optim
from kdprune.yolo import (
    build_model,
    choose_branch,
    fused_activation,
    hyp_namespace,
    pad_free_downsample,
    transfer,
    val_settings,
)


def hyp_from_cfg(cfg: DictConfig, data: dict, optim: dict | None = None):
    """Ultralytics' hyperparameter namespace for this run (augmentation, loss gains, optimizer, imgsz, data), with
    ``optim``: the optimizer values of the recipe this model trains with (kdprune/recipe.py; default: the recipe of a
    model that is a whole checkpoint with ``model.weights``, else from scratch)."""
    if optim is None:
        optim, _ = training_optim(cfg, transferred=float(bool(cfg.model.weights)))
    return hyp_namespace(
        task="detect", mode="train", data=data["yaml_file"], imgsz=cfg.data.imgsz, batch=cfg.data.batch,
        epochs=cfg.trainer.max_epochs, cache=cfg.data.cache, workers=cfg.data.workers, seed=cfg.seed,
        conf=cfg.val.conf, iou=cfg.val.iou, max_det=cfg.val.max_det, plots=False,
        **OmegaConf.to_container(cfg.data.augment, resolve=True),
        **{k: v for k, v in optim.items() if k not in ("grad_clip", "ema")},
        **{k: cfg.loss[k] for k in ("box", "cls", "dfl")},
    )


def build_student(cfg: DictConfig) -> tuple[dict, object, torch.nn.Module, dict]:
    """``(data, hyp, model, recipe)``: the run's dataset (resolved and checked), ultralytics' hyperparameters, the
    student and the recipe it trains with (``training_optim``'s sources), built as every task (training, the
    sensitivity scan) builds them."""
    data = resolve_data(cfg.data.yaml, cfg.cache_dir, OmegaConf.to_container(cfg.data.embedded), cfg.data.check_labels)
    model = build_model(cfg.model.cfg, cfg.model.weights, data["names"], None)
    choose_branch(model, cfg.model.get("end2end"))
    # model.weights: the checkpoint's own architecture (all but a new class count's rows start trained)
    share = transfer(model, cfg.model.pretrained) if cfg.model.get("pretrained") else float(bool(cfg.model.weights))
    if layers := int(cfg.model.get("fused_act_layers") or 0):  # after the weights load: they keep every tensor
        fused_activation(model, layers, str(cfg.model.get("fused_act") or "relu"))
    if convs := int(cfg.model.get("pad_free_downsample") or 0):  # likewise: the 3x3 weights move into the 4x4
        pad_free_downsample(model, convs)
    optim, recipe = training_optim(cfg, transferred=share)
    model.args = hyp = hyp_from_cfg(cfg, data, optim)
    return data, hyp, model, recipe


def build_datamodule(cfg: DictConfig, data: dict, hyp, model: torch.nn.Module) -> YOLODataModule:
    """The DataModule for ``model`` (its largest stride, at least 32), set up for fitting."""
    dm = YOLODataModule(data, hyp, batch=cfg.data.batch, val_batch=cfg.data.val_batch, workers=cfg.data.workers,
                        seed=cfg.seed, stride=max(int(model.stride.max()), 32))
    dm.setup("fit")
    return dm


def build_module(cfg: DictConfig, model: torch.nn.Module, hyp, data: dict, dm: YOLODataModule, teacher,
                 run_dir: Path, compression: Compression | None = None) -> tuple[DetectionModule, dict]:
    """``(module, loss_info)``: the LightningModule with the criterion of ``loss=`` (class weights counted from the
    DataModule's training labels), with a teacher the distiller of ``distill=``, and the run's ``compression``
    (its pruning and QAT phases)."""
    criterion, loss_info = build_criterion(cfg.loss, model, dm.train_set, data["names"])
    distiller, kd_schedule = build_distiller(cfg.distill, model, teacher) if teacher else (None, None)
    module = DetectionModule(model, hyp, data["names"], data, val=val_settings(cfg.val), grad_clip=cfg.optim.grad_clip,
                             ema=cfg.optim.ema, plot_every=cfg.val.plot_every, criterion=criterion,
                             distiller=distiller, teacher=teacher, kd_schedule=kd_schedule,
                             train_args={**vars(hyp), "model": cfg.model.weights or cfg.model.cfg,
                                         "save_dir": str(run_dir)},
                             compression=compression)
    return module, loss_info


def build_trainer(cfg: DictConfig, run_dir: Path, compression: Compression | None = None
                  ) -> tuple[L.Trainer, UltralyticsCheckpoint]:
    """``(trainer, checkpoint callback)``: Lightning's Trainer with the config's callbacks and loggers, and, if the
    run prunes or quantizes, ``CompressionSteps`` last (after ``UltralyticsCheckpoint``: see there)."""
    callbacks = [instantiate(c) for c in cfg.callbacks.values() if c is not None]
    if compression is not None and (compression.pruning is not None or compression.quant is not None):
        callbacks.append(CompressionSteps())
    loggers = [instantiate(c) for c in cfg.logger.values() if c is not None]
    ckpt_cb = next(c for c in callbacks if isinstance(c, UltralyticsCheckpoint))
    warn_if_emulated_bf16(cfg.trainer)
    trainer = L.Trainer(**OmegaConf.to_container(cfg.trainer, resolve=True), callbacks=callbacks,
                        logger=loggers or False, default_root_dir=str(run_dir))
    return trainer, ckpt_cb
