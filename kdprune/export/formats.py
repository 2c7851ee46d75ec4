"""The export formats (``export.formats``): each one entry of ``FORMATS``, a check run before any training and a
writer that adds its rows to the report. ``kdprune.export.stages.run_stages`` calls the configured ones, in this
registry's order; each row's reference and tolerance live with its stage name in ``kdprune.stage_rows.STAGES``.

A new format: its writer here (write the file, verify it, evaluate it with ``sr.export_row``), one
``FORMATS.register``, and its rows in ``STAGES``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
from omegaconf import DictConfig

from kdprune.export.onnx import export_onnx
from kdprune.export.runtime import OnnxRunner
from kdprune.registry import Registry
from kdprune.stage_rows import ONNX_FP32, ONNX_INT8, TFLITE_INT8, TFLITE_PTQ
from kdprune.yolo.rawhead import HeadSpec, RawHeadModel


@dataclass
class Exported:
    """What every writer reads: the stage runner (loader, rows, export dir), the float model and its head, stats and
    output names, the QAT graph (None without QAT) and the PTQ graph (observed and converted) with its image count."""

    sr: object  # kdprune.export.stages.StageRunner
    best: torch.nn.Module
    head: HeadSpec
    stats: dict
    names: list[str]
    qat: torch.nn.Module | None
    ptq_observed: torch.nn.Module
    ptq: torch.nn.Module
    calib_images: int


class ExportFormat(NamedTuple):
    write: Callable[[Exported], None]
    check: Callable[[DictConfig], None] = lambda cfg: None  # before training: a missing package, bad settings


FORMATS: Registry[ExportFormat] = Registry("export format")


def _onnx(x: Exported) -> None:
    sr = x.sr
    path = sr.export_dir / "model_fp32.onnx"
    sr.export_row(ONNX_FP32, lambda: export_onnx(RawHeadModel(x.best), path, sr.imgsz),
                  lambda p: sr.evaluate(ONNX_FP32, OnnxRunner(p, sr.threads), x.head, stats=x.stats, artifact=p,
                                        latency=True, note="onnxruntime, from best.pt"))


def _onnx_int8(x: Exported) -> None:
    """The QAT graph as ONNX QDQ (the PTQ baseline's ONNX file is written by ``run_stages``, with or without QAT)."""
    from kdprune.quant import backend

    if x.qat is None:
        return
    sr = x.sr
    path = sr.export_dir / "model_int8_qdq.onnx"
    sr.export_row(ONNX_INT8, lambda: backend.export_qdq_onnx(backend.convert(x.qat), path, sr.imgsz, x.names),
                  lambda p: sr.evaluate(ONNX_INT8, OnnxRunner(p, sr.threads), x.head, stats=x.stats, artifact=p,
                                        latency=True, note="onnxruntime, QDQ from the QAT graph"))


def _tflite_int8(x: Exported) -> None:
    """The device file is the quantized graph itself: QAT's when QAT ran (and PTQ's beside it, through the same path,
    so the report shows what the QAT epochs bought in the file), else PTQ's."""
    from kdprune.export.device import tflite_eval
    from kdprune.export.tflite import graph_to_tflite_int8
    from kdprune.quant import backend

    sr, ptq_what = x.sr, f"PTQ graph, {x.calib_images} calibration images"
    files = [(TFLITE_INT8, x.qat if x.qat is not None else x.ptq_observed, "model_int8.tflite",
              "QAT graph" if x.qat is not None else ptq_what)]
    if x.qat is not None:
        files.append((TFLITE_PTQ, x.ptq_observed, "model_ptq_int8.tflite", ptq_what))
    for name, graph, fname, what in files:
        sr.export_row(name, lambda g=graph, f=fname: graph_to_tflite_int8(backend.convert_for_tflite(g),
                                                                            sr.export_dir / f, sr.imgsz, x.names),
                      lambda p, n=name, w=what: tflite_eval(sr, n, p, x.head, x.stats, x.names, w,
                                                              device=n == TFLITE_INT8))


def _check_tflite(cfg: DictConfig) -> None:
    from kdprune.export.npu import check_npu_targets
    from kdprune.export.tflite import require_tflite

    require_tflite()  # one line naming what is missing
    check_npu_targets(cfg.export.get("npu"))


FORMATS.register("onnx", ExportFormat(_onnx))
FORMATS.register("onnx_int8", ExportFormat(_onnx_int8))
FORMATS.register("tflite_int8", ExportFormat(_tflite_int8, _check_tflite))
