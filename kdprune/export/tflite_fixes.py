"""The TFLite file's edits after litert-torch's conversion (``kdprune.export.tflite.graph_to_tflite_int8`` runs them
in this order), written by hand because the converter and the runtimes differ where none of them can be told to:

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
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np
from torch import nn

from kdprune.export.flatbuffer import enum_names, load, save

log = logging.getLogger("kdprune")


def fix_uniform_bias(path: str | Path, converted: nn.Module) -> int:
    """Rewrite the int32 biases litert-torch 0.10 got wrong (see this module's docstring); returns how many.
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
    and TensorFlow Lite Micro (see this module's docstring). Only the plain case (no bias, no fused activation, kept
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
