"""Per-layer pruning sensitivity: prune each layer alone, measure the mAP it costs, and choose per-layer ratios that
meet an INT8 budget with the least predicted loss (``python -m kdprune +experiment=sensitivity``)."""

from kdprune.sensitivity.calibrate import recalibrate_bn, take, val_metrics
from kdprune.sensitivity.config import check_config
from kdprune.sensitivity.groups import Group, find_groups, plan_for, to_layer_ratios, widths
from kdprune.sensitivity.measure import Scanner
from kdprune.sensitivity.outputs import COLUMNS, layer_notes, write_csv, write_heatmap, write_ratios_yaml
from kdprune.sensitivity.run import run
from kdprune.sensitivity.solve import (
    Allocation,
    Curve,
    allocate,
    candidate_ratios,
    hull_steps,
    make_curve,
    predicted_drops,
)

__all__ = [
    "COLUMNS",
    "Allocation",
    "Curve",
    "Group",
    "Scanner",
    "allocate",
    "candidate_ratios",
    "check_config",
    "val_metrics",
    "find_groups",
    "hull_steps",
    "layer_notes",
    "make_curve",
    "plan_for",
    "predicted_drops",
    "recalibrate_bn",
    "run",
    "take",
    "to_layer_ratios",
    "widths",
    "write_csv",
    "write_heatmap",
    "write_ratios_yaml",
]
