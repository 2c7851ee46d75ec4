"""The accuracy canary: absolute mAP50-95 of the plain recipe and of the default run, against recorded values.

Every other table in bench/RESULTS.md compares arms within one commit and one environment, so a drift that moves all
arms together (a dependency release, the data pipeline, the training step) shows in none of them. This one compares
with numbers recorded earlier: run it before changing ``requirements.lock``, the data pipeline, the training step or
a default, and again after.

Per dataset (the embedded ``shapes`` set and ``glyphs``, at the default scale: 256 px, the default epochs) and seed:
- ``teacher``: the teacher stage (yolo11s from scratch, ``teacher.epochs``), its own val mAP50-95;
- ``plain``: the dense yolo11n of the plain recipe (``prune=none distill=none quant=none export=none``), best.pt;
- ``default``: the whole ``+experiment=yolo11n_mcu`` run, KD from that teacher, scored on its TFLite INT8 file;
  ``teacher - plain`` is the teacher's margin over the dense student of the same recipe.
The teacher is trained with ``teacher.seed=<seed>``, so its seed band is measured too.

    .venv/bin/python -m bench.canary [--data shapes glyphs] [--seeds 0] [--arms plain default]
    .venv/bin/python -m bench.canary --seeds 0 1 2 --record    # after a deliberate change: new recorded values

The recorded values are ``bench/results/canary/recorded.json``. A value is outside when it differs from the recorded
mean by more than the band: 3 sd of the recorded seeds (>= 3 of them), at least ``FLOOR``. Exit 1 if any value is
outside. Runs live in ``bench/runs/canary/<commit>/`` and resume (a finished run is read back; an interrupted one
resumes from its last.ckpt). ~1 h per dataset and seed on 2 cores.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
from pathlib import Path

from bench.common import RESULTS, ROOT, git_rev, machine, run_kdprune

RECORD = RESULTS / "canary" / "recorded.json"
FLOOR = 0.01  # the smallest band: below it, the noise of one evaluation on a 120-200 image val split
PLAIN = ["prune=none", "distill=none", "quant=none", "export=none"]
ARMS = ("plain", "default")


def run_seed(data: str, seed: int, arms: tuple[str, ...], out: Path) -> dict[str, float]:
    """``{metric: value}`` of one dataset and seed: teacher, plain, default (and teacher - plain) as far as run."""
    base = ["+experiment=yolo11n_mcu", f"data={data}", f"seed={seed}", f"teacher.seed={seed}", "val.plot_every=0"]
    got = {}
    if "plain" in arms:
        s = run_kdprune([*base, *PLAIN], out / f"{data}-plain-s{seed}", f"{data} plain seed {seed}")
        got["plain"] = s["mAP50-95"]
    if "default" in arms:
        s = run_kdprune(base, out / f"{data}-default-s{seed}", f"{data} default seed {seed}")
        got["teacher"] = s["teacher"]["mAP50-95"]
        got["default"] = next(r["mAP50-95"] for r in s["stages"] if r["stage"] == "TFLite INT8")
    if "teacher" in got and "plain" in got:
        got["teacher - plain"] = got["teacher"] - got["plain"]
    return got


def band(values: list[float], floor: float = FLOOR) -> tuple[float, float | None]:
    """``(mean, band)``: band = max(3 sd, floor) over >= 3 values; None with fewer (no band established yet). Also the
    CI-sized canary's band (tests/test_canary.py), with its own floor."""
    mean = statistics.fmean(values)
    return mean, (max(3 * statistics.stdev(values), floor) if len(values) >= 3 else None)


def judge(recorded: dict, key: str, value: float) -> tuple[str, str]:
    """``(verdict, reference text)`` of one new value against the recorded ones of ``key``."""
    rec = recorded.get(key)
    if not rec:
        return "new", "—"
    mean, b = band(list(rec["values"].values()))
    ref = f"{mean:.4f} ± {b:.4f} ({len(rec['values'])} seeds, {rec['commit']})" if b else \
        f"{mean:.4f} ({len(rec['values'])} seed(s): no band yet, {rec['commit']})"
    if b is None:
        return "no band", ref
    return ("ok" if abs(value - mean) <= b else "OUTSIDE"), ref


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", nargs="+", default=["shapes", "glyphs"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    ap.add_argument("--record", action="store_true", help="store these values as the recorded ones (per key, seed)")
    args = ap.parse_args(argv)

    from kdprune.environment import environment

    commit = git_rev()
    out = ROOT / "bench" / "runs" / "canary" / commit
    recorded = json.loads(RECORD.read_text()) if RECORD.is_file() else {}
    print(f"canary at {commit} on {machine()}", flush=True)
    rows, outside = [], 0
    for data in args.data:
        for seed in args.seeds:
            for metric, value in run_seed(data, seed, tuple(args.arms), out).items():
                key = f"{data}/{metric}"
                verdict, ref = judge(recorded, key, value)
                outside += verdict == "OUTSIDE"
                rows.append(f"| {data} | {metric} | {seed} | {value:.4f} | {ref} | {verdict} |")
                if args.record:
                    rec = recorded.setdefault(key, {"values": {}})
                    rec["values"][str(seed)] = round(value, 4)
                    rec.update(commit=commit, date=datetime.date.today().isoformat(),
                               packages=environment()["packages"])
                    RECORD.parent.mkdir(parents=True, exist_ok=True)
                    RECORD.write_text(json.dumps(recorded, indent=1, sort_keys=True) + "\n")
    print("| data | metric | seed | mAP50-95 | recorded | verdict |\n|---|---|---|---|---|---|")
    print("\n".join(rows))
    return 1 if outside and not args.record else 0


if __name__ == "__main__":
    sys.exit(main())
