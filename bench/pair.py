"""Paired comparison of two arms across bench/results/gradual_vs_oneshot/*.json files: seed by seed, same dataset,
scale, KD setting and overrides, so a sweep run over several sessions (one JSON per seed) is read as one table.

    .venv/bin/python -m bench.pair ARM_A ARM_B bench/results/gradual_vs_oneshot/glyphs-256-kd1-*.json --data glyphs
        [--imgsz 256] [--no-kd]

Prints A − B per seed and its mean ± sd. Refuses (exit 2) when two pruned runs that claim the same budget were solved
to parameter counts more than 3 % apart (the solver's own tolerance): such rows measure different model sizes, e.g.
the per-channel and the per-tensor 2 MB budgets (1.69 M vs 1.88 M params), and must not be paired. Dense and narrow
arms (no budget) are exempt.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

UNBUDGETED = ("dense", "mcu_dense", "narrow", "mcu_narrow")
PARAMS_TOL = 0.03


def runs_by_seed(files: list[Path], arm: str, data: str, imgsz: int, kd: bool) -> dict[int, tuple[dict, str]]:
    """{seed: (run, file)} for `arm` in the files that match the setting; a seed measured twice is an error."""
    found: dict[int, tuple[dict, str]] = {}
    for f in files:
        d = json.loads(f.read_text())
        # the first files had no "data" (the embedded set) and no "complete"; overrides are shown, not matched (they
        # were bench callbacks that do not change training)
        if (d.get("data", "shapes"), d["imgsz"], d["kd"], d.get("finetune")) != (data, imgsz, kd, None):
            continue
        for row in d["arms"]:
            if row["arm"] != arm:
                continue
            runs = row["runs"]
            # runs carry their seed since this script; older files list them in the order of the file's seeds when
            # the sweep completed
            if any("seed" not in r for r in runs) and not (d.get("complete", True) and len(runs) == len(d["seeds"])):
                print(f"{f.name}: {arm} runs without seeds in an incomplete sweep, skipped", file=sys.stderr)
                continue
            for i, r in enumerate(runs):
                seed = r.get("seed", d["seeds"][i])
                if seed in found:
                    raise SystemExit(f"{arm} seed {seed} is in both {found[seed][1]} and {f.name}: keep one")
                found[seed] = (r, f.name + (f" {d['overrides']}" if d.get("overrides") else ""))
    return found


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument("--data", default="shapes")
    ap.add_argument("--imgsz", type=int, default=256)
    ap.add_argument("--no-kd", dest="kd", action="store_false")
    args = ap.parse_args()
    a, b = (runs_by_seed(args.files, arm, args.data, args.imgsz, args.kd) for arm in (args.a, args.b))
    pruned = [(r, fn) for arm, rs in ((args.a, a), (args.b, b)) if arm not in UNBUDGETED for r, fn in rs.values()]
    if pruned:
        lo, hi = min(pruned, key=lambda x: x[0]["params"]), max(pruned, key=lambda x: x[0]["params"])
        if hi[0]["params"] > lo[0]["params"] * (1 + PARAMS_TOL):
            print(f"error: the pruned runs are not the same size ({lo[0]['params']:,} params in {lo[1]}, "
                  f"{hi[0]['params']:,} in {hi[1]}): they do not measure the same budget; pair runs of one budget",
                  file=sys.stderr)
            raise SystemExit(2)
    seeds = sorted(set(a) & set(b))
    if not seeds:
        print(f"error: no seed has both {args.a} ({sorted(a)}) and {args.b} ({sorted(b)}) at data={args.data} "
              f"imgsz={args.imgsz} kd={args.kd}", file=sys.stderr)
        raise SystemExit(2)
    print(f"| seed | {args.a} | {args.b} | {args.a} − {args.b} | from |\n|---|---|---|---|---|")
    diffs = []
    for s in seeds:
        x, y = a[s][0]["mAP50-95"], b[s][0]["mAP50-95"]
        diffs.append(x - y)
        print(f"| {s} | {x:.4f} | {y:.4f} | {x - y:+.4f} | {a[s][1]}, {b[s][1]} |")
    sd = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
    print(f"| mean | {statistics.mean(a[s][0]['mAP50-95'] for s in seeds):.4f} | "
          f"{statistics.mean(b[s][0]['mAP50-95'] for s in seeds):.4f} | {statistics.mean(diffs):+.4f} ± {sd:.4f} | |")


if __name__ == "__main__":
    main()
