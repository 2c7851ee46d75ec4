"""Issue 15: a flash budget alone vs a flash + RAM (tensor arena) budget at the same flash budget.

Per seed, two runs of ``+experiment=yolo11n_mcu`` (target=neutron, pruned to 2,000,000 estimated INT8 bytes) that
differ only in ``prune.target.arena_bytes``; both with ``prune.keep_stem=false`` (the stem's output is the arena's
peak, so a RAM budget needs it prunable) and no KD (time). From each run's summary.json: the TFLite INT8 file's
mAP50-95, flash bytes, TensorFlow Lite Micro arena, the pruner's arena estimate, Vela's U55/U65 time.

    .venv/bin/python -m bench.arena_budget --seeds 0 1 [--imgsz 160] [--arena 320000] [--out bench/runs/arena]

Each run ~6 min at 160 px on the 2-core machine. Writes bench/results/device/arena_budget-<imgsz>-<arena>.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.common import RESULTS, ROOT, git_rev, machine, run_env


def run(arm: str, seed: int, imgsz: int, arena: int, out: Path) -> dict:
    run_dir = out / f"{arm}-{imgsz}-s{seed}"
    summary = run_dir / "summary.json"
    if not summary.is_file():
        args = ["+experiment=yolo11n_mcu", f"data.imgsz={imgsz}", f"seed={seed}", "distill=none",
                "prune.keep_stem=false", "export.formats=[tflite_int8]", "export.latency_runs=20", "val.plot_every=0",
                f"hydra.run.dir={run_dir}", *([f"prune.target.arena_bytes={arena}"] if arm == "arena" else [])]
        t0 = time.time()
        p = subprocess.run([sys.executable, "-m", "kdprune", *args], cwd=ROOT, env=run_env(), capture_output=True,
                           text=True)
        if p.returncode != 0 and not (p.returncode == 2 and summary.is_file()):
            raise SystemExit(f"{arm} seed {seed} failed ({p.returncode}):\n{p.stderr[-3000:]}")
        print(f"  {arm} seed {seed}: {time.time() - t0:.0f} s", flush=True)
    s = json.loads(summary.read_text())
    row = next(r for r in s["stages"] if r["stage"] == "TFLite INT8")
    npu = {n["target"]: n["inference_ms"] for n in row.get("npu", [])}
    steps = (s.get("pruning") or {}).get("steps") or [{}]
    return {"mAP50-95": row.get("mAP50-95"), "flash_bytes": row.get("bytes"), "arena_bytes": row.get("arena_bytes"),
            "arena_estimate": steps[-1].get("arena_bytes"), "u55_ms": npu.get("ethos-u55-128"),
            "u65_ms": npu.get("ethos-u65-256"), "latency_ms": row.get("latency_ms"),
            "channels": (s.get("pruning") or {}).get("channels")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--imgsz", type=int, default=160)
    ap.add_argument("--arena", type=int, default=320_000)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "runs" / "arena")
    ap.add_argument("--json", type=Path, default=None,
                    help="default: bench/results/device/arena_budget-<imgsz>-<arena>.json")
    a = ap.parse_args()
    a.json = a.json or RESULTS / "device" / f"arena_budget-{a.imgsz}-{a.arena}.json"
    res = {arm: {s: run(arm, s, a.imgsz, a.arena, a.out) for s in a.seeds} for arm in ("flash", "arena")}
    a.json.write_text(json.dumps({"machine": machine(), "commit": git_rev(), "imgsz": a.imgsz, "arena": a.arena,
                                  "results": res}, indent=2))
    print("| arm | seed | mAP50-95 | flash B | TFLM arena B | arena est. B | U55 ms | U65 ms | LiteRT ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    for arm, by in res.items():
        for s, r in by.items():
            print(f"| {arm} | {s} | {r['mAP50-95']} | {r['flash_bytes']:,} | {r['arena_bytes']:,} | "
                  f"{r['arena_estimate']} | {r['u55_ms']} | {r['u65_ms']} | {r['latency_ms']} |")
    for key in ("mAP50-95", "arena_bytes", "u55_ms"):
        d = [res["arena"][s][key] - res["flash"][s][key] for s in a.seeds]
        print(f"arena - flash, {key}: {', '.join(f'{x:+.4f}' for x in d)} (mean {statistics.mean(d):+.4f})")


if __name__ == "__main__":
    main()
