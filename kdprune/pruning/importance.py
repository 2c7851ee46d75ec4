"""Importance criteria: callables ``group -> per-channel scores`` from torch-pruning, chosen by name."""

from __future__ import annotations

import torch_pruning as tp

# name -> (factory, needs training gradients). Scores are mean-normalised per group (torch-pruning's default), so a
# global ranking compares groups on one scale.
IMPORTANCES = {
    "l1": (lambda: tp.importance.GroupMagnitudeImportance(p=1), False),
    "l2": (lambda: tp.importance.GroupMagnitudeImportance(p=2), False),
    "taylor": (lambda: tp.importance.GroupTaylorImportance(), True),
    "bn_scale": (lambda: tp.importance.BNScaleImportance(), False),
    "random": (lambda: tp.importance.RandomImportance(), False),
}


def make_importance(name: str):
    """The torch-pruning importance called ``name`` (see ``IMPORTANCES``)."""
    if name not in IMPORTANCES:
        raise ValueError(f"unknown importance {name!r}; choose one of {', '.join(IMPORTANCES)}")
    return IMPORTANCES[name][0]()


def needs_gradients(name: str) -> bool:
    """Whether the criterion reads ``.grad`` (first-order Taylor), so gradients must be computed before scoring."""
    return IMPORTANCES[name][1]
