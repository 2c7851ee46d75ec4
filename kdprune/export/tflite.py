"""Full-integer INT8 TFLite export (for TFLite-based NPUs such as NXP eIQ Neutron) of the quantized graph itself.

Route: the PT2E graph kdprune trained (QAT) or calibrated (PTQ), ``convert_pt2e(..., fold_quantize=False)``
(``kdprune.quant.backend.convert_for_tflite``) -> ``litert_torch.convert`` with a static ``QuantConfig`` -> a
``.tflite`` flatbuffer. No TensorFlow: litert-torch lowers the ATen graph through StableHLO/MLIR and turns each
quantize/dequantize pair into an int8 tensor with *that pair's* scale and zero point, so the file holds exactly the
scales the QAT observers froze (``check_scales`` reads them back from the file and compares).

Why hand-written parts remain (none of these libraries does them):
- ``_DeviceIO``: NHWC int8 input and outputs, named like ``RawHeadModel``'s outputs (the converter cancels the
  permutes against its own layout transposes: the image goes straight into the first conv, each output comes out
  of a conv; the only TRANSPOSEs left are C2PSA attention's own);
- the file edits after conversion (``kdprune.export.tflite_fixes``): converter and runtime differences that would
  make the file differ from the graph or the MCU's runtime differ from the scored kernels.

litert-torch and LiteRT are imported lazily: the rest of kdprune never pays for their import time.
"""

from __future__ import annotations

import importlib.util
import logging
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch import nn

from kdprune.errors import UserError
from kdprune.export.tflite_check import check_fully_int8, conv_weight_scales, tensor_qparams, tflite_ops
from kdprune.export.tflite_fixes import (
    activation_fc_to_batch_matmul,
    fix_uniform_bias,
    untie_back,
    untie_logistic_tables,
)
from kdprune.export.tflite_runner import TFLiteRunner

__all__ = ["TFLiteRunner", "check_fully_int8", "check_scales", "conv_weight_scales", "graph_to_tflite_int8",
           "model_to_tflite_int8", "require_tflite", "tflite_ops"]

log = logging.getLogger("kdprune")
_INSTALL_HINT = "they are kdprune's own dependencies: reinstall it (make install, or pip install -e .)"


def require_tflite() -> None:
    """Raise a one-line ``UserError`` unless litert-torch, LiteRT and TFLite Micro (every file also runs in it) are
    importable (without importing them)."""
    missing = [m for m in ("litert_torch", "ai_edge_litert", "tflite_micro") if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(f"TFLite export needs {', '.join(missing)}: {_INSTALL_HINT}")


class _DeviceIO(nn.Module):
    """The converted graph as the device runs it: NHWC image in, the first ``len(names)`` outputs (the QAT graph
    also returns the Detect inputs for the loss) out as NHWC, keyed by name (the file's signature names)."""

    def __init__(self, gm: nn.Module, names: list[str]):
        super().__init__()
        self.gm, self.names = gm, list(names)

    def forward(self, images):
        out = self.gm(images.permute(0, 3, 1, 2))
        out = tuple(out) if isinstance(out, (tuple, list)) else (out,)
        return {n: o.permute(0, 2, 3, 1) for n, o in zip(self.names, out[: len(self.names)])}


def graph_to_tflite_int8(converted: nn.Module, path: str | Path, imgsz: int, output_names: list[str]) -> Path:
    """Write the full-integer TFLite of ``converted`` (``backend.convert_for_tflite`` of a QAT or PTQ graph): batch 1,
    ``imgsz`` square, int8 NHWC input ``images`` and int8 NHWC outputs named ``output_names``; every tensor's
    scale and zero point is the graph's. Raises ``UserError`` if the file is not fully INT8 or its scales are not
    the graph's (the file would not be the model that was trained)."""
    require_tflite()
    import litert_torch
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from litert_torch.quantize.quant_config import QuantConfig

    for m in converted.modules():  # exported-graph modules refuse .eval(); no BN or observer is left to care
        m.training = False
    io = _DeviceIO(converted, output_names)
    io.training = False
    # litert-torch reads only whether this quantizer is dynamic: static -> the graph's own Q/DQ become int8 tensors
    # (it never annotates or observes the graph itself). Without a quant_config the file would be float + Q/DQ ops.
    qc = QuantConfig(pt2e_quantizer=PT2EQuantizer().set_global(get_symmetric_quantization_config(is_dynamic=False)))
    example = torch.zeros(1, imgsz, imgsz, 3)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.tflite")
    from litert_torch import progress

    quiet, progress.console.quiet = progress.console.quiet, True  # its per-pass lines: kdprune logs one per file
    t0 = time.perf_counter()
    try:
        litert_torch.convert(io, sample_kwargs={"images": example}, quant_config=qc).export(str(tmp))
        progress.console.quiet = quiet
        log.info(f"kdprune: TFLite: {path.name} converted by litert-torch ({time.perf_counter() - t0:.0f}s)")
        if n := fix_uniform_bias(tmp, converted):
            log.info(f"kdprune: TFLite: {n} uniform conv biases re-quantized per channel (litert-torch 0.10 bug)")
        if n := activation_fc_to_batch_matmul(tmp):
            log.info(f"kdprune: TFLite: {n} activation x activation FULLY_CONNECTED written as BATCH_MATMUL")
        for name, old, new in untie_logistic_tables(tmp):
            log.info(f"kdprune: TFLite: LOGISTIC input {name} scale {old:.9g} -> {new:.9g}, off a rounding tie that "
                     "LiteRT and TensorFlow Lite Micro round differently")
        problems = check_fully_int8(tmp) or check_scales(converted, tmp)
        if problems:
            raise UserError(f"{path.name}: {len(problems)} problems, first: {problems[0]}")
        tmp.replace(path)
    finally:
        progress.console.quiet = quiet
        tmp.unlink(missing_ok=True)
    return path


def model_to_tflite_int8(model: nn.Module, path: str | Path, calib: np.ndarray, *, per_channel: bool = True,
                         output_names: list[str] | None = None) -> Path:
    """PTQ route for a float model (``RawHeadModel`` of a detector): min/max observers over ``calib``
    (``(N, 3, H, W)`` float32 in [0, 1], real images), then ``graph_to_tflite_int8``."""
    from kdprune.quant import backend

    calib = np.asarray(calib, dtype=np.float32)
    if calib.ndim != 4 or calib.shape[1] != 3 or len(calib) == 0 or calib.shape[2] != calib.shape[3]:
        raise ValueError(f"model_to_tflite_int8: calib must be (N, 3, S, S) float32 images, got {calib.shape}")
    if calib.min() < 0.0 or calib.max() > 1.0:
        raise ValueError("model_to_tflite_int8: calib images must be in [0, 1]")
    names = output_names or model.output_names()
    batches = [torch.from_numpy(calib[i:i + 16]) for i in range(0, len(calib), 16)]
    gm = backend.calibrate_ptq(model, batches, stride=32, per_channel=per_channel)
    return graph_to_tflite_int8(backend.convert_for_tflite(gm), path, calib.shape[2], names)


def check_scales(converted: nn.Module, path: str | Path) -> list[str]:
    """Problems where the file's quantization differs from the graph's (``[]`` = the same): every activation
    (scale, zero point) of the graph is an int8 tensor of the file and the file has no other (no requantize, no
    re-calibration); the conv/FC weight-scale vectors are the graph's, as a multiset, with zero points 0.
    Compared as float32, exactly; a LOGISTIC input moved off a rounding tie (``untie_logistic_tables``) counts as
    the graph's scale it was moved from, and only that."""
    from kdprune.quant import backend

    ref, got = backend.qparams(converted), tensor_qparams(path)
    problems = []
    pt_acts, tfl_acts = set(ref["activations"]), set(untie_back(ref["activations"], got["activations"])[0])
    if missing := pt_acts - tfl_acts:
        problems.append(f"{len(missing)} of {len(pt_acts)} activation scales of the graph are not in the file, "
                        f"e.g. {sorted(missing)[0]}")
    if extra := tfl_acts - pt_acts:
        problems.append(f"{len(extra)} activation scales in the file are not the graph's (a requantize or "
                        f"re-calibration), e.g. {sorted(extra)[0]}")
    if Counter(ref["weights"]) != Counter(got["weights"]):
        n = len(set(ref["weights"]) - set(got["weights"]))
        problems.append(f"weight scales differ: {n} of {len(set(ref['weights']))} of the graph's are not in the file "
                        f"({len(got['weights'])} weight tensors in the file, {len(ref['weights'])} in the graph)")
    if not got["weight_zero_points_0"]:
        problems.append("a weight tensor in the file has a non-zero zero point")
    return problems
