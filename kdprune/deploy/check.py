"""The kit checked against the report: the C post-processing driven on the int8 outputs TensorFlow Lite Micro gives
for the run's val images, beside the host decode that scored the file.

Per image, with the validation settings the TFLite row was scored with (``val.conf``/``iou``/``max_det``, every
class over conf a candidate as ultralytics' validator takes them): the C boxes, scores, classes and order against
``kdprune.export.decode`` + ultralytics' NMS on the same tensors; then ultralytics' mAP computed from the C boxes
against the report's TFLite INT8 row. With the kit's own settings (``--conf``, best class per anchor: what the
device shows): the share of anchors the int8 threshold skips, and the host time per frame of the C code against the
Python decode + NMS.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from kdprune.stage_rows import TFLITE_INT8


def _loader(run_dir: Path):
    """The run's data and its square val loader, rebuilt from the run's config.yaml as the stages built them."""
    from omegaconf import OmegaConf

    from kdprune.build import hyp_from_cfg
    from kdprune.data import resolve_data, square_val_loader

    cfg = OmegaConf.load(run_dir / "config.yaml")
    data = resolve_data(cfg.data.yaml, cfg.cache_dir, dict(cfg.data.embedded), False)
    return cfg, data, square_val_loader(data, hyp_from_cfg(cfg, data), int(cfg.data.imgsz))


def check_kit(run_dir: str | Path, so: str | Path, *, conf: float = 0.25, iou: float = 0.7, max_det: int = 300,
              images: int | None = None) -> dict:
    """Drive the compiled library ``so`` (``kdprune.deploy.host.compile_library``) on the run's val set (the first
    ``images``, default all) in TFLite Micro; see the module's docstring. Returns the numbers (``equal``: every image's
    C boxes equal the host's)."""
    from kdprune.data import prepare_batch
    from kdprune.deploy.host import HostPostprocess
    from kdprune.deploy.kit import read_contract
    from kdprune.export.decode import decode, nms
    from kdprune.export.tflm import TFLMRunner
    from kdprune.yolo.metrics import DetectionEvaluator

    run_dir = Path(run_dir)
    c = read_contract(run_dir)
    cfg, data, loader = _loader(run_dir)
    val = {k: cfg.val[k] for k in ("conf", "iou", "max_det")}
    names = [f"{k}{i}" for i in range(len(c.boxes)) for k in ("box", "cls")]
    runner = TFLMRunner(run_dir / "export" / "model_int8.tflite", output_names=names)
    quant = [(t.scale, t.zero_point) for b, k in zip(c.boxes, c.classes) for t in (b, k)]
    anchors = sum(b.shape[1] * b.shape[2] for b in c.boxes)
    post = HostPostprocess(so, strides=c.strides, nc=c.nc, reg_max=c.reg_max, quant=quant, capacity=anchors * c.nc,
                           end2end=c.end2end)
    ev = DetectionEvaluator(data["names"], distributed=False, **val)
    ev.reset(SimpleNamespace(names=data["names"], end2end=True), torch.device("cpu"), data)  # C boxes are final
    worst_px = worst_score = 0.0
    equal, seen, decoded, c_s, py_s, boxes = True, 0, 0, 0.0, 0.0, 0
    for batch in loader:
        if images is not None and seen >= images:
            break
        batch = prepare_batch(batch, "cpu")
        raw = runner.run_raw(runner.quantize_input(batch["img"][:1].numpy()))
        got, _ = post(raw, multi_label=True, **val)
        host = [torch.from_numpy((r.astype(np.float32) - np.float32(z)) * np.float32(s)) for r, (s, z) in
                zip(raw, quant)]
        ref = nms(decode(host, c.strides, nc=c.nc, reg_max=c.reg_max, channels_last=True, end2end=c.end2end,
                         max_det=val["max_det"]), multi_label=True, end2end=c.end2end, **val)[0]
        same = got.shape == ref.shape and np.array_equal(got[:, 5], ref[:, 5])
        if same and len(ref):
            worst_px = max(worst_px, float(np.abs(got[:, :4] - ref[:, :4]).max()))
            worst_score = max(worst_score, float(np.abs(got[:, 4] - ref[:, 4]).max()))
        equal &= same
        boxes += len(ref)
        ev.update(torch.from_numpy(got)[None] if len(got) else torch.zeros(1, 0, 6), batch)
        # the device's settings: best class, the kit's threshold; time against the Python decode + NMS
        t0 = time.perf_counter()
        _, st = post(raw, conf=conf, iou=iou, max_det=max_det)
        t1 = time.perf_counter()
        nms(decode(host, c.strides, nc=c.nc, reg_max=c.reg_max, channels_last=True, end2end=c.end2end,
                   max_det=max_det), conf, iou, max_det, end2end=c.end2end)
        c_s, py_s, decoded = c_s + t1 - t0, py_s + time.perf_counter() - t1, decoded + st.candidates
        seen += 1
    m = ev.compute()
    summary = json.loads((run_dir / "summary.json").read_text())
    row = next((r for r in summary.get("stages") or [] if r.get("stage") == TFLITE_INT8), {})
    equal &= worst_px < 1e-3 and worst_score < 1e-6
    return {"images": seen, "boxes": boxes, "equal": bool(equal), "max_box_px": worst_px, "max_score": worst_score,
            "mAP50-95": round(m["mAP50-95"], 4), "mAP50": round(m["mAP50"], 4),
            "row_mAP50-95": row.get("mAP50-95"), "row_mAP50": row.get("mAP50"), "val": val,
            "anchors": anchors, "conf": conf, "skipped": round(1 - decoded / max(seen * anchors, 1), 4),
            "c_ms": round(1e3 * c_s / max(seen, 1), 3), "python_ms": round(1e3 * py_s / max(seen, 1), 3)}


def check_line(r: dict) -> str:
    """The check's result as one line for the console and the kit's README."""
    same = "equal" if r["equal"] else "DIFFER from"
    return (f"C post-processing on {r['images']} val images (TFLite Micro outputs): detections {same} the scored "
            f"decode (max {r['max_box_px']:.1e} px); mAP50-95 {r['mAP50-95']:.4f} (the report's TFLite INT8 row "
            f"{r['row_mAP50-95']}); at conf {r['conf']} the int8 threshold skips {100 * r['skipped']:.1f} % of "
            f"{r['anchors']} anchors; {r['c_ms']:.3f} ms per frame on this host (Python decode + NMS "
            f"{r['python_ms']:.2f} ms)")
