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

    ``fraction`` < 1 is an intermediate step of a schedule: ``fraction`` of the ``round_to`` blocks the units lose at
    ``ratio`` go now (see ``_partial_step``), the rest at later steps.
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
        _partial_step(active, keep, round_to, fraction)
    return keep


def _partial_step(active: list[Unit], keep: dict[str, int], round_to: int, fraction: float) -> None:
    """Turn the final widths in ``keep`` into those of a step ``fraction`` of the way there (in place).

    Channels go in whole ``round_to`` blocks. The step removes ``round(fraction x all blocks)`` blocks in total,
    shared out by largest remainder of ``fraction x`` each unit's blocks (coupled units count as one), so the schedule
    removes what it says at every step. (Scaling the ratio per step and rounding each width to the nearest block made
    the cubic schedule's last step, 1.6 % of the removal, round to the widths of the step before: it removed nothing.
    Rounding each unit down instead pushed most of a linear schedule into its last step: small layers lose 1-3
    blocks, and 0.25 x 2 rounds to 0.)
    """
    f = min(max(fraction, 0.0), 1.0)
    groups: dict[str, list[Unit]] = {}
    for u in active:
        groups.setdefault(u.couple or u.name, []).append(u)
    blocks = {g: math.ceil((us[0].initial - keep[us[0].name]) / round_to) for g, us in groups.items()}
    share = {g: f * b for g, b in blocks.items()}
    take = {g: math.floor(x + 1e-9) for g, x in share.items()}
    extra = round(f * sum(blocks.values())) - sum(take.values())
    for g in sorted(share, key=lambda g: take[g] - share[g])[:max(extra, 0)]:  # largest remainders first (stable)
        take[g] += 1
    for g, us in groups.items():
        for u in us:
            lost = u.initial - keep[u.name]
            keep[u.name] = min(u.initial - min(take[g] * round_to, lost), u.current)


def channels_to_remove(units: list[Unit], keep: dict[str, int]) -> dict[str, list[int]]:
    """For each unit that shrinks, the indices of its lowest-scored channels to remove (sorted)."""
    out = {}
    for u in units:
        n = u.current - keep[u.name]
        if n > 0:
            out[u.name] = sorted(torch.argsort(u.scores.float().cpu(), stable=True)[:n].tolist())
    return out
