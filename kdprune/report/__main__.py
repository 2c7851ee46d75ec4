"""``python -m kdprune.report PATH [PATH ...] [--out DIR]``: (re)build ``sweep_summary.csv``, ``pareto.png`` and
``best.yaml`` from a sweep dir, or from run dirs gathered from anywhere (also while a sweep runs, or after one was
interrupted: unfinished jobs are rows with status ``incomplete``)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from kdprune.report.summary import summarize, summary_lines
from kdprune.report.sweep import run_dirs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kdprune.report", description=__doc__.split("\n\n")[0])
    ap.add_argument("paths", nargs="+", help="a sweep dir (its numbered job dirs are read) or run dirs")
    ap.add_argument("--out", help="where to write (default: the run dirs' common parent, i.e. the sweep dir)")
    args = ap.parse_args(argv)
    dirs = []
    for p in args.paths:
        if not Path(p).is_dir():
            print(f"kdprune.report: error: {p}: no such directory (give a sweep dir or run dirs)", file=sys.stderr)
            return 2
        dirs += run_dirs(p)
    if not dirs:
        print(f"kdprune.report: error: no run dirs in {' '.join(args.paths)} (a run dir holds summary.json, "
              "failed.json or .hydra/)", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else Path(os.path.commonpath([str(d.resolve().parent) for d in dirs]))
    rows, top = summarize(args.paths, out)
    for line in summary_lines(rows, top, out):
        print(f"kdprune.report: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
