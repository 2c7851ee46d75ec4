"""How many channels each prunable group keeps, and which: the ranking, written by hand because torch-pruning's
pruner cannot keep two groups in lockstep (both halves of a split C2f/C3k2 must keep the same width to be written back
as ultralytics' block) and cannot be told to decide once on one rank and replay the decision elsewhere.

Pure functions over ``Unit``s: no graph, no model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class Unit:
    """One prunable group: its root conv, widths, per-channel scores and ratio multiplier."""

    name: str                 # root module name
    initial: int              # output channels before any pruning
    current: int              # output channels now
    scores: torch.Tensor      # importance per current channel (higher = keep)
    weight: float = 1.0       # this unit's final ratio is ``ratio * weight`` (per-layer ratios); 0 = never pruned
    couple: str | None = None  # units sharing a key keep the same width (split C2f/C3k2 halves)


def _round(n: float, round_to: int, initial: int) -> int:
    """``n`` to the nearest multiple of ``round_to``, halves up (at least ``round_to``, or all of a narrower layer)."""
    if initial <= round_to:
        return initial
    return max(round_to, int(n / round_to + 0.5) * round_to)


def keep_counts(units: list[Unit], ratio: float, *, global_ranking: bool = False, round_to: int = 8,
                fraction: float = 1.0) -> dict[str, int]:
    """Output channels each unit keeps at ``ratio`` (a share of its *initial* channels), never more than it has now.

    Local ranking gives every unit ``ratio * weight``; global ranking removes the lowest-scored channels across all
    units with a non-zero weight until the total reaches ``ratio`` of the initial total.

    ``fraction`` < 1 is an intermediate step of a schedule: each unit removes ``fraction`` of the ``round_to`` blocks
    it loses at ``ratio``, rounded down, so the last step (fraction 1) always has the remaining blocks to remove.
    (Scaling the ratio instead and rounding each width to the nearest block made the last steps of a cubic schedule,
    1.6 % of the removal, round to the same widths as the step before: a step that removed nothing.)
    """
    keep = {u.name: u.current for u in units}
    active = [u for u in units if u.weight > 0 and u.initial > round_to]
    if not active or ratio <= 0:
        return keep
    if global_ranking:
        target = sum(u.initial for u in active) * (1 - min(ratio, 1.0))
        n_remove = sum(u.current for u in active) - int(round(target))
        if n_remove > 0:
            thr = torch.cat([u.scores.float().cpu() for u in active]).kthvalue(n_remove).values
            for u in active:
                keep[u.name] = u.current - int((u.scores.float().cpu() <= thr).sum())
    else:
        for u in active:
            keep[u.name] = u.initial * (1 - min(ratio * u.weight, 1.0))
    for u in active:
        keep[u.name] = min(_round(keep[u.name], round_to, u.initial), u.current)
    coupled: dict[str, list[Unit]] = {}
    for u in active:
        if u.couple is not None:
            coupled.setdefault(u.couple, []).append(u)
    for members in coupled.values():
        mean = sum(keep[u.name] for u in members) / len(members)
        width = min(_round(mean, round_to, members[0].initial), *(u.current for u in members))
        for u in members:
            keep[u.name] = width
    if fraction < 1.0:
        for u in active:
            lost = u.initial - keep[u.name]
            blocks = math.ceil(lost / round_to * (1.0 - max(fraction, 0.0)) - 1e-9)
            keep[u.name] = min(keep[u.name] + min(blocks * round_to, lost), u.current)
    return keep


def channels_to_remove(units: list[Unit], keep: dict[str, int]) -> dict[str, list[int]]:
    """For each unit that shrinks, the indices of its lowest-scored channels to remove (sorted)."""
    out = {}
    for u in units:
        n = u.current - keep[u.name]
        if n > 0:
            out[u.name] = sorted(torch.argsort(u.scores.float().cpu(), stable=True)[:n].tolist())
    return out
