"""The C99 post-processing (kdprune/deploy/c/kdp_postprocess.c) against the host decode that scores the files
(kdprune.export.decode + ultralytics' NMS): compiled here with the flags a strict MCU project uses, driven on int8
outputs through ctypes. The generated kit, and the library on a trained run's TFLite Micro outputs against its
report: tests/test_quant_train.py."""

from __future__ import annotations

import ctypes
import shutil

import numpy as np
import pytest
import torch

from kdprune.deploy.host import Config, Det, HostPostprocess, Level, compile_library, undefined_symbols


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    """The library compiled with -Werror; its object file references no allocator."""
    if shutil.which("gcc") is None:
        pytest.fail("gcc is needed to compile the C post-processing (it is on every supported machine)")
    d = tmp_path_factory.mktemp("c")
    so = compile_library(d)
    undefined = undefined_symbols(d / "kdp_postprocess.o")
    assert "expf" in undefined  # the symbol table is read (the library does call libm)
    assert not {"malloc", "free", "calloc", "realloc"} & undefined, undefined  # no dynamic allocation
    return so


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


def _host(levels, strides, nc, reg_max, conf, iou, max_det, multi_label=False, end2end=False):
    from kdprune.export.decode import decode, nms

    outs = []
    for box, cls, (bs, bz), (cs, cz) in levels:
        outs += [(box.astype(np.float32) - bz) * np.float32(bs), (cls.astype(np.float32) - cz) * np.float32(cs)]
    y = decode([torch.from_numpy(o) for o in outs], strides, nc=nc, reg_max=reg_max, channels_last=True,
               end2end=end2end, max_det=max_det)
    return nms(y, conf, iou, max_det, multi_label=multi_label, end2end=end2end)[0]


def _c(lib, levels, strides, nc, reg_max, conf, iou, max_det, cap=4096, multi_label=False, end2end=False):
    quant = [q for box, cls, bq, cq in levels for q in (bq, cq)]
    post = HostPostprocess(lib, strides=strides, nc=nc, reg_max=reg_max, quant=quant, capacity=cap, end2end=end2end)
    return post([a for box, cls, _, _ in levels for a in (box, cls)], conf=conf, iou=iou, max_det=max_det,
                multi_label=multi_label)


@pytest.mark.parametrize("seed,nc,reg_max,conf,multi", [(0, 3, 16, 0.25, 0), (1, 8, 16, 0.25, 0), (2, 3, 16, 0.5, 0),
                                                        (3, 1, 16, 0.1, 0), (4, 4, 1, 0.25, 0), (5, 4, 16, 0.25, 1),
                                                        (6, 8, 1, 0.3, 1)])
def test_c_postprocessing_equals_the_host_decode(lib, seed, nc, reg_max, conf, multi):
    """Same boxes (within 1e-3 px), classes, scores and order as the Python decode + ultralytics' NMS (best class
    per anchor, its predictor; with ``multi_label``, every class over conf, its validator); most anchors are dropped
    by the int8 threshold before any float work."""
    levels, strides = _outputs(seed, nc, reg_max), [8.0, 16.0, 32.0]
    ref = _host(levels, strides, nc, reg_max, conf, 0.7, 300, multi_label=bool(multi))
    got, st = _c(lib, levels, strides, nc, reg_max, conf, 0.7, 300, multi_label=bool(multi))
    assert len(ref) > 3, "the case must produce detections to compare"
    if multi:  # some anchor gives boxes of two classes: the mode is exercised
        single = _host(levels, strides, nc, reg_max, conf, 0.7, 300)
        assert len(ref) > len(single)
    assert got.shape == ref.shape
    assert np.array_equal(got[:, 5], ref[:, 5])
    assert np.abs(got[:, :4] - ref[:, :4]).max() < 1e-3 and np.abs(got[:, 4] - ref[:, 4]).max() < 1e-6
    assert st.anchors == 84 and st.kept == len(ref) and not st.truncated
    assert st.candidates < 0.5 * st.anchors  # skipped in the int8 domain


@pytest.mark.parametrize("seed,nc,conf,max_det", [(10, 4, 0.25, 300), (11, 8, 0.3, 300), (12, 4, 0.25, 5),
                                                  (13, 3, 0.05, 7)])
def test_c_top_k_equals_the_host_decode_of_an_nms_free_head(lib, seed, nc, conf, max_det):
    """YOLO26's one-to-one head (``end2end``, reg_max 1, x1y1x2y2 distances): the C library's top-k (the max_det
    anchors with the best class score, then the max_det best (anchor, class) pairs over conf) gives the same boxes,
    scores, classes and order as ``kdprune.export.decode``'s top-k + ultralytics' end-to-end threshold; with a small
    max_det the anchor cut-off decides, and the rows are not what NMS would give (the mode is exercised). Ties are
    frequent here (int8 scores): they break the same way on both sides."""
    levels, strides = _outputs(seed, nc, 1), [8.0, 16.0, 32.0]
    ref = _host(levels, strides, nc, 1, conf, 0.7, max_det, end2end=True)
    got, st = _c(lib, levels, strides, nc, 1, conf, 0.7, max_det, end2end=True)
    assert len(ref) >= min(max_det, 4), "the case must produce detections to compare"
    assert got.shape == ref.shape
    assert np.array_equal(got[:, 5], ref[:, 5])
    assert np.abs(got[:, :4] - ref[:, :4]).max() < 1e-3 and np.abs(got[:, 4] - ref[:, 4]).max() < 1e-6
    assert st.kept == len(ref) and not st.truncated
    scores = got[:, 4]
    assert (np.diff(scores) <= 0).all() and len(np.unique(scores)) < len(scores)  # best first, with ties
    anchors_per_class = {}
    for row in got:  # an anchor may appear once per class: no suppression between a box and itself
        anchors_per_class.setdefault(tuple(row[:4]), set()).add(int(row[5]))
    if max_det >= 10:  # more rows than the NMS mode's best class per anchor: the top-k mode ran
        assert any(len(v) > 1 for v in anchors_per_class.values())
        assert len(got) > len(_c(lib, levels, strides, nc, 1, conf, 0.7, max_det)[0])
    else:  # more anchors over conf than max_det: the cut-off by the anchors' best score decided
        assert st.candidates > max_det and len(got) == max_det


@pytest.mark.parametrize("scale,zp,conf", [(0.06, -20, 0.25), (0.1, 5, 0.5), (0.02, -128, 0.9), (0.5, 0, 0.001),
                                           (0.01, 0, 0.999)])
def test_int8_threshold_is_the_float_comparison(lib, scale, zp, conf):
    """For every int8 value, "q >= threshold" is exactly "sigmoid(dequantized q) > conf" as torch computes it in
    float32 (128: no value passes)."""
    t = HostPostprocess(lib, strides=[8.0], nc=1, reg_max=1, quant=[], capacity=1).threshold(scale, zp, conf)
    q = torch.arange(-128, 128, dtype=torch.float32)
    passes = (torch.sigmoid((q - zp) * torch.tensor(scale, dtype=torch.float32)) > conf).numpy()
    assert np.array_equal(passes, np.arange(-128, 128) >= t)


def test_bad_arguments_return_minus_one(lib):
    cfg = Config(3, 16, 1, 1.5, 0.7, 300, 0, 0)  # conf outside (0, 1)
    arr, scratch, out = (Level * 1)(), (Det * 4)(), (Det * 300)()
    assert ctypes.CDLL(str(lib)).kdp_postprocess(ctypes.byref(cfg), arr, scratch, 4, out, None) == -1


ONNX_LIKE = bytes(range(256)) * 8  # bytes whose flatbuffer offsets point past the end


def test_deploy_cli_refuses_bad_input_with_one_line_and_writes_nothing(tmp_path):
    """A run dir without a TFLite file, a threshold outside (0, 1): one line, exit 2, no deploy/ left behind."""
    from tests.conftest import run_main

    p = run_main(str(tmp_path), module="kdprune.deploy")
    assert p.returncode == 2 and "no export/model_int8.tflite" in p.stderr and "Traceback" not in p.stderr
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "model_int8.tflite").write_bytes(b"not a flatbuffer")
    (tmp_path / "summary.json").write_text("{}")
    p = run_main(str(tmp_path), "--conf", "1.5", module="kdprune.deploy")
    assert p.returncode == 2 and "--conf=1.5: must be in (0, 1)" in p.stderr
    p = run_main(str(tmp_path), module="kdprune.deploy")  # a file that is not a TFLite flatbuffer
    assert p.returncode == 2 and "not a TFLite file" in p.stderr and "Traceback" not in p.stderr
    data = bytearray(ONNX_LIKE)
    (tmp_path / "export" / "model_int8.tflite").write_bytes(bytes(data[:4]) + b"TFL3" + bytes(data[8:]))
    p = run_main(str(tmp_path), module="kdprune.deploy")  # the identifier, then garbage offsets
    assert p.returncode == 2 and "damaged TFLite file" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "deploy").exists() and not list(tmp_path.glob(".deploy-*"))


def test_resolver_registers_exactly_the_files_operators():
    from kdprune.deploy.kit import resolver
    from kdprune.errors import UserError

    assert resolver(["CONV_2D", "LOGISTIC"]) == ["  resolver.AddConv2D();", "  resolver.AddLogistic();"]
    with pytest.raises(UserError, match="cannot register in TFLite Micro: NEW_OP"):
        resolver(["CONV_2D", "NEW_OP"])
