"""Everything that touches ultralytics' model code. Its internals drift between releases; the version is pinned
(ultralytics==8.4.190) and this package is the one place that follows it."""

from kdprune.yolo.checkpoint import save_ultralytics_checkpoint
from kdprune.yolo.ema import ModelEMA, refresh_ema
from kdprune.yolo.evaluate import DetectionEvaluator, evaluate_checkpoint, nms_for_plot
from kdprune.yolo.models import build_model, hyp_namespace, model_stats
from kdprune.yolo.optim import LRSchedule, build_optimizer, nominal_accumulate, optimizer_iterations
from kdprune.yolo.prunable import SplitC2f, merge_split_blocks, split_blocks
from kdprune.yolo.structure import check_prunable, trace_forward

__all__ = [
    "DetectionEvaluator",
    "LRSchedule",
    "ModelEMA",
    "SplitC2f",
    "build_model",
    "build_optimizer",
    "check_prunable",
    "evaluate_checkpoint",
    "hyp_namespace",
    "merge_split_blocks",
    "model_stats",
    "nms_for_plot",
    "nominal_accumulate",
    "optimizer_iterations",
    "refresh_ema",
    "save_ultralytics_checkpoint",
    "split_blocks",
    "trace_forward",
]
