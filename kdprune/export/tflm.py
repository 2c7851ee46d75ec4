"""The TFLite file on TensorFlow Lite for Microcontrollers (TFLM), the runtime an MCU runs it in (NXP eIQ Neutron's
MCU runtime is TFLM with the NPU graph as a custom op): does the file run there, what does it compute compared with
desktop LiteRT, and how much RAM (the tensor arena) must the device reserve for it.

Written by hand because no library reports it: the ``tflite-micro`` Python package (TFLM's own interpreter, its
reference kernels, compiled for the host) has no getter for the arena; its ``print_allocations()`` writes
"Arena allocation total N bytes" to the C++ stderr, which is captured here at the file-descriptor level. N is the
smallest arena the interpreter accepts (checked by bisection in the tests).
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import numpy as np

from kdprune.errors import UserError
from kdprune.export.tflite_runner import TFLiteRunner


def _micro(data: bytes, arena: int):
    from tflite_micro.python.tflite_micro import runtime  # present: check_exports ran require_tflite()

    return runtime.Interpreter.from_bytes(data, arena_size=int(arena))


def _captured_stderr(fn) -> str:
    """What ``fn()`` writes to file descriptor 2 (C++ code's stderr, which Python's ``sys.stderr`` does not see)."""
    with tempfile.TemporaryFile() as tmp:
        saved = os.dup(2)
        try:
            os.dup2(tmp.fileno(), 2)
            fn()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        tmp.seek(0)
        return tmp.read().decode(errors="replace")


def tensor_arena_bytes(path: str | Path) -> int:
    """The tensor arena (bytes of RAM) TFLM needs to run the file: activations, scratch buffers and the interpreter's
    own structures, after its memory planner has shared buffers between tensors whose lifetimes do not overlap."""
    data = Path(path).read_bytes()
    big = max(64 << 20, 16 * len(data))
    try:
        it = _micro(data, big)
    except RuntimeError as e:
        raise UserError(f"{Path(path).name} does not load in TFLite Micro: {e}") from None
    text = _captured_stderr(it.print_allocations)
    m = re.search(r"Arena allocation total (\d+) bytes", text)
    if m is None:  # the package changed its report: our bug to fix, with what it printed
        raise RuntimeError(f"tflite-micro's print_allocations() gave no arena total: {text[-500:]!r}")
    return int(m.group(1))


def _output_tensors(path: str | Path) -> list[int]:
    """Subgraph 0's output tensor indices, in the order TFLM numbers its outputs."""
    from kdprune.export.flatbuffer import read

    g = read(path)[2].Subgraphs(0)
    return [int(g.Outputs(i)) for i in range(g.OutputsLength())]


class TFLMRunner(TFLiteRunner):
    """The file on TFLM's interpreter, with ``TFLiteRunner``'s interface (input quantization, named outputs,
    dequantization): only ``run_raw`` differs. TFLM's Python API has no signatures, so each output is found by its
    tensor index, which LiteRT's signature gives for the name."""

    def __init__(self, path: str | Path, *, output_names: list[str] | None = None, arena_bytes: int | None = None):
        super().__init__(path, 1, output_names=output_names)
        order = _output_tensors(path)
        self._micro_out = [order.index(int(d["index"])) for d in self._out]
        self.arena_bytes = int(arena_bytes or tensor_arena_bytes(path))
        try:
            self.micro = _micro(self.path.read_bytes(), self.arena_bytes)
        except RuntimeError as e:
            raise UserError(f"{self.path.name} does not run in TFLite Micro with a {self.arena_bytes:,}-byte arena: "
                            f"{e}") from None

    def run_raw(self, x: np.ndarray) -> list[np.ndarray]:
        self.micro.set_input(np.ascontiguousarray(x, dtype=self.input_dtype), 0)
        self.micro.invoke()
        return [np.asarray(self.micro.get_output(i)).copy() for i in self._micro_out]


def tflm_parity(path: str | Path, images: np.ndarray, *, output_names: list[str] | None = None,
                reference: TFLiteRunner | None = None) -> dict:
    """Runs ``images`` ((n, 3, H, W) float in [0, 1]) through the file in TFLM and in LiteRT's reference kernels (the
    ones kdprune scores the file with), and compares the raw int8 outputs: ``{"images", "arena_bytes", "exact",
    "within_1_lsb", "max_lsb"}`` (shares of output elements equal / within one quantization step, and the largest
    difference in steps). Measured on yolo11n files: bit-exact (once one-head attention's FULLY_CONNECTED is
    written as BATCH_MATMUL, ``tflite_fixes.activation_fc_to_batch_matmul``: that kernel rounds differently in the two).
    ``reference``: an already-built reference-kernel runner of the same file (the one the row was scored with), else
    one is built."""
    lite = reference or TFLiteRunner(path, 1, output_names=output_names, kernels="reference")
    if lite.kernels != "reference":
        raise ValueError("tflm_parity: the LiteRT side must run the reference kernels")
    micro = TFLMRunner(path, output_names=lite.output_names)
    same = close = total = worst = 0
    for i in range(len(images)):
        x = lite.quantize_input(images[i:i + 1])
        for a, b in zip(lite.run_raw(x), micro.run_raw(x)):
            d = np.abs(a.astype(np.int32) - b.astype(np.int32))
            same += int((d == 0).sum())
            close += int((d <= 1).sum())
            total += d.size
            worst = max(worst, int(d.max()))
    n = max(total, 1)
    return {"images": int(len(images)), "arena_bytes": micro.arena_bytes, "exact": round(same / n, 6),
            "within_1_lsb": round(close / n, 6), "max_lsb": worst}
