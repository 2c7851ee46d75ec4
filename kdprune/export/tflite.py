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
from kdprune.export.tflite_check import check_fully_int8, conv_weight_scales, tflite_ops
from kdprune.export.tflite_runner import TFLiteRunner

__all__ = ["TFLiteRunner", "check_fully_int8", "conv_weight_scales", "onnx_to_tflite_int8", "require_tflite",
           "tflite_ops"]

_INSTALL_HINT = ("install the 'tflite' extra: pip install -e '.[tflite]' && "
                 "pip install --no-deps onnx2tf==1.29.24 tf-keras==2.21.0")



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
