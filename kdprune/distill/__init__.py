"""Knowledge distillation: the frozen teacher, KD losses, student->teacher feature adapters, the KD weight schedule."""

from kdprune.distill.adapters import FeatureAdapters
from kdprune.distill.distiller import Distiller
from kdprune.distill.losses import ANCHOR_WEIGHTS, anchor_weights, cls_kd, cwd, ld_kd
from kdprune.distill.schedule import KD_SCHEDULES, kd_scale_at
from kdprune.distill.teacher import Teacher

__all__ = ["ANCHOR_WEIGHTS", "Distiller", "FeatureAdapters", "KD_SCHEDULES", "Teacher", "anchor_weights",
           "cls_kd", "cwd", "kd_scale_at", "ld_kd"]
