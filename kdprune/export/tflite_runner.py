"""A TFLite model on the LiteRT CPU interpreter, behind kdprune's runner interface (``kdprune.export.runtime``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


class TFLiteRunner:
    """A TFLite model on the LiteRT CPU interpreter, with kdprune's runner interface (see
    ``kdprune.export.runtime``): ``runner(img)`` takes one ``(1, 3, H, W)`` float32 image in [0, 1] and returns
    float32 NCHW arrays in ``output_names`` order (``box0, cls0, box1, ...``), each dequantized with its own scale
    and zero point.

    Output mapping: ``graph_to_tflite_int8`` writes a signature whose output keys are RawHeadModel's output names,
    so outputs are found by name; the signature lists them sorted, so they are put back in RawHeadModel order
    (``box0, cls0, box1, ...``) or in the order of ``output_names`` when given. For a TFLite file without a
    signature, pass ``output_names`` and ``output_shapes`` (NCHW) and each output is matched by its NHWC shape; an
    ambiguous or missing shape is an error rather than a guess. ``input_quant`` / ``output_quant``:
    ``(scale, zero_point)``; ``quantize_input`` + ``run_raw`` run on an already-int8 NHWC input.

    ``kernels``: ``"optimized"`` (LiteRT's default: XNNPACK and its optimized builtins, what a phone or a host CPU
    runs) or ``"reference"`` (its reference kernels: slower, and bit-exact with TensorFlow Lite for
    Microcontrollers, the MCU runtime, whose optimized CMSIS-NN kernels are tested against the same reference).
    The two differ by rounding: up to ~10 LSB at the head's outputs of a yolo11n file.
    """

    def __init__(self, path: str | Path, threads: int = 1, *, output_names: list[str] | None = None,
                 output_shapes: list[tuple[int, ...]] | None = None, kernels: str = "optimized"):
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        if kernels not in ("optimized", "reference"):
            raise ValueError(f"TFLiteRunner: kernels={kernels!r}; use 'optimized' or 'reference'")
        resolver = OpResolverType.AUTO if kernels == "optimized" else OpResolverType.BUILTIN_REF
        self.path, self.kernels = Path(path), kernels
        self.interpreter = Interpreter(model_path=str(self.path), num_threads=int(threads),
                                       experimental_op_resolver_type=resolver)
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
