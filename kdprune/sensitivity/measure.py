"""The scan: prune one group at a time at each ratio, recalibrate BN, and measure mAP, params and INT8 bytes."""

from __future__ import annotations

from collections.abc import Callable
from copy import deepcopy

from torch import nn

from kdprune.pruning import YoloPruner, count_params, int8_bytes
from kdprune.sensitivity.groups import Alloc, Group, find_groups, plan_for, widths

METRICS = ("mAP50", "mAP50-95")


class Scanner:
    """Prunes copies of one dense (split) model: single groups for the scan, any allocation for the budget search.

    Channels are scored once, on the dense model, with ``pruner``'s importance; each candidate is a fresh copy of the
    dense model with the planned channels removed. ``calibrate(model)`` recalibrates BN in place and
    ``evaluate(model)`` returns its val metrics; both are the same for every candidate and for the baseline.
    """

    def __init__(self, dense: nn.Module, pruner: YoloPruner, *, calibrate: Callable[[nn.Module], None],
                 evaluate: Callable[[nn.Module], dict]):
        self.dense, self.pruner = dense, pruner
        self.calibrate, self.evaluate = calibrate, evaluate
        self.units = pruner.units(dense)
        self.groups: list[Group] = find_groups(dense, self.units, round_to=pruner.round_to)
        self.dense_bytes = int8_bytes(dense)
        self._sizes: dict[tuple, int] = {}

    def keep(self, alloc: Alloc) -> dict[str, int]:
        """Output channels each unit keeps under ``alloc`` (no graph, no copy: cheap)."""
        return plan_for(self.units, self.groups, alloc, self.pruner.round_to)[1]

    def prune(self, alloc: Alloc) -> nn.Module:
        """A copy of the dense model with every group pruned to its ratio in ``alloc``."""
        plan, _ = plan_for(self.units, self.groups, alloc, self.pruner.round_to)
        model = deepcopy(self.dense)
        self.pruner.apply(model, plan)
        return model

    def size(self, alloc: Alloc) -> int:
        """Estimated INT8 bytes of the dense model pruned by ``alloc``, measured on a pruned copy (memoised by widths:
        allocations that keep the same channels cost the same)."""
        k = tuple(sorted(self.keep(alloc).items()))
        if k not in self._sizes:
            self._sizes[k] = int8_bytes(self.prune(alloc))
        return self._sizes[k]

    def fraction(self, group: Group, ratio: float) -> float:
        """Share of the group's output channels that ``ratio`` actually removes (after ``round_to`` rounding)."""
        before, after = widths(group, self.units, self.keep({group.key: ratio}))
        return 1 - after / before

    def check(self, model: nn.Module) -> dict:
        """Metrics, params and INT8 bytes of ``model`` (a pruned copy) after the BN recalibration candidates get."""
        self.calibrate(model)
        m = self.evaluate(model)
        return {**{k: round(m[k], 6) for k in METRICS}, "params": count_params(model), "int8_bytes": int8_bytes(model)}

    def baseline(self) -> dict:
        """The dense model's metrics after the same BN recalibration the candidates get."""
        return self.check(deepcopy(self.dense))

    def uniform(self, budget: int, imgsz: int) -> dict:
        """One ratio for every layer, solved for ``budget`` as training solves it (``YoloPruner.solve``), measured
        one-shot like the candidates: what the per-layer ratios are up against before any fine-tuning. (It reaches
        any budget the scan's largest ratio reaches: at its top ratio every unit keeps only ``round_to`` channels.)"""
        pruner = deepcopy(self.pruner)  # solve() rewrites the unit weights; the scan's pruner stays as it was
        ratio, _ = pruner.solve(self.dense, "int8_bytes", budget, imgsz)
        model = deepcopy(self.dense)
        pruner.apply(model, pruner.plan(model, ratio))
        return {"ratio": round(ratio, 4), **self.check(model)}

    def scan(self, ratios: list[float], base: dict, progress: Callable[[int, Group, list[dict]], None] | None = None
             ) -> list[dict]:
        """One row per group x ratio: widths, params, INT8 bytes, metrics and their drop from ``base``."""
        rows = []
        for k, g in enumerate(self.groups):
            mine = []
            for r in ratios:
                alloc = {g.key: r}
                before, after = widths(g, self.units, self.keep(alloc))
                m = self.check(self.prune(alloc))
                mine.append({"layer": g.layer, "branch": g.branch, "module": g.module, "ratio": r,
                             "channels_before": before, "channels_after": after, **m,
                             **{f"drop_{k2}": round(base[k2] - m[k2], 6) for k2 in METRICS}})
            rows += mine
            if progress is not None:
                progress(k, g, mine)
        return rows
