"""Full-integer INT8 TFLite export (kdprune.export.tflite): onnx2tf + TFLiteConverter, checked on the flatbuffer and
against onnxruntime. Needs the 'tflite' extra, which `make test` installs: without it these tests fail, not skip."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import numpy as np
import pytest

from kdprune.errors import UserError
from kdprune.export import tflite as T
from kdprune.export import tflite_check as C

IMGSZ = 64
NAMES = ["box0", "cls0", "box1", "cls1", "box2", "cls2"]


def smooth_images(n: int, size: int, seed: int) -> np.ndarray:
    """Image-like inputs in [0, 1]: blocky low-frequency colour fields plus a little noise (not pure noise)."""
    rng = np.random.default_rng(seed)
    lo = rng.random((n, 3, size // 8, size // 8), dtype=np.float32)
    noise = rng.random((n, 3, size, size), dtype=np.float32)
    img = 0.75 * np.kron(lo, np.ones((1, 1, 8, 8), np.float32)) + 0.25 * noise
    return np.clip(img, 0.0, 1.0).astype(np.float32)


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory):
    """yolov8n (nc=3), BN fused, re-initialised so activations neither vanish nor explode through ~60 layers (at
    ultralytics' init the head outputs are constant: the test would compare constants), exported at 64 px."""
    import torch
    from torch import nn
    from ultralytics.nn.tasks import DetectionModel

    from kdprune.yolo.rawhead import RawHeadModel

    torch.manual_seed(0)
    model = DetectionModel("yolov8n.yaml", nc=3, verbose=False).eval()
    model.fuse()
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, 0.0, 1.6 / math.sqrt(m.weight[0].numel()))
            if m.bias is not None:
                nn.init.uniform_(m.bias, -0.2, 0.2)
    head = model.model[-1]
    with torch.no_grad():
        for seq in (*head.cv2, *head.cv3):  # logit-sized outputs (a few units), like a trained head
            seq[-1].weight.mul_(0.3)
    raw = RawHeadModel(model).eval()
    path = tmp_path_factory.mktemp("tflite") / "tiny.onnx"
    torch.onnx.export(raw, torch.rand(1, 3, IMGSZ, IMGSZ), str(path), dynamo=False, opset_version=17,
                      input_names=["images"], output_names=raw.output_names())
    return path


def _convert(onnx_path, out_dir, per_channel):
    """Conversion with the network cut off (any requests call fails the test) and a clean output dir."""
    import requests

    def no_network(*a, **k):
        raise AssertionError(f"network access during conversion: {a[:2]}")

    out = out_dir / ("pc.tflite" if per_channel else "pt.tflite")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(requests.Session, "request", no_network)
        t0 = time.perf_counter()
        T.onnx_to_tflite_int8(onnx_path, out, smooth_images(16, IMGSZ, seed=1), per_channel=per_channel)
        print(f"\nconversion (per_channel={per_channel}): {time.perf_counter() - t0:.1f} s, "
              f"{out.stat().st_size / 1e6:.2f} MB")
    return out


@pytest.fixture(scope="module")
def tflite_pc(onnx_model, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("pc")
    out = _convert(onnx_model, out_dir, per_channel=True)
    assert sorted(os.listdir(out_dir)) == ["pc.tflite"]  # intermediates stay in the temp work dir
    return out


@pytest.fixture(scope="module")
def tflite_pt(onnx_model, tmp_path_factory):
    return _convert(onnx_model, tmp_path_factory.mktemp("pt"), per_channel=False)


def _io_types(path):
    schema, _, model = C._read_model(path)
    g = model.Subgraphs(0)
    ins = [g.Tensors(g.Inputs(i)).Type() for i in range(g.InputsLength())]
    outs = [g.Tensors(g.Outputs(i)).Type() for i in range(g.OutputsLength())]
    return schema, ins, outs


def test_fully_int8(tflite_pc):
    problems = T.check_fully_int8(tflite_pc)
    ops = T.tflite_ops(tflite_pc)
    print("ops:", dict(ops))
    assert problems == []
    schema, ins, outs = _io_types(tflite_pc)
    assert ins == [schema.TensorType.INT8] and outs == [schema.TensorType.INT8] * 6
    assert ops["CONV_2D"] == 63 and "DEQUANTIZE" not in ops and not any(o.startswith("CUSTOM") for o in ops)
    runner = T.TFLiteRunner(tflite_pc)
    assert runner.input_dtype == np.int8 and runner.input_shape == (1, IMGSZ, IMGSZ, 3)
    scale, zp = runner.input_quant
    assert abs(scale - 1 / 255) < 1e-4 and zp == -128  # [0, 1] images map onto the whole int8 range


def test_matches_onnxruntime(onnx_model, tflite_pc):
    import onnxruntime as ort

    runner = T.TFLiteRunner(tflite_pc)
    assert runner.output_names == NAMES
    sess = ort.InferenceSession(str(onnx_model), providers=["CPUExecutionProvider"])
    imgs = smooth_images(4, IMGSZ, seed=2)  # not the calibration images
    refs, gots = {n: [] for n in NAMES}, {n: [] for n in NAMES}
    for i in range(len(imgs)):
        ref = sess.run(NAMES, {"images": imgs[i:i + 1]})
        got = runner(imgs[i:i + 1])
        for name, r, g in zip(NAMES, ref, got):
            assert g.dtype == np.float32 and g.shape == r.shape, (name, g.shape, r.shape)
            refs[name].append(r.ravel())
            gots[name].append(g.ravel())
    stats = {}
    for name, (scale, _) in zip(NAMES, runner.output_quant):
        r, g = np.concatenate(refs[name]), np.concatenate(gots[name])
        steps = np.abs(g - r) / scale
        stats[name] = (float(np.std(r) / scale), float(np.median(steps)), float(np.percentile(steps, 90)),
                       float(steps.max()), float(np.sqrt(np.mean((g - r) ** 2)) / np.std(r)),
                       float(np.corrcoef(r, g)[0, 1]))
        print(f"{name}: ref std {stats[name][0]:.0f} steps; |err| in quant steps median {stats[name][1]:.2f} "
              f"p90 {stats[name][2]:.2f} max {stats[name][3]:.2f}; rmse/std {stats[name][4]:.3f} "
              f"corr {stats[name][5]:.4f}")
    # Measured on this random-weight net (60 int8 layers; errors compound more than in a trained net): median
    # 1.7-4.2 steps, p90 4.5-9.6, max <= 18, rmse/std 0.10-0.13, corr >= 0.995. A wrong layout or scale gives
    # rmse/std ~1.
    for name, (std_steps, med, p90, mx, nrmse, corr) in stats.items():
        assert std_steps > 10, name  # the outputs really vary: not a comparison between constants
        assert med <= 6.0 and p90 <= 14.0 and mx <= 32.0, name
        assert nrmse <= 0.2 and corr >= 0.98, name


def test_weight_scale_granularity(tflite_pc, tflite_pt):
    pc, pt = T.conv_weight_scales(tflite_pc), T.conv_weight_scales(tflite_pt)
    assert len(pc) == len(pt) == 63
    assert all(r["n_scales"] == r["out_channels"] for r in pc)
    assert sum(r["out_channels"] > 1 for r in pc) == 63
    assert all(r["n_scales"] == 1 for r in pt)
    assert T.check_fully_int8(tflite_pt) == []


def test_check_flags_float_models(tmp_path):
    """A float TFLite and a dynamic-range one (int8 weights, float activations) are both flagged."""
    import tensorflow as tf

    class Tiny(tf.Module):
        def __init__(self):
            self.w = tf.constant(np.random.default_rng(0).normal(size=(3, 3, 3, 64)).astype(np.float32))

        @tf.function(input_signature=[tf.TensorSpec([1, 8, 8, 3], tf.float32)])
        def __call__(self, x):
            return tf.nn.relu(tf.nn.conv2d(x, self.w, 1, "SAME") + 0.1)

    m = Tiny()
    conv = tf.lite.TFLiteConverter.from_concrete_functions([m.__call__.get_concrete_function()], m)
    (tmp_path / "f32.tflite").write_bytes(conv.convert())
    conv.optimizations = [tf.lite.Optimize.DEFAULT]  # dynamic range: weights int8, activations float
    (tmp_path / "dr.tflite").write_bytes(conv.convert())

    f32 = T.check_fully_int8(tmp_path / "f32.tflite")
    assert any("model input" in p and "FLOAT32" in p for p in f32)
    assert any("CONV_2D" in p and "weights" in p and "FLOAT32" in p for p in f32)
    dr = T.check_fully_int8(tmp_path / "dr.tflite")
    print("dynamic-range problems:", dr[:4])
    assert dr and any("FLOAT32" in p for p in dr)


def test_require_tflite_message(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "onnx2tf" else real(n, *a))
    with pytest.raises(UserError) as e:
        T.require_tflite()
    msg = str(e.value)
    assert "\n" not in msg and "onnx2tf" in msg and "pip install -e '.[tflite]'" in msg


def _float_island(src, dst):
    """``src`` with one operator moved into float: DEQUANTIZE -> the op on float tensors -> QUANTIZE, int8 on both
    sides, so the model's inputs and outputs stay int8 (what a converter leaves where it cannot quantize an op)."""
    import flatbuffers

    schema = C._schema()
    m = schema.ModelT.InitFromPackedBuf(Path(src).read_bytes(), 0)
    names = C._enum_names(schema.BuiltinOperator)
    g = m.subgraphs[0]

    def code(builtin):
        for i, c in enumerate(m.operatorCodes):
            if max(c.builtinCode, c.deprecatedBuiltinCode) == builtin:
                return i
        c = schema.OperatorCodeT()
        c.builtinCode, c.deprecatedBuiltinCode, c.version = builtin, min(builtin, 127), 1
        m.operatorCodes.append(c)
        return len(m.operatorCodes) - 1

    def float_copy(t, suffix):
        f = schema.TensorT()
        name = t.name.decode() if isinstance(t.name, bytes) else t.name
        f.shape, f.type, f.name, f.buffer = t.shape, schema.TensorType.FLOAT32, name + suffix, 0
        g.tensors.append(f)
        return len(g.tensors) - 1

    k, op = next((k, o) for k, o in enumerate(g.operators)
                 if names[max(m.operatorCodes[o.opcodeIndex].builtinCode,
                              m.operatorCodes[o.opcodeIndex].deprecatedBuiltinCode)] == "LOGISTIC")
    x, y = int(op.inputs[0]), int(op.outputs[0])
    xf, yf = float_copy(g.tensors[x], "/float_in"), float_copy(g.tensors[y], "/float_out")
    deq, q = schema.OperatorT(), schema.OperatorT()
    deq.opcodeIndex, deq.inputs, deq.outputs = code(schema.BuiltinOperator.DEQUANTIZE), [x], [xf]
    q.opcodeIndex, q.inputs, q.outputs = code(schema.BuiltinOperator.QUANTIZE), [yf], [y]
    op.inputs, op.outputs = [xf], [yf]
    g.operators[k:k + 1] = [deq, op, q]
    b = flatbuffers.Builder(0)
    b.Finish(m.Pack(b), file_identifier=b"TFL3")
    Path(dst).write_bytes(b.Output())
    return dst


def test_check_flags_a_float_island_inside_an_int8_model(tflite_pc, tmp_path):
    """int8 in and out, one op in float in between: the file is valid and runs, and is not fully INT8."""
    island = _float_island(tflite_pc, tmp_path / "island.tflite")
    ops, before = T.tflite_ops(island), T.tflite_ops(tflite_pc)
    assert ops["DEQUANTIZE"] == before["DEQUANTIZE"] + 1 and ops["QUANTIZE"] == before["QUANTIZE"] + 1
    _, ins, outs = _io_types(island)
    assert set(ins + outs) == {C._schema().TensorType.INT8}  # the model's I/O alone would pass
    out = T.TFLiteRunner(island)(smooth_images(1, IMGSZ, seed=2))  # a valid model, not a broken file
    assert len(out) == 6
    problems = T.check_fully_int8(island)
    assert any("DEQUANTIZE" in p and "FLOAT32" in p for p in problems), problems
    assert any("LOGISTIC" in p and "FLOAT32" in p for p in problems), problems
