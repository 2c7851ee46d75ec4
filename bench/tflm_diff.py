"""The first operator at which a TFLite INT8 file's outputs on TensorFlow Lite Micro (TFLM, the MCU's runtime) part
from LiteRT's reference kernels (the ones kdprune scores the file with), on random int8 inputs.

    .venv/bin/python -m bench.tflm_diff FILE.tflite [--images N] [--seed S]

The device check (``kdprune/export/device.py``, ``kdprune.export.tflm.tflm_parity``) says that a file differs; this
says where. LiteRT keeps every tensor (``experimental_preserve_all_tensors``), TFLM only the graph outputs, so TFLM
runs in-memory copies of the file whose subgraph outputs also list the outputs of a batch of operators, batch after
batch in execution order, until one differs. Prints that operator (index, type, input and output tensors with their
scale / zero point), the share of its output elements that differ and the largest difference in LSB, and for a
LOGISTIC its ``kdprune.export.tflite_fixes.logistic_near_tie`` (a table entry on a rounding tie, where the two round
apart). Exit 0 whether or not it finds one.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from kdprune.export.flatbuffer import enum_names, load, pack  # noqa: E402
from kdprune.export.tflite_fixes import logistic_near_tie  # noqa: E402
from kdprune.export.tflm import _micro, tensor_arena_bytes  # noqa: E402

BATCH = 32  # operators whose outputs one TFLM copy exposes


def _name(t) -> str:
    return t.name.decode() if isinstance(t.name, bytes) else str(t.name)


def _qparams(t) -> tuple[float | None, int | None]:
    q = t.quantization
    if q is None or q.scale is None or len(q.scale) == 0:
        return None, None
    return float(np.asarray(q.scale).ravel()[0]), int(np.asarray(q.zeroPoint).ravel()[0])


def _describe(tensors, idx: int) -> str:
    s, z = _qparams(tensors[idx])
    text = f"#{idx} {_name(tensors[idx])!r}"
    return f"{text} scale={s:.10g} zp={z}" if s is not None else text


def main() -> None:
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("file", type=Path)
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    op_names = enum_names(schema.BuiltinOperator)
    model, codes = load(args.file)
    graph = model.subgraphs[0]
    tensors, ops, outputs = graph.tensors, graph.operators, [int(t) for t in graph.outputs]
    model.signatureDefs = None  # the copies' extra outputs are in no signature

    lite = Interpreter(model_path=str(args.file), num_threads=1, experimental_preserve_all_tensors=True,
                       experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
    lite.allocate_tensors()
    rng = np.random.default_rng(args.seed)
    inputs = [[rng.integers(np.iinfo(d["dtype"]).min, np.iinfo(d["dtype"]).max + 1, size=d["shape"],
                            dtype=d["dtype"]) for d in lite.get_input_details()] for _ in range(args.images)]
    reference = []  # per image: every tensor LiteRT computed
    for xs in inputs:
        for d, x in zip(lite.get_input_details(), xs):
            lite.set_tensor(d["index"], x)
        lite.invoke()
        reference.append({int(t): lite.get_tensor(int(t)).copy() for op in ops for t in op.outputs})

    base_arena = tensor_arena_bytes(args.file)
    print(f"{args.file}: {len(ops)} operators, {args.images} random int8 input(s), seed {args.seed}")
    for start in range(0, len(ops), BATCH):
        batch = range(start, min(start + BATCH, len(ops)))
        extra = [int(t) for i in batch for t in ops[i].outputs if int(t) >= 0 and int(t) not in outputs]
        graph.outputs = outputs + list(dict.fromkeys(extra))
        order = [int(t) for t in graph.outputs]
        arena = base_arena + sum(4 * int(np.prod(tensors[t].shape)) + 64 for t in extra) + (1 << 20)
        micro = _micro(pack(model), arena)
        stats: dict[int, list] = {t: [0, 0, 0.0] for i in batch for t in map(int, ops[i].outputs) if t >= 0}
        for xs, ref in zip(inputs, reference):
            for k, x in enumerate(xs):
                micro.set_input(np.ascontiguousarray(x), k)
            micro.invoke()
            for t, st in stats.items():
                d = np.abs(ref[t].astype(np.float64) - np.asarray(micro.get_output(order.index(t))).astype(np.float64))
                st[0] += int((d > 0).sum())
                st[1] += d.size
                st[2] = max(st[2], float(d.max()) if d.size else 0.0)
        for i in batch:
            bad = [t for t in map(int, ops[i].outputs) if t >= 0 and stats[t][0]]
            if not bad:
                continue
            op = ops[i]
            kind = op_names.get(codes[op.opcodeIndex], str(codes[op.opcodeIndex]))
            print(f"first diverging op: {i} {kind}")
            for t in (int(t) for t in op.inputs if int(t) >= 0):
                print(f"  input  {_describe(tensors, t)}")
            for t in map(int, op.outputs):
                n_diff, n, worst = stats[t]
                print(f"  output {_describe(tensors, t)}: {n_diff}/{n} elements differ ({n_diff / n:.3%}), "
                      f"max {worst:g} LSB")
            if kind == "LOGISTIC":
                s_in, z_in = _qparams(tensors[int(op.inputs[0])])
                s_out, z_out = _qparams(tensors[int(op.outputs[0])])
                print(f"  logistic_near_tie({s_in:.10g}, {z_in}, {s_out:.10g}, {z_out}) = "
                      f"{logistic_near_tie(s_in, z_in, s_out, z_out)}")
            return
    print("no divergence: every operator's output is identical in TFLM and LiteRT's reference kernels")


if __name__ == "__main__":
    main()
