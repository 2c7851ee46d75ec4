"""QAT vs PTQ vs ultralytics' own INT8 path, on the same pruned model; ONNX INT8 vs fp32 latency.

Reads two finished runs of the same recipe:
  --qat-run: ``python -m kdprune +experiment=yolo11n_mcu`` (QAT over the last epochs; its report has the QAT rows and a
             PTQ row on its pre-QAT best.pt)
  --ptq-run: the same with ``quant=none`` (all epochs in float; its PTQ row is PTQ of the fully trained model)
and adds, on the --ptq-run's best.pt (the same pruned float model PTQ starts from):
  * ultralytics' own INT8 export, ``YOLO(pt).export(format="litert", quantize=8, data=..., split=...)`` (8.4.190
    exports through litert-torch, as kdprune does), scored by ``YOLO(tflite).val(...)``, calibrated on val (its
    default) and on train — in a subprocess with a time limit and ``YOLO_OFFLINE=1``;
  * onnxruntime's ``quantize_static`` (QDQ, per-channel, the run's calibration images) of the run's fp32 ONNX,
    scored by kdprune's evaluator — the fallback the issue names.

    .venv/bin/python -m bench.quant_int8 --qat-run outputs/A --ptq-run outputs/B

Writes bench/results/quant/int8_paths-<imgsz>.json (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.common import RESULTS, git_rev, machine

ULTRA = r"""
import json, sys, time
from ultralytics import YOLO
pt, data, imgsz, split = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
val = dict(data=data, imgsz=imgsz, batch=1, plots=False, verbose=False)
f = YOLO(pt).val(**val)  # ultralytics' validator on the float model: how far its numbers sit from kdprune's evaluator
t = time.time()
out = YOLO(pt).export(format="litert", quantize=8, data=data, split=split, imgsz=imgsz, batch=1)
took = time.time() - t
m = YOLO(out, task="detect").val(**val)
print("RESULT" + json.dumps({"path": str(out), "mAP50": m.box.map50, "mAP50-95": m.box.map, "export_s": round(took, 1),
                             "float_mAP50-95_ultralytics_val": f.box.map, "calibration_split": split}))
"""


def stage(summary: dict, name: str) -> dict:
    return next((r for r in summary["stages"] if r["stage"] == name), {})


def ultralytics_int8(pt: Path, data: str, imgsz: int, timeout: int, split: str = "val") -> dict:
    """ultralytics 8.4.190's own INT8 TFLite (``format="litert", quantize=8``: litert-torch, min/max calibration on
    ``split``, its default being val) of ``pt``, scored by ``YOLO(file).val``. Runs on a copy of ``pt`` in a temp dir
    (removed after), so the run's weights folder gets no export artifacts."""
    import shutil
    import tempfile

    env = {**os.environ, "YOLO_OFFLINE": "1"}
    work = Path(tempfile.mkdtemp(prefix="ultra-int8-"))
    try:
        shutil.copy(pt, work / pt.name)
        try:
            p = subprocess.run([sys.executable, "-c", ULTRA, pt.name, data, str(imgsz), split], capture_output=True,
                               text=True, timeout=timeout, env=env, cwd=work)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout}s"}
        line = next((ln for ln in p.stdout.splitlines() if ln.startswith("RESULT")), None)
        if line is None:
            tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
            return {"error": " | ".join(tail)[-400:]}
        r = json.loads(line[6:])
        r["bytes"] = (work / r["path"]).stat().st_size
        return r
    finally:
        shutil.rmtree(work, ignore_errors=True)


def ort_quantize_static(run: Path, cfg, n_calib: int) -> dict:
    """onnxruntime's static INT8 (QDQ, per-channel weights, int8 activations, MinMax) of the run's fp32 ONNX."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from ultralytics.nn.tasks import load_checkpoint

    from kdprune.build import hyp_from_cfg
    from kdprune.data import resolve_data
    from kdprune.export import OnnxRunner, evaluate_runner, latency_ms
    from kdprune.export.stages import calibration_images
    from kdprune.yolo import val_settings

    data = resolve_data(cfg.data.yaml, cfg.cache_dir, dict(cfg.data.embedded), False)
    hyp = hyp_from_cfg(cfg, data)
    imgsz = int(cfg.data.imgsz)
    calib = calibration_images(data, hyp, imgsz, n_calib)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(calib[i:i + 1] for i in range(len(calib)))

        def get_next(self):
            x = next(self.it, None)
            return None if x is None else {"images": x}

    src, dst = run / "export" / "model_fp32.onnx", run / "export" / "model_ort_static_int8.onnx"
    t = time.time()
    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
    took = time.time() - t
    head = load_checkpoint(str(run / "weights" / "best.pt"), device="cpu")[0].model[-1]
    runner = OnnxRunner(dst, 1)
    from kdprune.export.scoring import square_val_loader

    m = evaluate_runner(runner, square_val_loader(data, hyp, imgsz), data, strides=[float(s) for s in head.stride],
                        nc=head.nc, reg_max=head.reg_max, names=data["names"], **val_settings(cfg.val))
    return {"path": str(dst), "bytes": dst.stat().st_size, "mAP50": m["mAP50"], "mAP50-95": m["mAP50-95"],
            "latency_ms": round(latency_ms(runner, imgsz, runs=30)["median"], 2), "quantize_s": round(took, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--qat-run", type=Path, required=True)
    ap.add_argument("--ptq-run", type=Path, required=True)
    ap.add_argument("--timeout", type=int, default=900)
    ap.add_argument("--out", type=Path, default=None, help="default: bench/results/quant/int8_paths-<imgsz>.json")
    a = ap.parse_args()
    from omegaconf import OmegaConf

    qat, ptq = (json.loads((d / "summary.json").read_text()) for d in (a.qat_run, a.ptq_run))
    cfg = OmegaConf.load(a.ptq_run / "config.yaml")
    a.out = a.out or RESULTS / "quant" / f"int8_paths-{int(cfg.data.imgsz)}.json"
    rows = {
        "QAT: fake-quant (PyTorch)": stage(qat, "QAT fake-quant"),
        "QAT: ONNX INT8 (QDQ)": stage(qat, "ONNX INT8"),
        "QAT: TFLite INT8": stage(qat, "TFLite INT8"),
        "PTQ of the fully trained float model (ONNX QDQ)": stage(ptq, "PTQ baseline"),
        "PTQ of the QAT run's pre-QAT best.pt (ONNX QDQ)": stage(qat, "PTQ baseline"),
        "PTQ run: TFLite INT8 (converter calibration)": stage(ptq, "TFLite INT8"),
        "float: pruned fp32 (QAT run, best.pt)": stage(qat, "pruned fp32"),
        "float: pruned fp32 (PTQ run, best.pt)": stage(ptq, "pruned fp32"),
        "float: ONNX fp32 (QAT run)": stage(qat, "ONNX fp32"),
    }
    for split in ("val", "train"):  # its default calibrates on val images; train is the fair comparison
        rows[f"ultralytics export(format=litert, quantize=8), calibrated on {split}"] = ultralytics_int8(
            (a.ptq_run / "weights" / "best.pt").resolve(), str(cfg.data.yaml or ptq["data"]), int(cfg.data.imgsz),
            a.timeout, split)
    rows["onnxruntime quantize_static (QDQ, per-channel)"] = (
        ort_quantize_static(a.ptq_run, cfg, 128) if (a.ptq_run / "export" / "model_fp32.onnx").is_file()
        else {"error": "the PTQ run exported no model_fp32.onnx (export.formats)"})
    result = {"machine": machine(), "commit": git_rev(), "qat_run": str(a.qat_run), "ptq_run": str(a.ptq_run),
              "rows": rows}
    a.out.write_text(json.dumps(result, indent=2))
    print(f"{'':52s} {'mAP50-95':>9s} {'mAP50':>7s} {'bytes':>11s} {'ms':>6s}")
    for k, r in rows.items():
        if r.get("error"):
            print(f"{k:52s} failed: {r['error']}")
            continue
        ms = r.get("latency_ms")
        print(f"{k:52s} {r.get('mAP50-95', float('nan')):9.4f} {r.get('mAP50', float('nan')):7.4f} "
              f"{(r.get('bytes') or 0):11,d} {ms if ms is not None else '':>6}")


if __name__ == "__main__":
    main()
