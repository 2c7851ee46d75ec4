"""The kit's C post-processing compiled for this machine (gcc) and called through ctypes: how kdprune checks that the
C code computes what the report scored (``kdprune.deploy.check``, the tests, ``bench/deploy_kit.py``).

Written by hand: no library drives a C99 source from Python without a build system; ctypes and gcc are enough.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from kdprune.deploy import C_DIR
from kdprune.errors import UserError

SRC = C_DIR / "kdp_postprocess.c"
# what a strict MCU project compiles with: a warning is an error
FLAGS = ("-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic")


class Level(ctypes.Structure):
    _fields_ = [("box", ctypes.c_void_p), ("cls", ctypes.c_void_p), ("h", ctypes.c_int), ("w", ctypes.c_int),
                ("stride", ctypes.c_float), ("box_scale", ctypes.c_float), ("box_zero_point", ctypes.c_int32),
                ("cls_scale", ctypes.c_float), ("cls_zero_point", ctypes.c_int32)]


class Config(ctypes.Structure):
    _fields_ = [("nc", ctypes.c_int), ("reg_max", ctypes.c_int), ("nl", ctypes.c_int), ("conf", ctypes.c_float),
                ("iou", ctypes.c_float), ("max_det", ctypes.c_int), ("multi_label", ctypes.c_int),
                ("end2end", ctypes.c_int)]


class Det(ctypes.Structure):
    _fields_ = [("x1", ctypes.c_float), ("y1", ctypes.c_float), ("x2", ctypes.c_float), ("y2", ctypes.c_float),
                ("score", ctypes.c_float), ("cls", ctypes.c_int32), ("anchor", ctypes.c_int32)]


class Stats(ctypes.Structure):
    _fields_ = [("anchors", ctypes.c_int), ("candidates", ctypes.c_int), ("kept", ctypes.c_int),
                ("truncated", ctypes.c_int)]


def compile_library(out_dir: str | Path, *, opt: str = "-O2") -> Path:
    """Compile ``kdp_postprocess.c`` into ``out_dir/libkdp.so`` (and ``kdp_postprocess.o``, whose undefined symbols
    ``undefined_symbols`` reads) with ``FLAGS``; a compiler warning fails it."""
    if shutil.which("gcc") is None:
        raise UserError("gcc is not on PATH: install it (Debian: apt install gcc) to check the C post-processing")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run(["gcc", *FLAGS, opt, "-c", str(SRC), "-o", str(out / "kdp_postprocess.o")], check=True,
                   capture_output=True, text=True)
    so = out / "libkdp.so"
    subprocess.run(["gcc", *FLAGS, opt, "-fPIC", "-shared", str(SRC), "-o", str(so), "-lm"], check=True,
                   capture_output=True, text=True)
    return so


def undefined_symbols(obj: str | Path) -> set[str]:
    """The symbols an object file needs from elsewhere (``nm -u``): what it calls in the C library."""
    return set(subprocess.run(["nm", "-u", str(obj)], check=True, capture_output=True, text=True).stdout.split())


class HostPostprocess:
    """``kdp_postprocess`` from a compiled library. ``quant``: per output ``(scale, zero_point)`` in the order of the
    raw outputs ``box0, cls0, box1, ...``; ``capacity``: scratch entries (candidates before NMS); ``end2end``: the
    file is a one-to-one (NMS-free) head: top-k instead of NMS."""

    def __init__(self, so: str | Path, *, strides: Sequence[float], nc: int, reg_max: int,
                 quant: Sequence[tuple[float, int]], capacity: int, end2end: bool = False):
        self.lib = ctypes.CDLL(str(so))
        self.lib.kdp_int8_threshold.argtypes = [ctypes.c_float, ctypes.c_int32, ctypes.c_float]
        self.strides, self.nc, self.reg_max = [float(s) for s in strides], int(nc), int(reg_max)
        self.quant = [(float(s), int(z)) for s, z in quant]
        self.scratch = (Det * int(capacity))()
        self.capacity, self.end2end = int(capacity), bool(end2end)

    def threshold(self, scale: float, zero_point: int, conf: float) -> int:
        return int(self.lib.kdp_int8_threshold(scale, zero_point, conf))

    def __call__(self, raw: Sequence[np.ndarray], *, conf: float, iou: float, max_det: int,
                 multi_label: bool = False) -> tuple[np.ndarray, Stats]:
        """``raw``: the int8 NHWC outputs of one image (batch 1). Returns the boxes as ultralytics' NMS (or top-k)
        gives them, ``(N, 6)`` float32 ``x1, y1, x2, y2, score, class`` best first, and the library's ``Stats``."""
        nl = len(self.strides)
        levels, keep = (Level * nl)(), []
        for i in range(nl):
            b, c = (np.ascontiguousarray(raw[2 * i + k][0], dtype=np.int8) for k in (0, 1))
            keep += [b, c]  # alive until the call returns
            (bs, bz), (cs, cz) = self.quant[2 * i], self.quant[2 * i + 1]
            levels[i] = Level(b.ctypes.data, c.ctypes.data, b.shape[0], b.shape[1], self.strides[i], bs, bz, cs, cz)
        cfg = Config(self.nc, self.reg_max, nl, conf, iou, max_det, int(multi_label), int(self.end2end))
        out, st = (Det * max_det)(), Stats()
        n = self.lib.kdp_postprocess(ctypes.byref(cfg), levels, self.scratch, self.capacity, out, ctypes.byref(st))
        if n < 0:
            raise ValueError(f"kdp_postprocess refused its arguments (conf={conf}, iou={iou}, max_det={max_det})")
        rows = np.array([[d.x1, d.y1, d.x2, d.y2, d.score, d.cls] for d in out[:n]], np.float32).reshape(-1, 6)
        return rows, st
