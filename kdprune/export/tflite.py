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
- ``fix_uniform_bias``: litert-torch 0.10 quantizes a conv bias whose values are all equal (a splat constant, e.g.
  ultralytics' Detect bias init) with the *first* channel's scale for every channel under per-channel weights;
  the int32 bias is rewritten as round(b / (s_in * s_w[c])), what it does for any other bias (checked bit-exact);
- ``activation_fc_to_batch_matmul``: with one attention head (C2PSA of a narrow model) the converter writes the
  attention's activation x activation products as FULLY_CONNECTED, and LiteRT's reference FULLY_CONNECTED rounds its
  int8 result once where TensorFlow Lite Micro rounds twice: the device's outputs then differ from the scored ones
  (1-2 LSB at the product, 5-6 at the outputs). They are rewritten as the same product in BATCH_MATMUL (adj_y),
  which both runtimes compute alike (what the converter emits for two or more heads);
- ``untie_logistic_tables``: int8 LOGISTIC (SiLU's sigmoid) is a 256-entry table. LiteRT builds it in float32 and
  rounds half away from zero; TensorFlow Lite Micro computes it in fixed point, correctly rounded. Where an entry's
  exact value lies within ~1e-5 of a rounding tie the two differ by 1 step, and that step spreads to 10+ LSB at the
  outputs (seen once in the bench's files: glyphs, seed 1; bench/RESULTS.md). The input scale of such a table is
  moved by 1e-4 relative, which puts every entry clear of a tie and changes the values it represents by 0.01 %.

litert-torch and LiteRT are imported lazily: the rest of kdprune never pays for them (install: the 'tflite' extra).
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
from kdprune.export.flatbuffer import enum_names, load, save
from kdprune.export.tflite_check import check_fully_int8, conv_weight_scales, tensor_qparams, tflite_ops
from kdprune.export.tflite_runner import TFLiteRunner

__all__ = ["TFLiteRunner", "check_fully_int8", "check_scales", "conv_weight_scales", "graph_to_tflite_int8",
           "model_to_tflite_int8", "require_tflite", "tflite_ops"]

log = logging.getLogger("kdprune")
_INSTALL_HINT = "install the 'tflite' extra: pip install -e '.[tflite]'"


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


def fix_uniform_bias(path: str | Path, converted: nn.Module) -> int:
    """Rewrite the int32 biases litert-torch 0.10 got wrong (see the module docstring); returns how many.
    Convs are matched to the graph's by their weight-scale vector and input scale."""
    from ai_edge_litert import schema_py_generated as schema

    from kdprune.quant import backend

    refs = backend.qparams(converted)["conv_biases"]
    model, codes = load(path)
    conv_codes = {schema.BuiltinOperator.CONV_2D, schema.BuiltinOperator.DEPTHWISE_CONV_2D}
    buf_users = Counter(t.buffer for g in model.subgraphs for t in g.tensors)
    fixed = 0
    for g in model.subgraphs:
        for op in g.operators:
            if codes[op.opcodeIndex] not in conv_codes or len(op.inputs) < 3 or op.inputs[2] < 0:
                continue
            wt, bt, xt = g.tensors[op.inputs[1]], g.tensors[op.inputs[2]], g.tensors[op.inputs[0]]
            key = tuple(np.asarray(wt.quantization.scale, np.float32).tolist())
            if key not in refs or len(key) < 2:
                continue
            s_in, b = refs[key]
            if np.float32(xt.quantization.scale[0]) != s_in or not (b == b[0]).all():
                continue  # only the splat case: elsewhere the converter's own rounding stands
            want = np.round(b.astype(np.float32) / (s_in * np.asarray(key, np.float32))).astype(np.int32)
            have = np.frombuffer(bytes(bytearray(model.buffers[bt.buffer].data)), np.int32)
            if have.shape == want.shape and int(np.abs(have - want).max()) > 1:
                new = schema.BufferT()
                new.data = np.frombuffer(want.tobytes(), np.uint8)
                if buf_users[bt.buffer] > 1:  # a shared constant: give this tensor its own buffer
                    model.buffers.append(new)
                    bt.buffer = len(model.buffers) - 1
                else:
                    model.buffers[bt.buffer] = new
                fixed += 1
    if fixed:
        save(path, model)
    return fixed


def activation_fc_to_batch_matmul(path: str | Path) -> int:
    """Rewrite every FULLY_CONNECTED whose weights are an activation (not a constant) as BATCH_MATMUL(x, w, adj_y):
    the same product (x @ w.T) without FULLY_CONNECTED's rounding, which differs between LiteRT's reference kernels
    and TensorFlow Lite Micro (see the module docstring). Only the plain case (no bias, no fused activation, kept
    dimensions) is rewritten; anything else is left for the TFLite Micro parity check to judge. Returns how many."""
    from ai_edge_litert import schema_py_generated as schema

    model, codes = load(path)
    ops = schema.BuiltinOperator
    bmm = next((i for i, c in enumerate(codes) if c == ops.BATCH_MATMUL), None)  # int8 already where present
    n = 0
    for g in model.subgraphs:
        for op in g.operators:
            if codes[op.opcodeIndex] != ops.FULLY_CONNECTED:
                continue
            w, opts = g.tensors[op.inputs[1]], op.builtinOptions
            if model.buffers[w.buffer].data is not None and len(model.buffers[w.buffer].data):
                continue  # constant weights: a real fully connected layer
            x_rank = len(g.tensors[op.inputs[0]].shape)
            if (len(op.inputs) > 2 and op.inputs[2] >= 0) or opts.fusedActivationFunction != 0 or \
                    not (opts.keepNumDims or x_rank == 2):
                continue
            if bmm is None:
                code = schema.OperatorCodeT()
                code.builtinCode = code.deprecatedBuiltinCode = ops.BATCH_MATMUL
                code.version = 2  # int8 BATCH_MATMUL
                model.operatorCodes.append(code)
                bmm = len(model.operatorCodes) - 1
            new = schema.BatchMatMulOptionsT()
            new.adjX, new.adjY, new.asymmetricQuantizeInputs = False, True, False
            op.opcodeIndex, op.inputs = bmm, list(op.inputs[:2])
            op.builtinOptionsType, op.builtinOptions = schema.BuiltinOptions.BatchMatMulOptions, new
            n += 1
    if n:
        save(path, model)
    return n


# LSB of the table's output: ties 1.1e-5 away made LiteRT and TFLite Micro differ, 2.7e-5 did not (bench/RESULTS.md)
_TIE_MARGIN = 2e-4
_NUDGE = 1e-4  # relative step of the input scale
_STEPS = (1, -1, 2, -2, 3, -3, 4, -4)  # multiples of _NUDGE tried, nearest first
# ops whose output scale only enters their own requantization (so it is free), and consumers that read any input scale
_FREE_PRODUCERS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "BATCH_MATMUL", "ADD", "SUB", "MUL")
_FREE_CONSUMERS = ("LOGISTIC", "ADD", "SUB", "MUL")


def logistic_near_tie(in_scale: float, in_zp: int, out_scale: float = 1 / 256, out_zp: int = -128) -> bool:
    """Whether an int8 LOGISTIC table with these parameters has an unsaturated entry within ``_TIE_MARGIN`` output
    steps of a rounding tie, where LiteRT's float32 table and TFLite Micro's fixed point may round apart."""
    x = float(np.float32(in_scale)) * (np.arange(-128, 128) - in_zp)
    y = 1.0 / (1.0 + np.exp(-x)) / float(np.float32(out_scale)) + out_zp
    live = (y > -128) & (y < 127)
    return bool((np.abs(y - np.floor(y) - 0.5)[live] < _TIE_MARGIN).any())


def untie_back(graph_acts, file_acts) -> tuple[list, list]:
    """The file's activation (scale, zero point) pairs with each one ``untie_logistic_tables`` moved mapped back to
    the graph's pair it came from: one that is not the graph's, has the same zero point as a graph pair whose
    LOGISTIC table is on a tie, and is that scale moved by ``k * _NUDGE`` exactly as the export moves it. Returns
    (mapped pairs, [(graph pair, file pair)] of the moved ones)."""
    graph = set(graph_acts)
    tied = [(s, z) for s, z in graph if logistic_near_tie(s, z)]
    mapped, moved = [], []
    for s, z in file_acts:
        src = None if (s, z) in graph else next(
            ((s0, z0) for s0, z0 in tied for k in _STEPS
             if z0 == z and float(np.float32(s0 * (1 + k * _NUDGE))) == s), None)
        mapped.append(src or (s, z))
        if src:
            moved.append((src, (s, z)))
    return mapped, moved


def untie_logistic_tables(path: str | Path) -> list[tuple[str, float, float]]:
    """Move the input scale of every int8 LOGISTIC table that has an entry on a rounding tie (see the module
    docstring) by the smallest multiple of ``_NUDGE`` that clears it. Only where that scale is free: the tensor is
    no graph input or output, its producer requantizes to it and its consumers read it (SiLU: conv -> LOGISTIC, MUL);
    elsewhere the table is left for the TFLite Micro parity check to judge. Returns (tensor, old scale, new scale)."""
    from ai_edge_litert import schema_py_generated as schema

    model, codes = load(path)
    name = enum_names(schema.BuiltinOperator)
    moved = []
    for g in model.subgraphs:
        producer = {t: name[codes[op.opcodeIndex]] for op in g.operators for t in op.outputs}
        consumers: dict[int, set[str]] = {}
        for op in g.operators:
            for t in op.inputs:
                consumers.setdefault(t, set()).add(name[codes[op.opcodeIndex]])
        for op in g.operators:
            if name[codes[op.opcodeIndex]] != "LOGISTIC":
                continue
            t, out = g.tensors[op.inputs[0]], g.tensors[op.outputs[0]]
            if t.type != schema.TensorType.INT8 or t.quantization is None or len(t.quantization.scale) != 1:
                continue
            s, zp = float(t.quantization.scale[0]), int(t.quantization.zeroPoint[0])
            so, zo = float(out.quantization.scale[0]), int(out.quantization.zeroPoint[0])
            if not logistic_near_tie(s, zp, so, zo):
                continue
            tname = t.name.decode() if isinstance(t.name, bytes) else str(t.name)
            free = (op.inputs[0] not in list(g.inputs) + list(g.outputs)
                    and producer.get(op.inputs[0]) in _FREE_PRODUCERS
                    and consumers[op.inputs[0]] <= set(_FREE_CONSUMERS))
            new = next((float(np.float32(s * (1 + k * _NUDGE))) for k in _STEPS
                        if not logistic_near_tie(s * (1 + k * _NUDGE), zp, so, zo)), None) if free else None
            if new is None:
                log.warning(f"kdprune: TFLite: LOGISTIC input {tname} has a table entry on a rounding tie and its "
                            "scale cannot move; TensorFlow Lite Micro may differ from LiteRT there")
                continue
            t.quantization.scale = np.array([new], np.float32)
            moved.append((tname, s, new))
    if moved:
        save(path, model)
    return moved
