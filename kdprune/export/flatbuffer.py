"""The one place a TFLite flatbuffer is read or written (``ai_edge_litert``'s generated schema).

Two views of a file: ``read`` gives the schema's read-only accessors (fast, for checks over every tensor), ``load``
the object tree that ``save`` writes back (for the exporter's edits); ``TFLiteFile`` is the object tree with operator
names, shapes, constants and zero points at hand (the target rules and the arena replay read it).
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from kdprune.errors import UserError


def schema():
    """LiteRT's generated TFLite schema module."""
    from ai_edge_litert import schema_py_generated

    return schema_py_generated


def enum_names(cls) -> dict[int, str]:
    """``{value: name}`` of a schema enum (``schema().BuiltinOperator``, ``TensorType``, ...)."""
    return {v: k for k, v in vars(cls).items() if not k.startswith("_") and isinstance(v, int)}


def _tflite_bytes(path: str | Path) -> bytes:
    """The file's bytes; a file without TFLite's flatbuffer identifier ("TFL3" at byte 4) is a UserError."""
    buf = Path(path).read_bytes()
    if buf[4:8] != b"TFL3":
        raise UserError(f"{path}: not a TFLite file (no TFL3 flatbuffer identifier)")
    return buf


def read(path: str | Path):
    """``(schema, bytes, Model)``: the file through the schema's read-only accessors."""
    s = schema()
    buf = _tflite_bytes(path)
    return s, buf, s.Model.GetRootAs(buf, 0)


def load(path: str | Path):
    """``(ModelT, builtin code per operator code)``: the file as the schema's object tree, to edit and ``save``."""
    try:
        model = schema().ModelT.InitFromPackedBuf(bytearray(_tflite_bytes(path)), 0)
    except (struct.error, IndexError, UnicodeDecodeError):  # offsets past the end: a truncated or damaged file
        raise UserError(f"{path}: a damaged TFLite file (its flatbuffer does not parse); export it again") from None
    return model, [max(c.builtinCode, c.deprecatedBuiltinCode) for c in model.operatorCodes]


def pack(model) -> bytes:
    """The schema's object tree as TFLite flatbuffer bytes."""
    import flatbuffers

    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def save(path: str | Path, model) -> None:
    Path(path).write_bytes(pack(model))


class TFLiteFile:
    """Subgraph 0 of a file as an object tree: ``ops`` as ``(index, name, op)``, tensor shapes, int32 constants,
    zero points, the graph's I/O tensors; and ``npu``, Vela's compiles of the file (rows of
    ``kdprune.export.npu.vela_compile``), what the file alone cannot say."""

    def __init__(self, path: str | Path, npu: list[dict] | tuple = ()):
        self.npu = list(npu)
        self.model, codes = load(path)
        names = enum_names(schema().BuiltinOperator)
        self.g = self.model.subgraphs[0]
        self.ops = [(i, names.get(codes[op.opcodeIndex], "?"), op) for i, op in enumerate(self.g.operators)]
        self.io = set(self.g.inputs.tolist()) | set(self.g.outputs.tolist())

    def shape(self, t: int) -> list[int]:
        s = self.g.tensors[t].shape
        return [] if s is None else [int(v) for v in s]

    def const(self, t: int) -> np.ndarray | None:
        data = self.model.buffers[self.g.tensors[t].buffer].data
        return None if data is None else np.frombuffer(bytes(bytearray(data)), np.int32)

    def zero_point(self, t: int) -> int:
        q = self.g.tensors[t].quantization
        return 0 if q is None or q.zeroPoint is None else int(q.zeroPoint[0])
