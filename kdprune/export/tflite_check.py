"""Reading a TFLite flatbuffer back: which ops it holds, whether anything in it is still float, weight scales.

The file is the device artifact, so what it contains is checked on the file itself (``ai_edge_litert``'s generated
schema), not on the converter's settings.
"""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np

from kdprune.export.flatbuffer import enum_names, read

# Ops whose input 1 is a weight (int8 in a full-integer model) and input 2 a bias (int32).
_WEIGHT_OPS = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV", "CONV_3D"}


def _op_name(schema, model, op, names: dict[int, str]) -> str:
    code = model.OperatorCodes(op.OpcodeIndex())
    builtin = max(int(code.BuiltinCode()), int(code.DeprecatedBuiltinCode()))
    name = names.get(builtin, f"BUILTIN_{builtin}")
    if name == "CUSTOM":
        custom = code.CustomCode()
        name = f"CUSTOM:{custom.decode() if custom else '?'}"
    return name


def tflite_ops(path: str | Path) -> collections.Counter:
    """Operator type names in a TFLite file (all subgraphs), with counts."""
    schema, _, model = read(path)
    names = enum_names(schema.BuiltinOperator)
    ops = collections.Counter()
    for s in range(model.SubgraphsLength()):
        g = model.Subgraphs(s)
        for i in range(g.OperatorsLength()):
            ops[_op_name(schema, model, g.Operators(i), names)] += 1
    return ops


def _is_const(model, tensor) -> bool:
    b = tensor.Buffer()
    if b == 0 or b >= model.BuffersLength():
        return False
    buf = model.Buffers(b)
    return buf.DataLength() > 0 or buf.Size() > 0  # Size/Offset: data outside the flatbuffer (models > 2 GB)


def _n_scales(tensor) -> int:
    q = tensor.Quantization()
    return 0 if q is None else q.ScaleLength()


def check_fully_int8(path: str | Path) -> list[str]:
    """Problems that keep a TFLite file from being full-integer INT8, as human-readable lines; ``[]`` = fully INT8.

    Checked: model inputs/outputs are int8; every activation an operator reads or writes is int8 with a scale;
    constant weights of CONV_2D/DEPTHWISE_CONV_2D/FULLY_CONNECTED/TRANSPOSE_CONV are int8 and their biases int32;
    other constants are int8 (or int32 shapes/indices); no float tensor anywhere (which also catches
    QUANTIZE/DEQUANTIZE to or from float) and no custom or Flex (TF select) operator.
    ``tflite_ops(path)`` lists the operator types.
    """
    schema, _, model = read(path)
    op_names = enum_names(schema.BuiltinOperator)
    types = enum_names(schema.TensorType)
    problems: list[str] = []

    def tname(t) -> str:
        return (t.Name() or b"?").decode(errors="replace")

    for s in range(model.SubgraphsLength()):
        g = model.Subgraphs(s)
        for kind, n, get in (("input", g.InputsLength(), g.Inputs), ("output", g.OutputsLength(), g.Outputs)):
            for k in range(n):
                t = g.Tensors(get(k))
                if t.Type() != schema.TensorType.INT8:
                    problems.append(f"model {kind} {tname(t)!r} is {types.get(t.Type(), t.Type())}, not INT8")
        for i in range(g.OperatorsLength()):
            op = g.Operators(i)
            name = _op_name(schema, model, op, op_names)
            where = f"op {i} {name}"
            if name.startswith("CUSTOM") or "FLEX" in name.upper():
                problems.append(f"{where}: custom/Flex operator (not a TFLite builtin)")
            ins = [op.Inputs(k) for k in range(op.InputsLength())]
            outs = [op.Outputs(k) for k in range(op.OutputsLength())]
            for role, idxs in (("input", ins), ("output", outs)):
                for pos, ti in enumerate(idxs):
                    if ti < 0:  # optional input left out
                        continue
                    t = g.Tensors(ti)
                    ty = types.get(t.Type(), str(t.Type()))
                    const = role == "input" and _is_const(model, t)
                    if name in _WEIGHT_OPS and role == "input" and pos in (1, 2) and const:
                        want = "INT8" if pos == 1 else "INT32"
                        if ty != want:
                            what = "weights" if pos == 1 else "bias"
                            problems.append(f"{where}: {what} {tname(t)!r} is {ty}, not {want}")
                        elif _n_scales(t) == 0:
                            problems.append(f"{where}: {tname(t)!r} has no quantization scale")
                        continue
                    if ty.startswith("FLOAT") or ty.startswith("COMPLEX"):
                        problems.append(f"{where}: {role} {tname(t)!r} is {ty}")
                    elif ty == "INT8":
                        if _n_scales(t) == 0:
                            problems.append(f"{where}: {role} {tname(t)!r} is INT8 without a quantization scale")
                    elif ty == "INT32" and const:
                        pass  # shapes, axes, paddings, indices
                    else:
                        problems.append(f"{where}: {role} {tname(t)!r} is {ty}, not INT8")
    return problems


def conv_weight_scales(path: str | Path) -> list[dict]:
    """Per conv/FC weight tensor: ``{"op", "tensor", "out_channels", "n_scales", "axis"}`` (``n_scales`` 1 =
    per-tensor, ``out_channels`` = per-channel)."""
    schema, _, model = read(path)
    op_names = enum_names(schema.BuiltinOperator)
    rows = []
    for s in range(model.SubgraphsLength()):
        g = model.Subgraphs(s)
        for i in range(g.OperatorsLength()):
            op = g.Operators(i)
            name = _op_name(schema, model, op, op_names)
            if name not in _WEIGHT_OPS or op.InputsLength() < 2:
                continue
            t = g.Tensors(op.Inputs(1))
            shape = t.ShapeAsNumpy() if t.ShapeLength() else np.zeros(0, int)
            q = t.Quantization()
            axis = q.QuantizedDimension() if q is not None else 0
            # DEPTHWISE_CONV_2D weights are (1, kh, kw, C) and quantized along the last axis.
            out_ch = int(shape[axis]) if len(shape) > axis else 0
            rows.append({"op": name, "tensor": (t.Name() or b"").decode(), "out_channels": out_ch,
                         "n_scales": _n_scales(t), "axis": int(axis)})
    return rows


def tensor_qparams(path: str | Path) -> dict:
    """The quantization a TFLite file carries, as float32 values (``kdprune.quant.backend.qparams`` is the graph's
    side): ``activations``: (scale, zero point) of every non-constant int8 tensor with one scale; ``weights``: the
    scale tuple of every int8 weight of a conv/FC op; ``weight_zero_points_0``: whether all their zero points are 0."""
    schema, _, model = read(path)
    op_names = enum_names(schema.BuiltinOperator)
    acts, weights, zp0 = [], [], True
    for s in range(model.SubgraphsLength()):
        g = model.Subgraphs(s)
        weight_ids = set()
        for i in range(g.OperatorsLength()):
            op = g.Operators(i)
            if _op_name(schema, model, op, op_names) in _WEIGHT_OPS and op.InputsLength() > 1:
                weight_ids.add(op.Inputs(1))
        for i in range(g.TensorsLength()):
            t = g.Tensors(i)
            q = t.Quantization()
            if t.Type() != schema.TensorType.INT8 or q is None or q.ScaleLength() == 0:
                continue
            scale = tuple(q.ScaleAsNumpy().astype(np.float32).tolist())
            if i in weight_ids and _is_const(model, t):
                weights.append(scale)
                zp0 = zp0 and not q.ZeroPointAsNumpy().any()
            elif not _is_const(model, t) and len(scale) == 1:
                acts.append((scale[0], int(q.ZeroPoint(0))))
    return {"activations": acts, "weights": weights, "weight_zero_points_0": zp0}
