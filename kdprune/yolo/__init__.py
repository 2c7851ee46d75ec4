"""Everything that touches ultralytics' model code. Its internals drift between releases; the version is pinned
(ultralytics==8.4.190) and this package is the one place that follows it."""

from kdprune.yolo.checkpoint import load_ultralytics_checkpoint, save_ultralytics_checkpoint
from kdprune.yolo.criterion import DetectionCriterion, in_fp32, inverse_frequency_weights, raw_head
from kdprune.yolo.ema import ModelEMA, refresh_ema
from kdprune.yolo.metrics import DetectionEvaluator, evaluate_checkpoint, evaluate_model, nms_for_plot, val_settings
from kdprune.yolo.models import (
    build_model,
    check_checkpoint,
    choose_branch,
    dfl_mismatch,
    fused_activation,
    hyp_namespace,
    load_teacher,
    model_stats,
    pad_free_downsample,
    teacher_mismatch,
    transfer,
)
from kdprune.yolo.optim import LRSchedule, build_optimizer, nominal_accumulate, optimizer_iterations
from kdprune.yolo.prunable import SplitC2f, merge_split_blocks, split_blocks
from kdprune.yolo.rawhead import (
    HeadSpec,
    RawHeadModel,
    anchors_at,
    decode_head,
    has_one2one,
    head_layout,
    head_spec,
    not_exported,
    one2one_deployed,
)
from kdprune.yolo.structure import check_prunable, head_input_channels, head_inputs, trace_forward

__all__ = [
    "DetectionCriterion",
    "DetectionEvaluator",
    "HeadSpec",
    "RawHeadModel",
    "anchors_at",
    "decode_head",
    "has_one2one",
    "head_layout",
    "head_spec",
    "one2one_deployed",
    "not_exported",
    "LRSchedule",
    "ModelEMA",
    "SplitC2f",
    "build_model",
    "choose_branch",
    "dfl_mismatch",
    "build_optimizer",
    "check_checkpoint",
    "fused_activation",
    "pad_free_downsample",
    "check_prunable",
    "evaluate_checkpoint",
    "evaluate_model",
    "val_settings",
    "head_input_channels",
    "head_inputs",
    "hyp_namespace",
    "in_fp32",
    "inverse_frequency_weights",
    "load_teacher",
    "load_ultralytics_checkpoint",
    "merge_split_blocks",
    "model_stats",
    "nms_for_plot",
    "nominal_accumulate",
    "optimizer_iterations",
    "raw_head",
    "refresh_ema",
    "save_ultralytics_checkpoint",
    "split_blocks",
    "teacher_mismatch",
    "trace_forward",
    "transfer",
]
