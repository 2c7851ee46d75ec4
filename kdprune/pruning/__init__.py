"""Structured pruning: schedules, importance criteria, budgets and the YOLO pruner around torch-pruning."""

from kdprune.pruning.accumulate import TaylorEMA
from kdprune.pruning.budget import MEASURES, count_macs, count_params, int8_bytes, measure, model_costs, solve_ratio
from kdprune.pruning.config import BUDGETS, check_prune_config, check_pruner_options, solve_budget
from kdprune.pruning.fade import ChannelFade
from kdprune.pruning.importance import IMPORTANCES, make_importance, needs_gradients
from kdprune.pruning.phase import PruningPhase
from kdprune.pruning.pruner import YoloPruner, build_graph, replay
from kdprune.pruning.ratios import load_layer_ratios, ratios_path
from kdprune.pruning.schedule import PRUNE_SHAPES, PruneSchedule, epoch_index, fraction_at
from kdprune.pruning.selection import Unit, channels_to_remove, keep_counts

__all__ = [
    "BUDGETS",
    "ChannelFade",
    "TaylorEMA",
    "IMPORTANCES",
    "MEASURES",
    "PRUNE_SHAPES",
    "PruneSchedule",
    "PruningPhase",
    "Unit",
    "YoloPruner",
    "build_graph",
    "channels_to_remove",
    "check_prune_config",
    "check_pruner_options",
    "count_macs",
    "count_params",
    "epoch_index",
    "fraction_at",
    "int8_bytes",
    "keep_counts",
    "load_layer_ratios",
    "make_importance",
    "measure",
    "model_costs",
    "ratios_path",
    "needs_gradients",
    "replay",
    "solve_budget",
    "solve_ratio",
]
