"""Lightning callbacks that drive the phases of a run and write its artifacts."""

from kdprune.callbacks.checkpoint import UltralyticsCheckpoint
from kdprune.callbacks.mosaic import CloseMosaic
from kdprune.callbacks.plots import DetectionPlots, log_per_class_ap

__all__ = ["CloseMosaic", "DetectionPlots", "UltralyticsCheckpoint", "log_per_class_ap"]
