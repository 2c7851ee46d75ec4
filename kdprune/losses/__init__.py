"""Classification losses for small, imbalanced datasets, as drop-in parts of ultralytics' v8DetectionLoss."""

from kdprune.losses.focal import FocalBCE

__all__ = ["FocalBCE"]
