"""How long a user waits for the one-line error of a bad run (issue 16's target: < 15 s on a quiet machine).

    .venv/bin/python -m bench.time_to_error [--repeats 3]

Three mistakes, each through ``python -m kdprune +experiment=yolo11n_mcu`` as a user types it: a config error (an
enumeration typo), a data.yaml whose val folder does not exist, and a label file with a bad line. Prints the median
wall time of each (process start to exit, imports included) and checks each exits 2 with its one line.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import ROOT, git_rev, machine, run_env


def cases(tmp: Path) -> dict[str, list[str]]:
    from kdprune.data.synth import generate

    missing_val = tmp / "missing_val"
    (missing_val / "images" / "train").mkdir(parents=True)
    (missing_val / "data.yaml").write_text(f"path: {missing_val}\ntrain: images/train\nval: images/val\n"
                                           "names: {0: a}\n")
    yaml = generate(tmp / "bad_label", n_train=8, n_val=4, imgsz=64, seed=3, workers=0)
    label = next((yaml.parent / "labels" / "train").glob("*.txt"))
    label.write_text(label.read_text() + "0 0.5 0.5 0.1\n")  # four fields
    return {"config error (quant.granularity=per-channel)": ["quant.granularity=per-channel"],
            "data error (val folder missing)": [f"data.yaml={missing_val / 'data.yaml'}"],
            "data error (bad label line)": [f"data.yaml={yaml}"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    print(f"{machine()}, commit {git_rev()}")
    print(f"| mistake | seconds to the error (median of {args.repeats}) | the line |")
    print("|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, extra in cases(Path(tmp)).items():
            times, line = [], ""
            for i in range(args.repeats):
                t0 = time.perf_counter()
                p = subprocess.run([sys.executable, "-m", "kdprune", "+experiment=yolo11n_mcu", *extra,
                                    f"hydra.run.dir={tmp}/run{i}"], cwd=ROOT, env=run_env(), capture_output=True,
                                   text=True)
                times.append(time.perf_counter() - t0)
                line = p.stderr.strip().splitlines()[-1] if p.stderr.strip() else ""
                if p.returncode != 2 or not line.startswith("kdprune: error:"):
                    raise SystemExit(f"{name}: exit {p.returncode}, stderr:\n{p.stderr[-2000:]}")
            print(f"| {name} | {statistics.median(times):.1f} | `{line[:120]}` |")


if __name__ == "__main__":
    main()
