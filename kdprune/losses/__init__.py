"""Every loss kdprune adds to ultralytics' detection loss: focal classification for small, imbalanced data
(``focal.py``), the distillation terms (``kd.py``), and what the student minimises, built from the config
(``objectives.py``: imported from there, as it builds on the distiller)."""

from kdprune.losses.focal import FocalBCE
from kdprune.losses.kd import ANCHOR_WEIGHTS, KD_TERMS, anchor_weights, check_kd, cls_kd, cwd, kd_term, ld_kd

__all__ = ["ANCHOR_WEIGHTS", "KD_TERMS", "FocalBCE", "anchor_weights", "check_kd", "cls_kd", "cwd", "kd_term",
           "ld_kd"]
