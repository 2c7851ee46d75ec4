"""Sensitivity-derived per-layer ratios vs one uniform ratio, at the same INT8 budget, epochs and seeds (issue 6).

    .venv/bin/python -m bench.sensitivity_vs_uniform [--dense outputs/<dense run>/weights/best.pt] \
        [--budget 2000000] [--epochs 15] [--seeds 0 1] [--imgsz 256] [--dense-epochs 25] \
        [--workdir outputs/bench-sensitivity] [--out bench/results/sensitivity/vs_uniform-<imgsz>.json] \
        [--sens OVERRIDE ...] [-- OVERRIDE ...]

(a) trains a dense yolo11n on the embedded dataset (prune/distill/quant/export off), unless ``--dense`` gives one;
(b) runs the sensitivity scan on it at the budget (``+experiment=sensitivity``, in this process);
(c) per seed, fine-tunes the dense weights with gradual pruning to ``prune.target.int8_bytes=BUDGET``, once with one
    ratio for every layer (uniform) and once with ``prune.prune_ratios=<the scan's YAML>`` (the budget then scales
    those ratios together): same epochs, schedule, seed; ``distill=none quant=none export=none`` to stay CPU-sized;
(d) prints a markdown table for bench/RESULTS.md and writes ``--out`` (JSON: mAP per seed and variant, means, params,
    estimated INT8 bytes, wall times).

Overrides after ``--`` go to every run (e.g. the data); ``--sens`` ones to the scan only (``sensitivity.ratios=...``).
Smoke run (minutes): ``--imgsz 64 --dense-epochs 1 --epochs 2 --budget 2300000 --workdir /tmp/x --out /tmp/x/r.json
--sens sensitivity.ratios=[0.25,0.5] sensitivity.bn_batches=1 -- data.embedded.n_train=16 data.embedded.n_val=8
data.embedded.imgsz=64`` with ``KDPRUNE_CACHE`` pointing at a scratch cache.
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

VARIANTS = ("uniform", "sensitivity")


def schedule(epochs: int) -> list[str]:
    """Pruning steps for a fine-tune of ``epochs``: the weights are trained already, so steps start at epoch 0 and end
    near the middle, leaving the second half to recover (one-shot at epoch 0 for a 1-3 epoch smoke run)."""
    end = max(0, min(epochs - 2, epochs // 2 - 1))
    return ["prune.start_epoch=0", f"prune.end_epoch={end}", f"prune.steps={min(4, end + 1)}"]


def train(overrides: list[str], run_dir: Path) -> dict:
    """``python -m kdprune OVERRIDES`` into ``run_dir``; its summary.json plus the process's wall time."""
    cmd = [sys.executable, "-m", "kdprune", *overrides, f"hydra.run.dir={run_dir}"]
    print("$ " + " ".join(cmd[1:]), flush=True)
    t = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, env=run_env(YOLO_OFFLINE="1"), capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"run failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-4000:]}")
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["process_s"] = round(time.time() - t, 1)
    return summary


def sensitivity(overrides: list[str], run_dir: Path) -> dict:
    """The scan, composed exactly as ``python -m kdprune +experiment=sensitivity OVERRIDES`` would compose it."""
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    from kdprune.sensitivity import run

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["+experiment=sensitivity", *overrides])
    with open_dict(cfg):
        cfg.run_dir = str(run_dir)
    print("$ kdprune +experiment=sensitivity " + " ".join(overrides), flush=True)
    return run(cfg)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dense", help="a trained dense checkpoint to start from (default: train one)")
    ap.add_argument("--dense-epochs", type=int, default=25)
    ap.add_argument("--budget", type=int, default=2_000_000, help="INT8 bytes (est.), the yolo11n_mcu budget")
    ap.add_argument("--epochs", type=int, default=15, help="fine-tuning epochs of each pruned run")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--imgsz", type=int, default=256)
    ap.add_argument("--workdir", type=Path, default=ROOT / "outputs" / "bench-sensitivity")
    ap.add_argument("--out", type=Path, default=None, help="default: bench/results/sensitivity/vs_uniform-<imgsz>.json")
    ap.add_argument("--sens", nargs="*", default=[], help="overrides for the sensitivity scan only")
    ap.add_argument("extra", nargs="*", help="overrides for every run (after --)")
    args = ap.parse_args()
    args.out = args.out or RESULTS / "sensitivity" / f"vs_uniform-{args.imgsz}.json"
    if len(args.seeds) < 2:
        print("note: fewer than 2 seeds: no spread to compare the variants against", flush=True)
    work, extra, t0 = args.workdir.resolve(), list(args.extra), time.time()
    common = [f"data.imgsz={args.imgsz}", "teacher=none", "distill=none", "quant=none", "export=none", "logger=none",
              *extra]

    # (a) the dense model
    if args.dense:
        dense, dense_info = str(Path(args.dense).resolve()), {"weights": str(Path(args.dense).resolve())}
    else:
        s = train(["prune=none", f"trainer.max_epochs={args.dense_epochs}", "seed=0", *common], work / "dense")
        dense = s["weights"]["best"]
        dense_info = {"weights": dense, **{k: s.get(k) for k in ("mAP50-95", "mAP50", "params", "int8_bytes_est",
                                                                   "wall_time_s")}, "epochs": args.dense_epochs}
    # (b) the scan
    sens = sensitivity([f"model.weights={dense}", f"sensitivity.target_int8_bytes={args.budget}",
                        f"data.imgsz={args.imgsz}", *extra, *args.sens], work / "sensitivity")
    yaml = sens["files"]["prune_ratios"]
    # (c) pruned fine-tunes
    runs = []
    for seed in args.seeds:
        for variant in VARIANTS:
            ov = ["+experiment=yolo11n_mcu", f"model.weights={dense}", f"prune.target.int8_bytes={args.budget}",
                  f"trainer.max_epochs={args.epochs}", f"seed={seed}", *schedule(args.epochs), *common]
            if variant == "sensitivity":
                ov.append(f"prune.prune_ratios={yaml}")
            s = train(ov, work / f"{variant}-s{seed}")
            runs.append({"variant": variant, "seed": seed, "run_dir": str(work / f"{variant}-s{seed}"),
                         **{k: s.get(k) for k in ("mAP50-95", "mAP50", "params", "int8_bytes_est", "wall_time_s")}})
            print(f"  {variant} seed {seed}: mAP50-95 {s['mAP50-95']:.4f}, INT8 ~{s['int8_bytes_est']:,} B, "
                  f"{s['wall_time_s']:.0f} s", flush=True)

    # (d) the table
    mean = {}
    for v in VARIANTS:
        mine = [r for r in runs if r["variant"] == v]
        maps = [r["mAP50-95"] for r in mine]
        mean[v] = {"mAP50-95": statistics.mean(maps), "sd": statistics.stdev(maps) if len(maps) > 1 else 0.0,
                   "mAP50": statistics.mean(r["mAP50"] for r in mine), "params": max(r["params"] for r in mine),
                   "int8_bytes_est": max(r["int8_bytes_est"] for r in mine),
                   "wall_time_s": statistics.mean(r["wall_time_s"] for r in mine)}
    result = {
        "date": time.strftime("%Y-%m-%d"), "commit": git_rev(), "machine": machine(),
        "command": " ".join(["python -m bench.sensitivity_vs_uniform", *sys.argv[1:]]),
        "budget_int8_bytes": args.budget, "epochs": args.epochs, "imgsz": args.imgsz, "seeds": args.seeds,
        "dense": {**dense_info, "mAP50-95_bn_recalibrated": sens["dense"]["mAP50-95"]},
        "sensitivity": {k: sens[k] for k in ("int8_bytes", "predicted_drop_mAP50-95", "one_shot", "allocation",
                                             "wall_time_s")}
        | {"yaml": yaml},
        "runs": runs, "mean": mean, "wall_time_s": round(time.time() - t0, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))

    print(f"\n{result['date']} · commit {result['commit']} · {result['machine']}")
    print(f"`{result['command']}`: budget {args.budget:,} INT8 bytes (est.), {args.epochs} fine-tuning epochs from "
          f"the dense weights (mAP50-95 {sens['dense']['mAP50-95']:.4f} after BN recalibration), imgsz "
          f"{args.imgsz}, seeds {args.seeds}\n")
    print("| ratios | " + " | ".join(f"seed {s}" for s in args.seeds) + " | mean mAP50-95 | params | INT8 bytes (est.) "
          "| wall / run |")
    print("|---|" + "---|" * len(args.seeds) + "---|---|---|---|")
    for v in VARIANTS:
        per = [next(r for r in runs if r["variant"] == v and r["seed"] == s)["mAP50-95"] for s in args.seeds]
        m = mean[v]
        print(f"| {v} | " + " | ".join(f"{x:.4f}" for x in per) + f" | {m['mAP50-95']:.4f} ± {m['sd']:.4f} | "
              f"{m['params']:,} | {m['int8_bytes_est']:,} | {m['wall_time_s']:.0f} s |")
    one_s, one_u = sens["one_shot"]["sensitivity"], sens["one_shot"]["uniform"]
    print(f"\nRight after the cut (one-shot, BN recalibrated, no fine-tuning): mAP50-95 drop "
          f"{one_s['drop_mAP50-95']:.4f} with the sensitivity ratios, {one_u['drop_mAP50-95']:.4f} with the uniform "
          f"ratio {one_u['ratio']:.3f}.")
    print(f"\n-> {args.out} ({result['wall_time_s']:.0f} s in all)")


if __name__ == "__main__":
    main()
