"""Distillation losses between a student's and a teacher's raw YOLO head outputs, as pure functions, and the
registry of KD terms built on them (``KD_TERMS``): the one place a term is defined.

Adding a term: a function ``(student, teacher, ctx) -> loss`` decorated with ``@kd_term("name", temperature=...)``
here, and ``name`` (its weight) and ``t_name`` (its temperature) in conf/distill/kd.yaml. The distiller, the config
checks and the training logs (``train/kd_name``) follow from the registry.

Each is a divergence, not a cross-entropy, so it is exactly zero when the student reproduces the teacher (the cross-
entropy would keep the teacher's own entropy as a floor); the gradients are the same. Temperatures follow Hinton et al.:
both sides are softened by ``T`` and the loss is multiplied by ``T**2`` so its gradient scale does not depend on ``T``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F

from kdprune.registry import Registry


def _foreground(teacher_scores: torch.Tensor, fg_mask: torch.Tensor | None) -> torch.Tensor:
    if fg_mask is None:
        raise ValueError("anchor weights 'foreground' need the assigner's fg_mask")
    return fg_mask.float()


# Per-anchor weights (B, A) for the response terms (``distill.anchors``): the teacher's max class probability
# (``teacher_conf``), the anchors the assigner gave an object to (``foreground``), or every anchor alike (``all``).
ANCHOR_WEIGHTS: Registry = Registry("KD anchor weighting")
ANCHOR_WEIGHTS.register("teacher_conf", lambda teacher_scores, fg_mask: teacher_scores.detach().sigmoid().amax(1))
ANCHOR_WEIGHTS.register("foreground", _foreground)
ANCHOR_WEIGHTS.register("all", lambda teacher_scores, fg_mask: teacher_scores.new_ones(teacher_scores.shape[0],
                                                                                      teacher_scores.shape[2]))


def anchor_weights(mode: str, teacher_scores: torch.Tensor, fg_mask: torch.Tensor | None) -> torch.Tensor:
    """Per-anchor weights (B, A) of ``ANCHOR_WEIGHTS[mode]``."""
    return ANCHOR_WEIGHTS.lookup(mode, "distill.anchors")(teacher_scores, fg_mask)


def _weighted_mean(per_anchor: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Mean of a (B, A) loss over anchors weighted by ``w``; zero (still in the graph) when ``w`` is all zero."""
    return (per_anchor * w).sum() / w.sum().clamp(min=1.0)


def cls_kd(student: torch.Tensor, teacher: torch.Tensor, w: torch.Tensor, T: float = 1.0) -> torch.Tensor:
    """Response KD on the class logits (B, nc, A): per class a Bernoulli KL(teacher || student) of the sigmoids at
    temperature ``T`` (the sigmoid/BCE form of Hinton's KD that YOLO's independent class scores call for), summed over
    classes, averaged over anchors with weights ``w`` (B, A)."""
    s, t = student / T, teacher.detach() / T
    pt = t.sigmoid()
    kl = pt * (F.logsigmoid(t) - F.logsigmoid(s)) + (1 - pt) * (F.logsigmoid(-t) - F.logsigmoid(-s))
    return _weighted_mean(kl.sum(1), w) * T * T


def ld_kd(student: torch.Tensor, teacher: torch.Tensor, w: torch.Tensor, reg_max: int, T: float = 10.0) -> torch.Tensor:
    """Localization distillation (Zheng et al. 2022) on the DFL box distributions (B, 4*reg_max, A): for each of the
    four box sides KL(teacher || student) of the softmax over ``reg_max`` bins at temperature ``T``, averaged over the
    sides and over anchors with weights ``w``."""
    b, _, a = student.shape
    s = F.log_softmax(student.view(b, 4, reg_max, a) / T, dim=2)
    t = F.log_softmax(teacher.detach().view(b, 4, reg_max, a) / T, dim=2)
    kl = (t.exp() * (t - s)).sum(2).mean(1)  # (B, A)
    return _weighted_mean(kl, w) * T * T


def cwd(student: torch.Tensor, teacher: torch.Tensor, T: float = 1.0) -> torch.Tensor:
    """Channel-wise distillation (Shu et al. 2021) of one feature map (B, C, H, W), student already mapped to the
    teacher's C: each channel is a distribution over positions (softmax at ``T``); KL(teacher || student) summed over
    positions, averaged over batch and channels."""
    b, c = student.shape[:2]
    s = F.log_softmax(student.reshape(b, c, -1) / T, dim=2)
    t = F.log_softmax(teacher.detach().reshape(b, c, -1) / T, dim=2)
    return (t.exp() * (t - s)).sum(2).mean() * T * T


# ---- the registry of KD terms -----------------------------------------------------------------------------------
class KDContext(NamedTuple):
    """What a term may need besides the two head dicts: its temperature, the per-anchor weights (response terms),
    the DFL bin count, and the student's neck features mapped to the teacher's widths (feature terms)."""

    T: float
    anchor_w: torch.Tensor | None
    reg_max: int
    mapped: list[torch.Tensor] | None


class KDTerm(NamedTuple):
    name: str
    fn: Callable[[dict, dict, KDContext], torch.Tensor]
    temperature: float  # the default of ``distill.t_<name>``
    features: bool      # on the neck features through trainable adapters (else on the head's responses)


KD_TERMS: Registry[KDTerm] = Registry("KD term")


def kd_term(name: str, *, temperature: float, features: bool = False):
    """Register ``fn(student, teacher, ctx) -> loss per image`` as the KD term ``name``."""
    def register(fn):
        KD_TERMS.register(name, KDTerm(name, fn, float(temperature), features))
        return fn
    return register


def check_kd(settings: dict, anchors: str) -> str | None:
    """What is wrong with KD settings ``{name: weight, t_name: temperature}`` (every key of the registry's terms),
    or None. The one check, used by the config check (a UserError) and by ``Distiller`` (a ValueError)."""
    if (msg := ANCHOR_WEIGHTS.problem(anchors, "anchors")) is not None:
        return msg
    known = {*KD_TERMS, *(f"t_{n}" for n in KD_TERMS)}
    if unknown := sorted(set(settings) - known):
        return f"{unknown[0]}: no such KD term or temperature (terms: {', '.join(KD_TERMS)})"
    for n in KD_TERMS:
        w, t = float(settings.get(n, 0.0)), float(settings.get(f"t_{n}", KD_TERMS[n].temperature))
        if w < 0:
            return f"{n}={w}: a weight must be >= 0"
        if t <= 0:
            return f"t_{n}={t}: a temperature must be > 0"
    if not any(float(settings.get(n, 0.0)) for n in KD_TERMS):
        return f"every term has weight 0 ({', '.join(KD_TERMS)}); use distill=none"
    return None


@kd_term("cls", temperature=1.0)
def _cls_term(student: dict, teacher: dict, ctx: KDContext) -> torch.Tensor:
    return cls_kd(student["scores"], teacher["scores"], ctx.anchor_w, ctx.T)


@kd_term("ld", temperature=10.0)
def _ld_term(student: dict, teacher: dict, ctx: KDContext) -> torch.Tensor:
    return ld_kd(student["boxes"], teacher["boxes"], ctx.anchor_w, ctx.reg_max, ctx.T)


@kd_term("cwd", temperature=1.0, features=True)
def _cwd_term(student: dict, teacher: dict, ctx: KDContext) -> torch.Tensor:  # averaged over the levels
    return torch.stack([cwd(s, t, ctx.T) for s, t in zip(ctx.mapped, teacher["feats"])]).mean()
