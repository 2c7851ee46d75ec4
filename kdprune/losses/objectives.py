"""What the student minimises: ultralytics' detection loss (default, focal, or class-weighted classification) and,
with a teacher, the distillation terms. Built from the ``loss.*`` and ``distill.*`` config, with one-line errors."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import NamedTuple

import torch
from omegaconf import DictConfig, OmegaConf

from kdprune.data import class_counts
from kdprune.distill import KD_SCHEDULES, Distiller, Teacher, kd_scale_at
from kdprune.errors import UserError
from kdprune.losses import FocalBCE
from kdprune.losses.kd import KD_TERMS, check_kd
from kdprune.registry import Registry
from kdprune.yolo import DetectionCriterion, head_input_channels, head_spec, inverse_frequency_weights

log = logging.getLogger("kdprune")


def _default_loss(cfg: DictConfig, train_set, names: dict[int, str]) -> tuple:
    return None, None, {}


def _focal_loss(cfg: DictConfig, train_set, names: dict[int, str]) -> tuple:
    cls_loss = _focal(cfg)
    return cls_loss, None, {"gamma": cls_loss.gamma, "alpha": cls_loss.alpha}


def _class_weighted_loss(cfg: DictConfig, train_set, names: dict[int, str]) -> tuple:
    power = float(cfg.power)
    counts = class_counts(train_set, len(names))
    w = inverse_frequency_weights(counts, power)
    log.info("kdprune: class weights " + ", ".join(f"{names[i]} {x:.2f}" for i, x in enumerate(w)))
    return None, torch.from_numpy(w).float(), {
        "power": power, "counts": {names[i]: int(c) for i, c in enumerate(counts)},
        "class_weights": {names[i]: round(float(x), 4) for i, x in enumerate(w)}}


def _focal(cfg: DictConfig) -> FocalBCE:
    alpha = None if cfg.alpha is None else float(cfg.alpha)
    try:
        return FocalBCE(float(cfg.gamma), alpha)
    except ValueError as e:
        raise UserError(f"loss.{e}.") from None


def _check_power(cfg: DictConfig) -> None:
    if not 0 <= float(cfg.power) <= 1:
        raise UserError(f"loss.power={cfg.power}: must be in [0, 1] (0 = unweighted, 1 = inverse frequency).")


class LossOption(NamedTuple):
    check: Callable[[DictConfig], object]  # its ``loss.*`` settings, as one-line UserErrors, before any work
    build: Callable[..., tuple]            # (cfg, train_set, names) -> (classification loss or None, class
                                           # weights or None, what it was built from)


# ``loss=`` options (each with its conf/loss/<name>.yaml): the parts ultralytics' detection loss takes
# (``DetectionCriterion``).
LOSSES: Registry[LossOption] = Registry("loss")
LOSSES.register("default", LossOption(lambda cfg: None, _default_loss))
LOSSES.register("focal", LossOption(_focal, _focal_loss))
LOSSES.register("class_weighted", LossOption(_check_power, _class_weighted_loss))


def build_criterion(cfg: DictConfig, model, train_set, names: dict[int, str]) -> tuple[DetectionCriterion, dict]:
    """The detection criterion for ``loss=...`` (checked by ``check_objectives``) and what it was built from."""
    cls_loss, weights, info = LOSSES[cfg.name].build(cfg, train_set, names)
    return DetectionCriterion(model, cls_loss=cls_loss, class_weights=weights), {"name": cfg.name, **info}


def check_objectives(cfg: DictConfig) -> None:
    """Validate ``loss.*`` and ``distill.*`` before anything is trained (a teacher stage can take many minutes)."""
    LOSSES.lookup(cfg.loss.name, "loss").check(cfg.loss)
    if cfg.distill.name == "none":
        return
    d = cfg.distill
    if stray := sorted(set(d) - {"name", "anchors", "schedule", *KD_TERMS, *(f"t_{n}" for n in KD_TERMS)}):
        raise UserError(f"distill.{stray[0]}: no such KD setting (terms: {', '.join(KD_TERMS)}, each with its "
                        "temperature t_<term>; anchors; schedule)")
    if (msg := check_kd(kd_settings(d), d.anchors)) is not None:
        raise UserError(f"distill.{msg}.")
    sched = OmegaConf.to_container(d.schedule, resolve=True)
    KD_SCHEDULES.lookup(sched.get("shape"), "distill.schedule.shape")
    try:
        kd_scale_at(0, int(cfg.trainer.max_epochs), **sched)
    except (ValueError, TypeError) as e:
        raise UserError(f"distill.schedule: {e}.") from None


def kd_settings(cfg: DictConfig) -> dict[str, float]:
    """``distill.<term>`` (weight) and ``distill.t_<term>`` (temperature) of every registered KD term present."""
    keys = [k for n in KD_TERMS for k in (n, f"t_{n}")]
    return {k: float(cfg[k]) for k in keys if k in cfg}


def build_distiller(cfg: DictConfig, student, teacher: Teacher) -> tuple[Distiller, dict]:
    """The ``Distiller`` and the KD weight schedule from ``distill.*`` (checked by ``check_objectives``)."""
    distiller = Distiller(**kd_settings(cfg), anchors=cfg.anchors, reg_max=head_spec(student).reg_max,
                          student_channels=head_input_channels(student),
                          teacher_channels=head_input_channels(teacher.model))
    return distiller, OmegaConf.to_container(cfg.schedule, resolve=True)
