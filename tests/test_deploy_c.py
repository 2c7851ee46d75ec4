"""The C99 post-processing (kdprune/deploy/c/kdp_postprocess.c) against the host decode that scores the files
(kdprune.export.decode + ultralytics' NMS): compiled here with the flags a strict MCU project uses, driven on int8
outputs through ctypes. (Issue 37's first piece: the library alone; the generated kit and its check on the run's
TFLM outputs come next.)"""

from __future__ import annotations

import ctypes
import shutil
import subprocess

import numpy as np
import pytest
import torch

from kdprune.deploy import C_DIR

SRC = C_DIR / "kdp_postprocess.c"
FLAGS = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-O2"]


class Level(ctypes.Structure):
    _fields_ = [("box", ctypes.c_void_p), ("cls", ctypes.c_void_p), ("h", ctypes.c_int), ("w", ctypes.c_int),
                ("stride", ctypes.c_float), ("box_scale", ctypes.c_float), ("box_zero_point", ctypes.c_int32),
                ("cls_scale", ctypes.c_float), ("cls_zero_point", ctypes.c_int32)]


class Config(ctypes.Structure):
    _fields_ = [("nc", ctypes.c_int), ("reg_max", ctypes.c_int), ("nl", ctypes.c_int), ("conf", ctypes.c_float),
                ("iou", ctypes.c_float), ("max_det", ctypes.c_int)]


class Det(ctypes.Structure):
    _fields_ = [("x1", ctypes.c_float), ("y1", ctypes.c_float), ("x2", ctypes.c_float), ("y2", ctypes.c_float),
                ("score", ctypes.c_float), ("cls", ctypes.c_int32), ("anchor", ctypes.c_int32)]


class Stats(ctypes.Structure):
    _fields_ = [("anchors", ctypes.c_int), ("candidates", ctypes.c_int), ("kept", ctypes.c_int),
                ("truncated", ctypes.c_int)]


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    if shutil.which("gcc") is None:
        pytest.fail("gcc is needed to compile the C post-processing (it is on every supported machine)")
    d = tmp_path_factory.mktemp("c")
    obj = d / "kdp.o"
    subprocess.run(["gcc", *FLAGS, "-c", str(SRC), "-o", str(obj)], check=True, capture_output=True, text=True)
    undefined = subprocess.run(["nm", "-u", str(obj)], check=True, capture_output=True, text=True).stdout.split()
    assert not {"malloc", "free", "calloc", "realloc"} & set(undefined), undefined  # no dynamic allocation
    so = d / "libkdp.so"
    subprocess.run(["gcc", *FLAGS, "-fPIC", "-shared", str(SRC), "-o", str(so), "-lm"], check=True)
    return ctypes.CDLL(str(so))


def _outputs(seed: int, nc: int, reg_max: int, sizes=(8, 4, 2)):
    """Random int8 NHWC outputs per level with a few confident cells, and their (scale, zero point)."""
    rng = np.random.default_rng(seed)
    levels = []
    for s in sizes:
        box = rng.integers(-128, 128, (1, s, s, 4 * reg_max), dtype=np.int8)
        cls = rng.integers(-128, -40, (1, s, s, nc), dtype=np.int8)  # mostly below any threshold
        hot = rng.random((s, s)) < 0.3
        cls[0][hot] = rng.integers(-60, 128, (int(hot.sum()), nc), dtype=np.int8)
        levels.append((box, cls, (0.08, -3), (0.06, -20)))
    return levels


def _host(levels, strides, nc, reg_max, conf, iou, max_det):
    from kdprune.export.decode import decode, nms

    outs = []
    for box, cls, (bs, bz), (cs, cz) in levels:
        outs += [(box.astype(np.float32) - bz) * np.float32(bs), (cls.astype(np.float32) - cz) * np.float32(cs)]
    y = decode([torch.from_numpy(o) for o in outs], strides, nc=nc, reg_max=reg_max, channels_last=True)
    return nms(y, conf, iou, max_det)[0]


def _c(lib, levels, strides, nc, reg_max, conf, iou, max_det, cap=4096):
    arr = (Level * len(levels))()
    keep = []
    for i, ((box, cls, (bs, bz), (cs, cz)), s) in enumerate(zip(levels, strides)):
        b, c = np.ascontiguousarray(box[0]), np.ascontiguousarray(cls[0])
        keep += [b, c]
        arr[i] = Level(b.ctypes.data, c.ctypes.data, b.shape[0], b.shape[1], s, bs, bz, cs, cz)
    cfg = Config(nc, reg_max, len(levels), conf, iou, max_det)
    scratch, out, st = (Det * cap)(), (Det * max_det)(), Stats()
    n = lib.kdp_postprocess(ctypes.byref(cfg), arr, scratch, cap, out, ctypes.byref(st))
    rows = np.array([[d.x1, d.y1, d.x2, d.y2, d.score, d.cls] for d in out[:n]], np.float32).reshape(-1, 6)
    return rows, st


@pytest.mark.parametrize("seed,nc,reg_max,conf", [(0, 3, 16, 0.25), (1, 8, 16, 0.25), (2, 3, 16, 0.5),
                                                  (3, 1, 16, 0.1), (4, 4, 1, 0.25)])
def test_c_postprocessing_equals_the_host_decode(lib, seed, nc, reg_max, conf):
    """Same boxes (within 1e-3 px), classes, scores and order as the Python decode + ultralytics' NMS; most anchors
    are dropped by the int8 threshold before any float work."""
    levels, strides = _outputs(seed, nc, reg_max), [8.0, 16.0, 32.0]
    ref = _host(levels, strides, nc, reg_max, conf, 0.7, 300)
    got, st = _c(lib, levels, strides, nc, reg_max, conf, 0.7, 300)
    assert len(ref) > 3, "the case must produce detections to compare"
    assert got.shape == ref.shape
    assert np.array_equal(got[:, 5], ref[:, 5])
    assert np.abs(got[:, :4] - ref[:, :4]).max() < 1e-3 and np.abs(got[:, 4] - ref[:, 4]).max() < 1e-6
    assert st.anchors == 84 and st.kept == len(ref) and not st.truncated
    assert st.candidates < 0.5 * st.anchors  # skipped in the int8 domain


@pytest.mark.parametrize("scale,zp,conf", [(0.06, -20, 0.25), (0.1, 5, 0.5), (0.02, -128, 0.9), (0.5, 0, 0.001),
                                           (0.01, 0, 0.999)])
def test_int8_threshold_is_the_float_comparison(lib, scale, zp, conf):
    """For every int8 value, "q >= threshold" is exactly "sigmoid(dequantized q) > conf" as torch computes it in
    float32 (128: no value passes)."""
    lib.kdp_int8_threshold.argtypes = [ctypes.c_float, ctypes.c_int32, ctypes.c_float]
    t = lib.kdp_int8_threshold(scale, zp, conf)
    q = torch.arange(-128, 128, dtype=torch.float32)
    passes = (torch.sigmoid((q - zp) * torch.tensor(scale, dtype=torch.float32)) > conf).numpy()
    assert np.array_equal(passes, np.arange(-128, 128) >= t)


def test_bad_arguments_return_minus_one(lib):
    cfg = Config(3, 16, 1, 1.5, 0.7, 300)  # conf outside (0, 1)
    arr, scratch, out = (Level * 1)(), (Det * 4)(), (Det * 300)()
    assert lib.kdp_postprocess(ctypes.byref(cfg), arr, scratch, 4, out, None) == -1


def test_deploy_cli_refuses_bad_input_with_one_line_and_writes_nothing(tmp_path):
    """A run dir without a TFLite file, a threshold outside (0, 1): one line, exit 2, no deploy/ left behind."""
    from tests.conftest import run_cli

    p = run_cli(str(tmp_path), module="kdprune.deploy")
    assert p.returncode == 2 and "no export/model_int8.tflite" in p.stderr and "Traceback" not in p.stderr
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "model_int8.tflite").write_bytes(b"not a flatbuffer")
    (tmp_path / "summary.json").write_text("{}")
    p = run_cli(str(tmp_path), "--conf", "1.5", module="kdprune.deploy")
    assert p.returncode == 2 and "--conf=1.5: must be in (0, 1)" in p.stderr
    assert not (tmp_path / "deploy").exists() and not list(tmp_path.glob(".deploy-*"))


def test_resolver_registers_exactly_the_files_operators():
    from kdprune.deploy.kit import resolver
    from kdprune.errors import UserError

    assert resolver(["CONV_2D", "LOGISTIC"]) == ["  resolver.AddConv2D();", "  resolver.AddLogistic();"]
    with pytest.raises(UserError, match="cannot register in TFLite Micro: NEW_OP"):
        resolver(["CONV_2D", "NEW_OP"])
