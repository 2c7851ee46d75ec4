"""Everything that touches ultralytics' model code. Its internals drift between releases; the version is pinned
(ultralytics==8.4.190) and this package is the one place that follows it."""

from kdprune.yolo.checkpoint import save_ultralytics_checkpoint
from kdprune.yolo.evaluate import DetectionEvaluator, nms_for_plot
from kdprune.yolo.models import build_model, hyp_namespace, model_stats
from ultralytics.utils.torch_utils import ModelEMA

from kdprune.yolo.optim import LRSchedule, build_optimizer, nominal_accumulate, optimizer_iterations

__all__ = [
    "DetectionEvaluator",
    "LRSchedule",
    "ModelEMA",
    "build_model",
    "build_optimizer",
    "hyp_namespace",
    "model_stats",
    "nms_for_plot",
    "nominal_accumulate",
    "optimizer_iterations",
    "save_ultralytics_checkpoint",
]
