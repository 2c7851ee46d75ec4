"""Issue 14: does QAT beat PTQ *in the TFLite file*, now that the file is the quantized graph itself?

Per seed and weight granularity, two runs of the same recipe (``+experiment=yolo11n_mcu``, pruned to 2 MB):
  qat: the default (QAT over the last 4 epochs); its TFLite INT8 row is the QAT graph converted by litert-torch, its
       "TFLite PTQ" row the same best.pt calibrated (min/max, ``quant.ptq_images``) through the same converter;
  ptq: ``quant=none`` (every epoch in float), its TFLite INT8 row the PTQ graph of that fully float-trained model.
and reports, from each run's summary.json: QAT file - PTQ file (the ptq run's: same epochs, no fake-quant), QAT file -
QAT fake-quant (the file is the model QAT trained: target |d| <= 0.002) and file sizes.

    .venv/bin/python -m bench.quant_tflite --seeds 0 1 --granularity per_channel per_tensor [--imgsz 160] [--kd]
        [--qat-set quant.freeze_bn_epoch=25 --tag _bnlive]   (a QAT variant against the same PTQ runs)

Each run: ~5 min at 160 px without KD on the 2-core machine, plus ~2 min of exports. Writes
bench/results/quant/qat_vs_ptq-<imgsz>-kd<0|1>[-<tag>].json.
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


def run(kind: str, seed: int, gran: str, imgsz: int, kd: bool, out: Path, qat_set: list[str], tag: str) -> dict:
    """One run (reused if its summary.json exists). ``qat_set``: extra overrides of the QAT arm, named by ``tag`` in
    its run dir (the PTQ arm, ``quant=none``, does not depend on them)."""
    extra = qat_set if kind == "qat" else []
    run_dir = out / f"{kind}{tag if extra else ''}-{gran}-kd{int(kd)}-{imgsz}-s{seed}"
    summary = run_dir / "summary.json"
    if not summary.is_file():
        args = ["+experiment=yolo11n_mcu", f"data.imgsz={imgsz}", f"seed={seed}", *([] if kd else ["distill=none"]),
                *(["quant=none"] if kind == "ptq" else []), f"quant.granularity={gran}",
                "export.formats=[tflite_int8]", "export.latency_runs=20", "val.plot_every=0",
                f"hydra.run.dir={run_dir}", *extra]
        t0 = time.time()
        p = subprocess.run([sys.executable, "-m", "kdprune", *args], cwd=ROOT, env=run_env(), capture_output=True,
                           text=True)
        if p.returncode != 0 and not (p.returncode == 2 and summary.is_file()):  # 2 + summary: a failed check
            raise SystemExit(f"{kind} {gran} seed {seed} failed ({p.returncode}):\n{p.stderr[-3000:]}")
        print(f"  {kind} {gran} seed {seed}: {time.time() - t0:.0f} s", flush=True)
    rows = {r["stage"]: r for r in json.loads(summary.read_text())["stages"]}
    out = {k: {"mAP50-95": r.get("mAP50-95"), "bytes": r.get("bytes"), "check": r.get("check")}
           for k, r in rows.items()}
    out["val_curve"] = val_curve(run_dir)
    return out


def val_curve(run_dir: Path, last: int = 6) -> list[float]:
    """Val mAP50-95 of the last ``last`` epochs, from the run's TensorBoard events (fake-quant during QAT): where,
    epoch by epoch, the QAT arm falls behind the float one (same seed: identical until QAT starts)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for f in sorted(run_dir.glob("tensorboard/**/events.out.tfevents.*")):
        ea = EventAccumulator(str(f))
        ea.Reload()
        if "val/mAP50-95" in ea.Tags()["scalars"]:
            return [round(e.value, 4) for e in ea.Scalars("val/mAP50-95")[-last:]]
    return []


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--granularity", nargs="+", default=["per_channel", "per_tensor"],
                    choices=["per_channel", "per_tensor"])
    ap.add_argument("--imgsz", type=int, default=160)
    ap.add_argument("--kd", action="store_true", help="the yolo11n_mcu KD defaults (default: distill=none)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "runs" / "quant_tflite"))
    ap.add_argument("--qat-set", nargs="*", default=[], help="overrides of the QAT arm, e.g. quant.freeze_bn_epoch=25")
    ap.add_argument("--tag", default="", help="suffix of the QAT arm's run dirs and the JSON file (with --qat-set)")
    args = ap.parse_args()
    out = Path(args.out)
    res: dict[str, list[dict]] = {}
    lines = []
    for gran in args.granularity:
        for seed in args.seeds:
            q = run("qat", seed, gran, args.imgsz, args.kd, out, args.qat_set, args.tag)
            p = run("ptq", seed, gran, args.imgsz, args.kd, out, args.qat_set, args.tag)
            r = {"seed": seed, "qat_file": q["TFLite INT8"]["mAP50-95"],
                 "qat_fake_quant": q["QAT fake-quant"]["mAP50-95"],
                 "ptq_same_weights_file": q["TFLite PTQ"]["mAP50-95"], "ptq_file": p["TFLite INT8"]["mAP50-95"],
                 "ptq_torch": p["PTQ baseline"]["mAP50-95"], "qat_bytes": q["TFLite INT8"]["bytes"],
                 "ptq_bytes": p["TFLite INT8"]["bytes"], "qat_val_curve": q["val_curve"],
                 "ptq_val_curve": p["val_curve"]}
            res.setdefault(gran, []).append(r)
            name = f"qat_vs_ptq-{args.imgsz}-kd{int(args.kd)}" + (f"-{args.tag.lstrip('_-')}" if args.tag else "")
            (RESULTS / "quant" / f"{name}.json").write_text(json.dumps(
                {"machine": machine(), "commit": git_rev(), "imgsz": args.imgsz, "kd": args.kd,
                 "qat_set": args.qat_set, "results": res}, indent=2))
    lines = [f"\n{machine()}, commit {git_rev()}, imgsz {args.imgsz}, KD {'on' if args.kd else 'off'}",
             "| weights | seed | QAT file | QAT fake-quant | file - fake-quant | PTQ file (float run) | QAT - PTQ file "
             "| PTQ of QAT weights, file | bytes |", "|---|---|---|---|---|---|---|---|---|"]
    for gran, rs in res.items():
        for r in rs:
            lines.append(f"| {gran} | {r['seed']} | {r['qat_file']:.4f} | {r['qat_fake_quant']:.4f} | "
                         f"{r['qat_file'] - r['qat_fake_quant']:+.4f} | {r['ptq_file']:.4f} | "
                         f"{r['qat_file'] - r['ptq_file']:+.4f} | {r['ptq_same_weights_file']:.4f} | "
                         f"{r['qat_bytes']:,} |")
        d = [r["qat_file"] - r["ptq_file"] for r in rs]
        lines.append(f"| {gran} | mean | | | | | {statistics.mean(d):+.4f}"
                     f"{' ± ' + format(statistics.stdev(d), '.4f') if len(d) > 1 else ''} | | |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
