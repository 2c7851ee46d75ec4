"""Importance criteria: callables ``group -> per-channel scores`` from torch-pruning, chosen by name."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch_pruning as tp

from kdprune.registry import Registry


class Importance(NamedTuple):
    """A criterion: ``make()`` builds the torch-pruning importance; ``gradients``: it reads training gradients."""

    make: Callable[[], object]
    gradients: bool = False


# Scores are mean-normalised per group (torch-pruning's default), so a global ranking compares groups on one scale.
# A new criterion is one ``IMPORTANCES.register(name, Importance(...))`` here (stateful ones that accumulate over
# training steps: kdprune/pruning/accumulate.py).
IMPORTANCES: Registry[Importance] = Registry("importance criterion")
IMPORTANCES.register("l1", Importance(lambda: tp.importance.GroupMagnitudeImportance(p=1)))
IMPORTANCES.register("l2", Importance(lambda: tp.importance.GroupMagnitudeImportance(p=2)))
IMPORTANCES.register("taylor", Importance(lambda: tp.importance.GroupTaylorImportance(), gradients=True))
IMPORTANCES.register("bn_scale", Importance(lambda: tp.importance.BNScaleImportance()))
IMPORTANCES.register("random", Importance(lambda: tp.importance.RandomImportance()))


def make_importance(name: str, key: str = "prune.importance"):
    """The torch-pruning importance called ``name`` (see ``IMPORTANCES``)."""
    return IMPORTANCES.lookup(name, key).make()


def needs_gradients(name: str) -> bool:
    """Whether the criterion reads ``.grad`` (first-order Taylor), so gradients must be computed before scoring."""
    return IMPORTANCES[name].gradients
