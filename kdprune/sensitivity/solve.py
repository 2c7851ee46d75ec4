"""Per-group ratios that meet an INT8 byte budget with the least predicted mAP drop.

The problem is a multiple-choice knapsack: each group picks one ratio, each ratio has a predicted drop and a
predicted saving, the total size must fit. Its Lagrangian relaxation, minimise ``sum(drop) - lam * sum(saved)``,
separates per group, and as ``lam`` grows each group walks along the lower convex hull of its (saved, drop) points.
Merging every group's hull steps by slope (mAP lost per byte saved) gives the whole path of Lagrangian solutions,
cheapest bytes first. Savings are not additive (pruning layer i's outputs also shrinks layer i+1's inputs), so the
path is bisected on the *real* size of the combined model (``size_of``), not on the sum of predicted savings. Then
the step that crossed the budget is refined over the candidates the hull skipped, and what is left of the budget is
spent taking back the ratios whose last step cost the most drop per byte.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from kdprune.pruning.budget import BUDGET_TOLERANCE
from kdprune.sensitivity.groups import Alloc, Key

# Added to each predicted drop per unit of pruned fraction: between candidates whose measured drops tie (untrained
# weights, or drops below the val set's resolution), prune less. Far below any mAP difference a val set resolves.
TIE_BREAK = 1e-6


@dataclass
class Curve:
    """A group's candidate ratios (ascending, the first 0) with their predicted drop and saving."""

    key: Key
    ratios: list[float]
    drop: list[float]      # predicted mAP drop, non-decreasing
    saved: list[float]     # predicted INT8 bytes saved, increasing
    fraction: list[float] | None = None  # share of the group's channels each removes (for TIE_BREAK)

    def cost(self, i: int) -> float:
        """What the allocation minimises for candidate ``i``: its drop, ties broken toward pruning less."""
        return self.drop[i] + (TIE_BREAK * self.fraction[i] if self.fraction else 0.0)


@dataclass
class Allocation:
    ratios: Alloc          # ratio per group key
    size: int              # real INT8 bytes of the combined pruned model
    predicted_drop: float  # sum of the groups' predicted drops
    evaluations: int       # real sizes computed


def candidate_ratios(step: float, measured: list[float]) -> list[float]:
    """Ratios the allocation may pick for a group: 0, the multiples of ``step`` up to the largest measured ratio (never
    beyond what was measured: no extrapolation), and the measured ratios themselves."""
    top = max(measured)
    return sorted({0.0, *measured, *(round(float(r), 4) for r in np.arange(step, top + 1e-9, step))})


def predicted_drops(fractions: list[float], drops: list[float]) -> list[float]:
    """Measured drops made usable: clipped at 0 and made non-decreasing in the pruned fraction.

    A negative drop (pruning 'improved' mAP) is noise of a small val set; so is a drop that shrinks as more is pruned.
    Believing either would steer the budget to wherever the noise was kindest.
    """
    order = np.argsort(fractions, kind="stable")
    out = np.maximum.accumulate(np.maximum(np.asarray(drops, float)[order], 0.0))
    res = np.empty_like(out)
    res[order] = out
    return res.tolist()


def make_curve(key: Key, candidates: list[tuple[float, float]], measured: list[tuple[float, float, float]]) -> Curve:
    """``candidates``: (ratio, pruned fraction) ascending; ``measured``: (pruned fraction, drop, bytes saved).

    Drop and saving at a candidate are linear interpolations over the pruned fraction (0 at 0) between measured
    points; candidates removing the same channels (``round_to``) collapse into their smallest ratio.
    """
    f_m = [0.0] + [m[0] for m in measured]
    d_m = [0.0] + predicted_drops([m[0] for m in measured], [m[1] for m in measured])
    s_m = [0.0] + [m[2] for m in measured]
    order = np.argsort(f_m, kind="stable")
    f_m, d_m, s_m = (np.asarray(v, float)[order] for v in (f_m, d_m, s_m))
    ratios, drop, saved, fraction = [], [], [], []
    for r, f in sorted(candidates):
        if fraction and round(f, 9) == round(fraction[-1], 9):
            continue
        ratios.append(float(r))
        drop.append(float(np.interp(f, f_m, d_m)))
        saved.append(float(np.interp(f, f_m, s_m)))
        fraction.append(float(f))
    if not ratios or ratios[0] != 0.0:
        raise ValueError(f"group {key}: candidates must start at ratio 0")
    return Curve(key, ratios, drop, saved, fraction)


def hull_steps(c: Curve) -> list[tuple[float, int]]:
    """``(slope, index)`` of each vertex after the first on the lower convex hull of ``c``'s (saved, drop) points:
    the candidates a Lagrangian solution can pick, in order, with the drop per byte of reaching each."""
    steps, i = [], 0
    while True:
        best = None
        for j in range(i + 1, len(c.ratios)):
            if c.saved[j] <= c.saved[i]:
                continue
            slope = (c.cost(j) - c.cost(i)) / (c.saved[j] - c.saved[i])
            if best is None or slope <= best[0] + 1e-15:  # on a tie, the farther point: more bytes, same price
                best = (slope, j)
        if best is None:
            return steps
        steps.append(best)
        i = best[1]


def allocate(curves: list[Curve], size_of: Callable[[Alloc], int], budget: int, *,
             tol: float = BUDGET_TOLERANCE) -> Allocation:
    """Ratios per group with ``size_of(ratios) <= budget`` and the least predicted total drop (see module doc).

    Raises ``ValueError(size)`` when even every group at its largest candidate costs more than ``budget``.
    """
    evals = 0
    cache: dict[tuple, int] = {}

    def size(idx: dict[Key, int]) -> int:
        nonlocal evals
        k = tuple(sorted(idx.items()))
        if k not in cache:
            evals += 1
            cache[k] = int(size_of(ratios_of(idx)))
        return cache[k]

    by_key = {c.key: c for c in curves}

    def ratios_of(idx: dict[Key, int]) -> Alloc:
        return {k: by_key[k].ratios[i] for k, i in idx.items()}

    # The Lagrangian path: path[n] is the solution after the n cheapest hull steps over all groups.
    moves = sorted(((s, g, n, j) for g, c in enumerate(curves) for n, (s, j) in enumerate(hull_steps(c))),
                   key=lambda m: (m[0], m[1], m[2]))

    def path(n: int) -> dict[Key, int]:
        idx = {c.key: 0 for c in curves}
        for _, g, _, j in moves[:n]:
            idx[curves[g].key] = j
        return idx

    last = path(len(moves))
    if size(last) > budget:
        raise ValueError(size(last))
    lo, hi = -1, len(moves)  # path(lo) over budget (-1: by convention), path(hi) fits
    if size(path(0)) <= budget:
        hi = 0
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if size(path(mid)) <= budget else (mid, hi)
    idx = path(hi)

    if hi > 0:  # the crossing step jumped one group over candidates off its hull: take the least of them that fits
        key = curves[moves[hi - 1][1]].key
        before = path(hi - 1)[key]
        a, b = before, idx[key]  # idx with a does not fit, with b it does
        while b - a > 1:
            mid = (a + b) // 2
            a, b = (a, mid) if size({**idx, key: mid}) <= budget else (mid, b)
        idx[key] = b

    _spend_slack(idx, by_key, size, budget, tol)
    return Allocation(ratios_of(idx), size(idx), sum(by_key[k].drop[i] for k, i in idx.items()), evals)


def _spend_slack(idx: dict[Key, int], by_key: dict[Key, Curve], size: Callable[[dict[Key, int]], int], budget: int,
                 tol: float) -> None:
    """Under the budget by more than ``tol``: take one candidate back (in ``idx``) where that recovers the most
    predicted drop per byte it costs, while it fits."""
    tried: set[tuple] = set()
    while size(idx) < budget * (1 - tol):
        slack = budget - size(idx)
        options = []
        for k, i in idx.items():
            c = by_key[k]
            if i == 0 or (k, i) in tried:
                continue
            back = max(c.saved[i] - c.saved[i - 1], 1.0)  # bytes this costs
            if back <= 2 * slack:  # predicted savings are interpolated: allow for their error
                options.append(((c.cost(i) - c.cost(i - 1)) / back, k, i))
        if not options:
            break
        _, k, i = max(options)
        tried.add((k, i))
        if size({**idx, k: i - 1}) <= budget:
            idx[k] = i - 1
