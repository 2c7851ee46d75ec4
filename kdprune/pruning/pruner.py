"""``YoloPruner``: structured pruning of an ultralytics detection model on torch-pruning's dependency graph.

torch-pruning finds the groups of coupled channels, scores them and removes them; this class decides how many each
group keeps (``allocate``), keeps the split halves of C2f/C3k2 equal, never touches the head's outputs, DFL, stem or
(by default) attention, and records every removal as torch-pruning pruning history so the same cut can be replayed on
the EMA, on another DDP rank, or on a freshly built model when a run resumes.
"""

from __future__ import annotations

from collections.abc import Callable
from copy import deepcopy

import torch
import torch_pruning as tp
from torch import nn

from kdprune.pruning.budget import BUDGET_TOLERANCE, measure, solve_ratio
from kdprune.pruning.importance import make_importance, needs_gradients
from kdprune.pruning.ratios import unit_weights
from kdprune.pruning.selection import Unit, channels_to_remove, keep_counts
from kdprune.yolo.prunable import SplitC2f
from kdprune.yolo.structure import (
    check_prunable,
    frozen_modules,
    head_branch,
    head_inputs,
    layer_index,
    trace_forward,
)

Plan = dict[str, list[int]]  # root module name -> output channel indices to remove


def _module(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(name)


def build_graph(model: nn.Module, imgsz: int = 64) -> tp.DependencyGraph:
    """torch-pruning's dependency graph of ``model``, traced in eval mode through autograd, so frozen parameters
    (the EMA's, the DFL's) are made trainable for the trace. The model's mode and ``requires_grad`` are restored."""
    was_training = model.training
    frozen = [p for p in model.parameters() if not p.requires_grad]
    p = next(model.parameters())
    try:
        for q in frozen:
            q.requires_grad_(True)
        with torch.enable_grad():
            return tp.DependencyGraph().build_dependency(
                model, example_inputs=torch.zeros(1, 3, imgsz, imgsz, device=p.device, dtype=p.dtype),
                forward_fn=trace_forward, verbose=False)
    finally:
        for q in frozen:
            q.requires_grad_(False)
        model.train(was_training)


def replay(model: nn.Module, history: list, imgsz: int = 64) -> None:
    """Apply recorded pruning ``history`` (torch-pruning's format) to an unpruned ``model`` of the same architecture."""
    if history:
        build_graph(model, imgsz).load_pruning_history([list(h) for h in history])


class YoloPruner:
    """Prunes a (split) YOLO detection model to a ratio of its initial channels, recording what it removed."""

    def __init__(self, model: nn.Module, *, importance: str = "l2", global_ranking: bool = False, round_to: int = 8,
                 keep_stem: bool = True, attention: str = "keep", layer_ratios: dict | None = None,
                 trace_imgsz: int = 64, per_channel: bool = True):
        check_prunable(model)
        self.importance_name = importance
        self.importance = make_importance(importance)
        self.needs_grad = needs_gradients(importance)
        self._magnitude = make_importance("l2")
        self._l1 = make_importance("l1")
        self.accumulated = None  # a TaylorEMA that scores instead of one batch's gradients (use_accumulated)
        self.global_ranking, self.round_to, self.trace_imgsz = global_ranking, round_to, trace_imgsz
        self.per_channel = per_channel  # the INT8 file's weight granularity, for the int8_bytes estimate
        self.keep_stem = keep_stem
        names = {m: n for n, m in model.named_modules()}
        self.frozen = {names[m] for m in frozen_modules(model, keep_stem=keep_stem, attention=attention)}
        self.couple = {}  # conv name -> key of its split block: both halves keep one width
        for n, m in model.named_modules():
            if isinstance(m, SplitC2f):
                self.couple[f"{n}.cv0.conv"] = self.couple[f"{n}.cv1.conv"] = n
        self.initial: dict[str, int] = {}
        self.weights: dict[str, float] = {}
        units = self.units(model, scores=False)
        self.initial = {u.name: u.current for u in units}
        self.weights = {u.name: 1.0 for u in units}  # per-unit ratio multipliers (layer ratios, budget refinement)
        if layer_ratios is not None:
            self.weights = unit_weights(layer_ratios, len(model.model), layer_index(model), head_branch(model),
                                        list(self.initial))
        # A split block whose one half cannot be pruned (it feeds frozen attention) keeps both halves whole.
        halves: dict[str, list[str]] = {}
        for u in units:
            if u.couple is not None:
                halves.setdefault(u.couple, []).append(u.name)
        for members in halves.values():
            if len(members) < 2 or any(self.weights[n] == 0 for n in members):
                for n in members:
                    self.weights[n] = 0.0
        self.base_weights = dict(self.weights)

    def use_accumulated(self, scores) -> None:
        """Score channels by ``scores`` (a ``TaylorEMA`` of this model, once it has seen a step) from now on."""
        self.accumulated = scores

    # ---- groups -----------------------------------------------------------------------------------------------------
    def units(self, model: nn.Module, *, scores: bool = True) -> list[Unit]:
        """Every prunable group of ``model`` as a ``Unit`` (scored by the importance criterion if ``scores``; by the
        accumulated Taylor scores once ``use_accumulated`` gave some)."""
        if scores and self.accumulated is not None and self.accumulated.updates:
            with self.accumulated.as_weights(model):  # torch-pruning's L1 group reduction over accumulated |w*g|
                return self._groups(model, self._l1)
        return self._groups(model, self._score if scores else None)

    def _score(self, group) -> torch.Tensor:
        if self.needs_grad and group[0].dep.target.module.weight.grad is None:
            # Before training there are no gradients: magnitude stands in. Only a budget solved before training sees
            # it; the last step re-solves with real (or accumulated) gradients.
            return self._magnitude(group)
        return self.importance(group)

    def _groups(self, model: nn.Module, score) -> list[Unit]:
        dg = build_graph(model, self.trace_imgsz)
        frozen = [_module(model, n) for n in self.frozen]
        out = []
        for group in dg.get_all_groups(ignored_layers=frozen, root_module_types=(nn.Conv2d,)):
            root = group[0].dep.target.module
            name = dg._module2name[root]
            couple = None
            for dep, _ in group:
                if dg.is_out_channel_pruning_fn(dep.handler):
                    couple = couple or self.couple.get(dg._module2name.get(dep.target.module, ""))
            n = dg.get_out_channels(root)
            s = score(group) if score is not None else torch.zeros(n)
            if s is None:  # torch-pruning found nothing in the group it knows how to score
                raise RuntimeError(f"importance {self.importance_name!r} returned no scores for {name}")
            out.append(Unit(name, self.initial.get(name, n), n, s.detach(), self.weights.get(name, 1.0), couple))
        return out

    # ---- deciding and applying ----------------------------------------------------------------------------------
    def plan(self, model: nn.Module, ratio: float, units: list[Unit] | None = None, fraction: float = 1.0) -> Plan:
        """Which channels to remove from ``model`` to reach ``ratio`` (a share of the initial channels), or
        ``fraction`` of the way there (a schedule's intermediate step; see ``keep_counts``)."""
        units = units if units is not None else self.units(model)
        keep = keep_counts(units, ratio, global_ranking=self.global_ranking, round_to=self.round_to,
                           fraction=fraction)
        return channels_to_remove(units, keep)

    def apply(self, model: nn.Module, plan: Plan, follow: Callable[[int, list[int]], None] | None = None) -> list:
        """Remove the planned channels from ``model`` (in place: same modules, new parameter tensors); return the
        removals as torch-pruning pruning history (``[name, is_out_channels, idxs]``, replayable with ``replay``).

        ``follow(level, idxs)`` is told, group by group, which channels of the neck feature feeding Detect level
        ``level`` were removed (as the graph maps them onto Detect's first conv), so modules outside the model that
        read those features (distillation adapters) can drop the same channels.
        """
        if not plan:
            return []
        dg = build_graph(model, self.trace_imgsz)
        level_of = {conv: i for i, conv in enumerate(head_inputs(model))}
        for name, idxs in plan.items():
            m = _module(model, name)
            prune_out = dg.get_pruner_of_module(m).prune_out_channels
            group = dg.get_pruning_group(m, prune_out, list(idxs))
            removed = [(level_of[dep.target.module], sorted(int(getattr(i, "idx", i)) for i in ix))
                       for dep, ix in group
                       if dep.target.module in level_of and dg.is_in_channel_pruning_fn(dep.handler)]
            group.prune(record_history=False)
            if follow is not None:
                for level, ix in removed:
                    follow(level, ix)
        return [[name, True, list(idxs)] for name, idxs in plan.items()]

    def bn_targets(self, model: nn.Module, plan: Plan) -> dict[str, list[int]]:
        """Every BatchNorm channel that ``plan`` removes, as the dependency graph couples them (the root conv's BN and
        the BNs of convs summed or split with it): ``{bn module name: channel indices}``, for ``ChannelFade``."""
        dg = build_graph(model, self.trace_imgsz)
        out: dict[str, set[int]] = {}
        for name, idxs in plan.items():
            m = _module(model, name)
            group = dg.get_pruning_group(m, dg.get_pruner_of_module(m).prune_out_channels, list(idxs))
            for dep, ix in group:
                if isinstance(dep.target.module, nn.BatchNorm2d):  # (a BN's in and out channels are one)
                    out.setdefault(dg._module2name[dep.target.module], set()).update(
                        int(getattr(i, "idx", i)) for i in ix)
        return {k: sorted(v) for k, v in out.items()}

    def cost_at(self, model: nn.Module, ratio: float, kind: str, imgsz: int, units: list[Unit]) -> int:
        """``kind`` cost of ``model`` pruned to ``ratio`` (measured on a copy)."""
        plan = self.plan(model, ratio, units)
        if not plan:
            return measure(model, kind, imgsz, self.per_channel)
        copy = deepcopy(model)
        self.apply(copy, plan)
        return measure(copy, kind, imgsz, self.per_channel)

    def solve(self, model: nn.Module, kind: str, budget: int, imgsz: int) -> tuple[float, int]:
        """The ratio at which ``model``'s ``kind`` cost fits ``budget``, landing at most 3 % under it.

        One ratio for every layer moves the cost in coarse steps (layers of equal width cross a ``round_to`` boundary
        together), so when bisection on the ratio lands more than 3 % under, the first ``k`` units (in graph order:
        the early, high-resolution layers) take the next-lower ratio tried, with ``k`` found by bisection too. That
        choice is kept in the unit weights for the steps to come. Raises ``ValueError(minimum)`` when the budget is
        below the cost with every prunable group at ``round_to``.
        """
        self.weights = dict(self.base_weights)
        units = self.units(model)
        ratio, cost, over = solve_ratio(lambda r: self.cost_at(model, r, kind, imgsz, units), budget)
        if cost < budget * (1 - BUDGET_TOLERANCE) and ratio > 0 and not self.global_ranking:
            active = [u for u in units if u.weight > 0]

            def mixed(k: int) -> int:
                for i, u in enumerate(active):
                    u.weight = self.base_weights[u.name] * (over / ratio if i < k else 1.0)
                return self.cost_at(model, ratio, kind, imgsz, units)

            lo, hi = 0, len(active)  # mixed(lo) fits, mixed(hi) does not
            while hi - lo > 1:
                mid = (lo + hi) // 2
                lo, hi = (mid, hi) if mixed(mid) <= budget else (lo, mid)
            cost = mixed(lo)
            self.weights.update({u.name: u.weight for u in active})
        return ratio, cost

    def fit_arena(self, model: nn.Module, ratio: float, budget: int, imgsz: int) -> tuple[float, int]:
        """After ``solve`` (or alone, ``ratio`` 0): the high-resolution units (output stride <= 8, where activations
        peak) take a higher ratio until the estimated tensor arena fits ``budget``; the others keep ``ratio``, so the
        flash budget still holds (with room to spare). Kept in the unit weights like ``solve``'s choice. Returns
        ``(ratio, arena)``; raises ``ValueError(minimum arena)`` when even those units at ``round_to`` do not fit."""
        units = self.units(model)
        ratio = max(ratio, 1e-6)  # the ratio the weights multiply (0: only the early units prune)
        if (cost := self.cost_at(model, ratio, "arena_bytes", imgsz, units)) <= budget:
            return ratio, cost
        early, base = self._high_resolution(model, units), {u.name: u.weight for u in units}

        def at(r: float) -> int:
            for u in units:
                if u.name in early and base[u.name] > 0:
                    u.weight = max(base[u.name], r / ratio)
            return self.cost_at(model, ratio, "arena_bytes", imgsz, units)

        best = (0.999, at(0.999))
        if best[1] > budget:
            raise ValueError(best[1])
        lo = ratio
        for _ in range(14):
            if best[1] >= budget * (1 - BUDGET_TOLERANCE):
                break
            mid = (lo + best[0]) / 2
            c = at(mid)
            best, lo = ((mid, c), lo) if c <= budget else (best, mid)
        at(best[0])
        self.weights.update({u.name: u.weight for u in units})
        return ratio, best[1]

    @torch.no_grad()
    def _high_resolution(self, model: nn.Module, units: list[Unit], max_stride: int = 8) -> set[str]:
        """Names of the units whose conv writes at output stride <= ``max_stride``."""
        n = 64
        size: dict[str, int] = {}
        hooks = [_module(model, u.name).register_forward_hook(
            lambda m, i, o, name=u.name: size.__setitem__(name, o.shape[-1])) for u in units]
        was = model.training
        model.eval()
        try:
            p = next(model.parameters())
            trace_forward(model, torch.zeros(1, 3, n, n, device=p.device, dtype=p.dtype))
        finally:
            model.train(was)
            for h in hooks:
                h.remove()
        return {name for name, w in size.items() if n / w <= max_stride}

    def channels(self, model: nn.Module) -> dict[int, tuple[int, int]]:
        """Per top-level layer: (output channels now, initially) summed over its prunable convs."""
        layer_of = layer_index(model)
        out: dict[int, list[int]] = {}
        for name, n0 in self.initial.items():
            i = layer_of[name]
            cur = _module(model, name).out_channels
            acc = out.setdefault(i, [0, 0])
            acc[0] += cur
            acc[1] += n0
        return {i: (a, b) for i, (a, b) in sorted(out.items())}
