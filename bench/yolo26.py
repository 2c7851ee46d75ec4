"""YOLO26n or YOLO11n at the first user's budgets? Both through the whole MCX N947 run, scored on their device files.

- ``yolo11n``: ``+experiment=yolo11n_mcu`` (192 px, ReLU in layers 0-2, pruned to 2,000,000 B of flash and 384 KiB of
  TFLite Micro arena, QAT, full-INT8 TFLite; NMS on the host). The same run as ``bench.device_fit``'s ``relu_192``
  arm: its finished run dirs there are read, not retrained.
- ``yolo26n``: ``+experiment=yolo26n_mcu``: the same budgets and levers, the one-to-one (NMS-free) branch quantized
  and exported (top-k on the host), ``distill.ld=0`` (no DFL), the same teacher.
- ``yolo26n_nms``: YOLO26n with its one-to-many branch in the file and NMS (``model.end2end=false``, ultralytics 8.4's
  default export).

Per run: the TFLite INT8 row (QAT graph) and the TFLite PTQ row (the same trained floats calibrated after training,
at equal epochs), flash, TFLM arena, Vela's U55 time and CPU operators, and the deploy kit's C post-processing per
frame on this host (top-k against NMS) from ``kdprune.deploy.check``.

    .venv/bin/python -m bench.yolo26 --arms yolo11n yolo26n --data shapes --seeds 0 --teacher path/to/yolo11s.pt

Results merge into bench/results/yolo26/mcxn947.json; runs live in bench/runs/yolo26/ and resume.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile

from bench.common import RESULTS, ROOT, git_rev, machine, run_kdprune, seed_mean

OUT = RESULTS / "yolo26" / "mcxn947.json"
RUNS = ROOT / "bench" / "runs" / "yolo26"
DEVICE_FIT_RUNS = ROOT / "bench" / "runs" / "device_fit"
ARMS = {
    "yolo11n": ["+experiment=yolo11n_mcu"],
    "yolo26n": ["+experiment=yolo26n_mcu"],
    "yolo26n_nms": ["+experiment=yolo26n_mcu", "model.end2end=false"],
}
COMMON = ["data.imgsz=192", "model.pad_free_downsample=0", "val.plot_every=0"]  # device_fit's relu_192


def post_ms(run_dir) -> dict:
    """The kit's C post-processing on the run's val images (TFLite Micro outputs): equal to the scored decode, and
    its time per frame at the kit's threshold (the Python decode + NMS / top-k beside it)."""
    from kdprune.deploy.check import check_kit
    from kdprune.deploy.host import compile_library

    with tempfile.TemporaryDirectory() as d:
        r = check_kit(run_dir, compile_library(d), conf=0.25)
    return {k: r[k] for k in ("equal", "c_ms", "python_ms", "skipped", "boxes")}


def run_arm(arm: str, data: str, seed: int, teacher: str | None) -> dict:
    args = [*ARMS[arm], f"data={data}", f"seed={seed}", *COMMON]
    if teacher:
        args.append(f"teacher.weights={teacher}")
    run_dir = RUNS / f"{arm}-{data}-s{seed}"
    if arm == "yolo11n" and (DEVICE_FIT_RUNS / f"relu_192-{data}-s{seed}" / "summary.json").is_file():
        run_dir = DEVICE_FIT_RUNS / f"relu_192-{data}-s{seed}"
    s = run_kdprune(args, run_dir, f"{arm} {data} seed {seed}")
    rows = {r["stage"]: r for r in s["stages"]}
    row, ptq = rows["TFLite INT8"], rows.get("TFLite PTQ") or {}
    npu = (row.get("npu") or [{}])[0]
    return {"mAP50-95": row["mAP50-95"], "mAP50": row["mAP50"], "ptq_mAP50-95": ptq.get("mAP50-95"),
            "qat_fake_quant": rows.get("QAT fake-quant", {}).get("mAP50-95"), "best_pt": s["mAP50-95"],
            "bytes": row["bytes"], "arena": row["arena_bytes"], "fits_mcxn947": (row.get("part") or {}).get("fits"),
            "u55_ms": npu.get("inference_ms"), "cpu_ops": npu.get("cpu_ops"), "params": s["params"],
            "head": (s.get("head") or {}).get("postprocess", "nms"), "post": post_ms(run_dir),
            "wall_s": s["wall_time_s"], "run_dir": str(run_dir.relative_to(ROOT))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arms", nargs="+", default=["yolo11n", "yolo26n"], choices=list(ARMS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--data", nargs="+", default=["shapes"])
    ap.add_argument("--teacher", default=None, help="one teacher checkpoint for every arm")
    a = ap.parse_args(argv)
    res = json.loads(OUT.read_text()) if OUT.is_file() else {"runs": {}}
    res.update(machine=machine(), commit=git_rev())
    for data in a.data:
        for seed in a.seeds:
            for arm in a.arms:
                key = f"{arm}/{data}/s{seed}"
                res["runs"][key] = r = {**run_arm(arm, data, seed, a.teacher), "teacher": a.teacher}
                OUT.write_text(json.dumps(res, indent=1) + "\n")
                print(key, json.dumps(r), flush=True)
    for data in a.data:
        for arm in a.arms:
            for metric in ("mAP50-95", "ptq_mAP50-95"):
                if (line := seed_mean(res["runs"], f"{arm}/{data}/", metric)) is not None:
                    print(f"{data} {arm} {metric}: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
