"""Full-integer INT8 TFLite export (for TFLite-based NPUs such as NXP eIQ Neutron) and a LiteRT runner.

Route: fp32 ONNX -> ``onnxscript.optimizer`` (constant folding: the TorchScript exporter leaves Shape/Gather/Slice
chains for ``chunk`` that onnx2tf cannot size) -> ``onnx2tf.convert`` (a tf_keras model, NHWC, nothing saved) ->
``tf.lite.TFLiteConverter`` with a representative dataset, ``TFLITE_BUILTINS_INT8`` only, int8 input and outputs.

Scales: the activation ranges are re-calibrated from ``calib``; QAT scales of a QDQ ONNX are *not* honoured.
onnx2tf 1.29 (``ops/QuantizeLinear.py``) turns a QuantizeLinear that feeds DequantizeLinear into an identity and
``ops/DequantizeLinear.py`` passes an already "dequantized" input through, so a QDQ graph becomes the plain float
graph (no ``tf.quantization.fake_quant_*`` op that the converter could honour). Convert the fp32 ONNX of the
QAT-trained weights and calibrate with real images; weight scales are recomputed by the converter (symmetric
max-abs, per output channel or, with ``per_channel=False``, per tensor).

TensorFlow, onnx2tf and LiteRT are imported lazily: the rest of kdprune never pays for them. Install them with the
``tflite`` extra; onnx2tf 1.29 and tf-keras hard-pin conflicting versions (protobuf 4, numpy 1.26, ``tensorflow``),
so those two go in with ``--no-deps`` (see the Makefile).
"""

from __future__ import annotations

import collections
import contextlib
import importlib.util
import io
import os
import random
import re
import tempfile
import warnings
from pathlib import Path

import numpy as np

from kdprune.errors import UserError

_INSTALL_HINT = ("install the 'tflite' extra: pip install -e '.[tflite]' && "
                 "pip install --no-deps onnx2tf==1.29.24 tf-keras==2.21.0")

# Ops whose input 1 is a weight (int8 in a full-integer model) and input 2 a bias (int32).
_WEIGHT_OPS = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV", "CONV_3D"}


def require_tflite() -> None:
    """Raise a one-line ``UserError`` unless TensorFlow, tf-keras, onnx2tf and LiteRT are importable (no import)."""
    missing = [m for m in ("tensorflow", "tf_keras", "onnx2tf", "onnx_graphsurgeon", "ai_edge_litert")
               if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(f"TFLite export needs {', '.join(missing)}: {_INSTALL_HINT}")


def _import_tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # quiets TF's C++ info logs if TF is not imported yet
    import tensorflow as tf

    return tf


def _import_onnx2tf():
    """onnx2tf seeds Python's, NumPy's and TF's global RNGs at import; keep the caller's RNG state."""
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        import onnx2tf
        import onnx2tf.onnx2tf as o2t_main
        import onnx2tf.utils.common_functions as o2t_common
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return onnx2tf, o2t_main, o2t_common


@contextlib.contextmanager
def _offline_sample_data(nhwc: np.ndarray):
    """onnx2tf fetches sample images from GitHub (``download_test_image_data``) for its ONNX-vs-TF shape checks of
    a 4D RGB input: hand it our calibration images instead, so nothing goes to the network."""
    _, o2t_main, o2t_common = _import_onnx2tf()
    saved = o2t_main.download_test_image_data, o2t_common.download_test_image_data

    def local_data() -> np.ndarray:
        return nhwc.copy()

    o2t_main.download_test_image_data = o2t_common.download_test_image_data = local_data
    try:
        yield
    finally:
        o2t_main.download_test_image_data, o2t_common.download_test_image_data = saved


def _fold_constants(src: Path, dst: Path) -> list[str]:
    """Constant-fold the exported graph (Shape->Gather->Slice chains become constant Slices, Identity goes away),
    keeping input/output names. Returns the output names."""
    import onnx
    from onnxscript import optimizer

    model = onnx.load(str(src))
    model = optimizer.optimize(model)
    # Node names become TF variable scopes; TorchScript's "/model.10/m/m.0/attn/pe/conv/Conv" is not a valid root
    # scope (must match ^[A-Za-z0-9.][A-Za-z0-9_.\\/>-]*$), and saving the TF graph then fails (YOLO11's depthwise
    # convs hold variables). Tensor names, and so the outputs' names, are left alone.
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):
        name = re.sub(r"[^A-Za-z0-9_./>-]", "_", node.name).lstrip("/_.>-") or f"{node.op_type}_{i}"
        if name in seen:
            name = f"{name}_{i}"
        seen.add(name)
        node.name = name
    onnx.save(model, str(dst))
    return [o.name for o in model.graph.output]


def onnx_to_tflite_int8(onnx_path: str | Path, out_path: str | Path, calib: np.ndarray, *, per_channel: bool = True,
                        work_dir: str | Path | None = None) -> Path:
    """Convert a batch-1, static-size fp32 ONNX (one NCHW float image input in [0, 1]) to a full-integer INT8 TFLite
    file at ``out_path``: int8 input (NHWC, scale ~1/255, zero point -128) and int8 outputs (NHWC), int8 weights
    (per output channel, or one scale per tensor with ``per_channel=False``), int32 biases, no float operator.

    ``calib``: ``(N, 3, H, W)`` float32 images in [0, 1] (the representative dataset; use real images).
    The signature ``serving_default`` keeps the ONNX input and output names; ``TFLiteRunner`` maps by them.
    ``work_dir``: where onnx2tf's intermediate files go (a temp dir, removed afterwards, when None).
    """
    require_tflite()
    onnx_path, out_path = Path(onnx_path), Path(out_path)
    calib = np.asarray(calib, dtype=np.float32)
    if calib.ndim != 4 or calib.shape[1] != 3 or len(calib) == 0:
        raise ValueError(f"onnx_to_tflite_int8: calib must be (N, 3, H, W) float32 images, got {calib.shape}")
    if calib.min() < 0.0 or calib.max() > 1.0:
        raise ValueError("onnx_to_tflite_int8: calib images must be in [0, 1]")
    calib_nhwc = np.ascontiguousarray(calib.transpose(0, 2, 3, 1))

    tmp = None
    if work_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="kdprune-tflite-")
        work = Path(tmp.name)
    else:
        work = Path(work_dir)
        work.mkdir(parents=True, exist_ok=True)
    try:
        tf = _import_tf()
        onnx2tf, _, _ = _import_onnx2tf()
        # onnx2tf rewrites the ONNX it is given in place (op renaming): it only ever sees our folded copy.
        folded = work / "folded.onnx"
        names = _fold_constants(onnx_path, folded)
        with _offline_sample_data(calib_nhwc):
            try:
                model = onnx2tf.convert(
                    input_onnx_file_path=str(folded), output_folder_path=str(work / "onnx2tf"),
                    disable_model_save=True, not_use_onnxsim=True, non_verbose=True, verbosity="error",
                    onnxruntime_output_memmap_dir=str(work / "ort_memmap"))
            except SystemExit as e:  # onnx2tf reports unsupported graphs with sys.exit(1)
                raise RuntimeError(f"onnx2tf could not convert {onnx_path} (exit {e.code})") from None
        in_shape = tuple(model.inputs[0].shape)
        if len(model.inputs) != 1 or len(in_shape) != 4 or in_shape[-1] != 3:
            raise ValueError(f"onnx_to_tflite_int8: expected one NHWC RGB input after onnx2tf, got {in_shape}")
        if tuple(calib_nhwc.shape[1:]) != in_shape[1:]:
            raise ValueError(f"onnx_to_tflite_int8: calib images are {calib.shape[2:]} but the model takes "
                             f"{in_shape[1:3]}")
        if len(model.outputs) != len(names):
            raise RuntimeError(f"onnx2tf produced {len(model.outputs)} outputs for the ONNX's {len(names)}")

        # onnx2tf keeps the ONNX output order in model.outputs; a dict output puts the ONNX names in the TFLite
        # signature (the flatbuffer's own tensor names are onnx2tf's, e.g. "PartitionedCall:3"). Saved through
        # tf_keras' ExportArchive, which tracks the variables onnx2tf creates inside its ops (YOLO11's depthwise
        # convs): TFLiteConverter.from_concrete_functions falls back to a frozen graph for those and loses the
        # signature (and the calibration by input name with it).
        import tf_keras

        def serve(images):
            outs = model(images)
            outs = outs if isinstance(outs, (list, tuple)) else [outs]
            return {name: out for name, out in zip(names, outs)}

        archive = tf_keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint(name="serving_default", fn=serve,
                             input_signature=[tf.TensorSpec(in_shape, tf.float32, name="images")])
        saved = work / "saved_model"
        with contextlib.redirect_stdout(io.StringIO()):  # write_out prints the endpoints
            archive.write_out(str(saved))
        converter = tf.lite.TFLiteConverter.from_saved_model(str(saved), signature_keys=["serving_default"])

        def representative_dataset():
            for i in range(len(calib_nhwc)):
                yield {"images": calib_nhwc[i:i + 1]}

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative_dataset
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]  # no float fallback, no Flex
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
        converter._experimental_disable_per_channel = not per_channel
        with warnings.catch_warnings():  # the converter's calibrator uses the deprecated tf.lite.Interpreter
            warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated.*")
            flat = converter.convert()
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_bytes(flat)
        return out_path
    finally:
        if tmp is not None:
            tmp.cleanup()


# ---------------------------------------------------------------------------------------------------- flatbuffer


def _schema():
    from ai_edge_litert import schema_py_generated as schema

    return schema


def _read_model(path: str | Path):
    schema = _schema()
    buf = Path(path).read_bytes()
    return schema, buf, schema.Model.GetRootAs(buf, 0)


def _enum_names(cls) -> dict[int, str]:
    return {v: k for k, v in vars(cls).items() if not k.startswith("_") and isinstance(v, int)}


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
    schema, _, model = _read_model(path)
    names = _enum_names(schema.BuiltinOperator)
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
    schema, _, model = _read_model(path)
    op_names = _enum_names(schema.BuiltinOperator)
    types = _enum_names(schema.TensorType)
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
    schema, _, model = _read_model(path)
    op_names = _enum_names(schema.BuiltinOperator)
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


# ---------------------------------------------------------------------------------------------------- runner


class TFLiteRunner:
    """A TFLite model on the LiteRT CPU interpreter, with kdprune's runner interface (see
    ``kdprune.export.runtime``): ``runner(img)`` takes one ``(1, 3, H, W)`` float32 image in [0, 1] and returns
    float32 NCHW arrays in ``output_names`` order (``box0, cls0, box1, ...``), each dequantized with its own scale
    and zero point.

    Output mapping: ``onnx_to_tflite_int8`` writes a ``serving_default`` signature whose output keys are the ONNX
    output names (the flatbuffer's tensor names are onnx2tf's, e.g. ``PartitionedCall:3``), so outputs are found by
    name; the signature lists them sorted, so they are put back in RawHeadModel order (``box0, cls0, box1, ...``)
    or in the order of ``output_names`` when given. For a TFLite file without a signature, pass ``output_names``
    and ``output_shapes`` (NCHW, e.g. the ONNX's) and each output is matched by its NHWC shape; an ambiguous or
    missing shape is an error rather than a guess. ``input_quant`` / ``output_quant``: ``(scale, zero_point)``;
    ``quantize_input`` + ``run_raw`` run on an already-int8 NHWC input.
    """

    def __init__(self, path: str | Path, threads: int = 1, *, output_names: list[str] | None = None,
                 output_shapes: list[tuple[int, ...]] | None = None):
        from ai_edge_litert.interpreter import Interpreter

        self.path = Path(path)
        self.interpreter = Interpreter(model_path=str(self.path), num_threads=int(threads))
        self.interpreter.allocate_tensors()
        it = self.interpreter
        sigs = it.get_signature_list()
        if sigs:
            key = "serving_default" if "serving_default" in sigs else next(iter(sigs))
            runner = it.get_signature_runner(key)
            in_det, out_det = runner.get_input_details(), runner.get_output_details()
            if len(in_det) != 1:
                raise ValueError(f"TFLiteRunner: expected one input, got {list(in_det)}")
            self.input_detail = next(iter(in_det.values()))
            # Signature keys come back sorted: order them like the ONNX outputs.
            self.output_names = list(output_names) if output_names is not None else _onnx_order(list(out_det))
            missing = [n for n in self.output_names if n not in out_det]
            if missing:
                raise ValueError(f"TFLiteRunner: outputs {missing} not in the signature's {sorted(out_det)}")
            self._out = [out_det[n] for n in self.output_names]
        else:
            if output_names is None or output_shapes is None:
                raise ValueError("TFLiteRunner: the file has no signature; pass output_names and output_shapes")
            det = it.get_output_details()
            self.input_detail = it.get_input_details()[0]
            self.output_names = list(output_names)
            self._out = []
            for name, shape in zip(output_names, output_shapes):
                n, c, *sp = shape
                hits = [d for d in det if tuple(d["shape"]) == (n, *sp, c)]
                if len(hits) != 1:
                    raise ValueError(f"TFLiteRunner: output {name} {tuple(shape)}: {len(hits)} TFLite outputs "
                                     "have that shape (NHWC); cannot map it")
                self._out.append(hits[0])
        self.input_shape = tuple(int(v) for v in self.input_detail["shape"])  # NHWC
        self.input_dtype = np.dtype(self.input_detail["dtype"])
        self.input_quant = tuple(self.input_detail["quantization"])  # (scale, zero_point); (0.0, 0) = float
        self.output_quant = [tuple(d["quantization"]) for d in self._out]

    def quantize_input(self, img: np.ndarray) -> np.ndarray:
        """``(1, 3, H, W)`` float image -> the interpreter's NHWC input (int8 with the input's scale/zero point)."""
        img = np.asarray(img, dtype=np.float32)
        if img.ndim != 4 or img.shape[:2] != (1, 3):
            raise ValueError(f"runner: expected one (1, 3, H, W) image, got shape {img.shape}")
        x = img.transpose(0, 2, 3, 1)
        if tuple(x.shape) != self.input_shape:
            raise ValueError(f"runner: image is {img.shape[2:]} but the model takes {self.input_shape[1:3]}")
        scale, zp = self.input_quant
        if np.issubdtype(self.input_dtype, np.integer) and scale:
            info = np.iinfo(self.input_dtype)
            x = np.clip(np.round(x / scale) + zp, info.min, info.max)
        return np.ascontiguousarray(x, dtype=self.input_dtype)

    def run_raw(self, x: np.ndarray) -> list[np.ndarray]:
        """Run on an already-quantized NHWC input; the raw (int8) NHWC outputs in ``output_names`` order."""
        it = self.interpreter
        it.set_tensor(self.input_detail["index"], np.ascontiguousarray(x, dtype=self.input_dtype))
        it.invoke()
        return [it.get_tensor(d["index"]).copy() for d in self._out]

    def __call__(self, img: np.ndarray) -> list[np.ndarray]:
        outs = []
        for raw, (scale, zp) in zip(self.run_raw(self.quantize_input(img)), self.output_quant):
            y = raw.astype(np.float32)
            if np.issubdtype(raw.dtype, np.integer) and scale:
                y = (y - np.float32(zp)) * np.float32(scale)
            outs.append(np.ascontiguousarray(y.transpose(0, 3, 1, 2)) if y.ndim == 4 else y)
        return outs


def _onnx_order(names: list[str]) -> list[str]:
    """RawHeadModel's output order: ``box0, cls0, box1, cls1, ...``, then ``feat0, feat1, ...``, then any other
    name alphabetically."""
    def key(n: str):
        stem = n.rstrip("0123456789")
        level = int(n[len(stem):]) if len(stem) < len(n) else -1
        if stem in ("box", "cls") and level >= 0:
            return (0, level, stem, n)
        if stem == "feat" and level >= 0:
            return (1, level, stem, n)
        return (2, 0, "", n)

    return sorted(names, key=key)
