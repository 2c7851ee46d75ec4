"""Knowledge distillation: the frozen teacher, the distiller (weighted KD terms; the terms themselves are in
``kdprune.losses.kd``), student->teacher feature adapters, the KD weight schedule."""

from kdprune.distill.adapters import FeatureAdapters
from kdprune.distill.distiller import Distiller
from kdprune.distill.schedule import KD_SCHEDULES, kd_scale_at
from kdprune.distill.teacher import Teacher

__all__ = ["Distiller", "FeatureAdapters", "KD_SCHEDULES", "Teacher", "kd_scale_at"]
