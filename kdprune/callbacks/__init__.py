"""Lightning callbacks that drive the phases of a run and write its artifacts."""

from kdprune.callbacks.compression import CompressionSteps
from kdprune.callbacks.hparams import log_hparams, run_hparams
from kdprune.callbacks.mosaic import CloseMosaic
from kdprune.callbacks.plots import DetectionPlots, log_per_class_ap, save_channels_png
from kdprune.callbacks.resume import ResumeCheckpoint, check_resume_checkpoint, last_checkpoint
from kdprune.callbacks.weights import UltralyticsCheckpoint

__all__ = ["CloseMosaic", "CompressionSteps", "DetectionPlots", "ResumeCheckpoint", "UltralyticsCheckpoint",
           "check_resume_checkpoint", "last_checkpoint", "log_hparams", "log_per_class_ap", "run_hparams",
           "save_channels_png"]
