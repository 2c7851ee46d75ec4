"""Layer groups: what a sensitivity scan prunes one at a time, and how a ratio per group becomes a plan.

A group is what one entry of a ``prune_ratios`` YAML controls: every prunable conv of one top-level layer
(``model.model[i]``), or one of the Detect head's two branches (box ``reg``, class ``cls``). Building plans from the
same ``keep_counts`` the pruner uses during training means the widths measured here are the widths training makes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from torch import nn

from kdprune.pruning import Unit, channels_to_remove, keep_counts
from kdprune.yolo.structure import head_branch, layer_index

Key = tuple[int, str]  # (layer index, branch): branch is "" except for the Detect head's "reg" / "cls"
Alloc = dict[Key, float]  # ratio per group; a group not listed is not pruned


@dataclass(frozen=True)
class Group:
    """One layer (or Detect branch) of the model whose output channels the pruner may remove."""

    layer: int
    branch: str               # "" for a plain layer; "reg" / "cls" for the Detect head's branches
    module: str               # the layer's ultralytics type (C3k2, Conv, SPPF, Detect, ...)
    units: tuple[str, ...]    # root conv names of its prunable units

    @property
    def key(self) -> Key:
        return self.layer, self.branch

    @property
    def label(self) -> str:
        return f"{self.layer} {self.module}" + (f" {self.branch}" if self.branch else "")


def layer_type(model: nn.Module, i: int) -> str:
    """Type name of layer ``i`` as ultralytics calls it (a split C2f/C3k2 reports the block it came from)."""
    layer = model.model[i]
    return getattr(layer, "origin", type(layer)).__name__


def find_groups(model: nn.Module, units: list[Unit], *, round_to: int) -> list[Group]:
    """The groups of ``model`` with at least one unit the pruner would shrink, in layer order (Detect: reg, cls).

    Units with weight 0 (split halves whose twin is frozen) or no wider than ``round_to`` are never pruned, so a layer
    made only of them (the stem, attention, 16-channel convs) is no group.
    """
    layer_of, branch_of = layer_index(model), head_branch(model)
    detect = len(model.model) - 1
    members: dict[Key, list[str]] = {}
    for u in units:
        if u.weight == 0 or u.initial <= round_to:
            continue
        i = layer_of[u.name]
        members.setdefault((i, branch_of.get(u.name, "") if i == detect else ""), []).append(u.name)
    order = {"": 0, "reg": 1, "cls": 2}
    return [Group(i, b, layer_type(model, i), tuple(names))
            for (i, b), names in sorted(members.items(), key=lambda kv: (kv[0][0], order[kv[0][1]]))]


def plan_for(units: list[Unit], groups: list[Group], alloc: Alloc, round_to: int) -> tuple[dict, dict[str, int]]:
    """``(plan, keep)`` that prunes each group to its ratio in ``alloc`` and nothing else: the pruner's own
    ``keep_counts`` at ratio 1 with each unit weighted by its group's ratio (what ``YoloPruner`` does with
    ``layer_ratios``). ``units`` are left unchanged."""
    ratio_of = {n: alloc.get(g.key, 0.0) for g in groups for n in g.units}
    weighted = [replace(u, weight=ratio_of.get(u.name, 0.0)) for u in units]
    keep = keep_counts(weighted, 1.0, round_to=round_to)
    return channels_to_remove(weighted, keep), keep


def widths(group: Group, units: list[Unit], keep: dict[str, int]) -> tuple[int, int]:
    """(output channels before, after) summed over the group's units."""
    by_name = {u.name: u for u in units}
    return sum(by_name[n].initial for n in group.units), sum(keep[n] for n in group.units)


def to_layer_ratios(groups: list[Group], alloc: Alloc, n_layers: int) -> dict:
    """``alloc`` in the ``prune_ratios`` format ``{layer: ratio, ..., detect: [reg, cls]}`` (every group listed)."""
    detect = n_layers - 1
    out: dict = {}
    for g in groups:
        r = round(float(alloc.get(g.key, 0.0)), 4)
        if g.layer == detect:
            out.setdefault(detect, [0.0, 0.0])[0 if g.branch == "reg" else 1] = r
        else:
            out[g.layer] = r
    return out
