"""Exports (ONNX fp32, ONNX INT8 QDQ, full-INT8 TFLite), their runners, the host-side decode, and their evaluation."""

from kdprune.export.decode import decode, dfl, nms
from kdprune.export.onnx import export_onnx, onnx_ops
from kdprune.export.runtime import OnnxRunner, TorchRunner, latency_ms
from kdprune.export.scoring import evaluate_runner, square_val_loader

__all__ = ["OnnxRunner", "TorchRunner", "decode", "dfl", "evaluate_runner", "export_onnx", "latency_ms", "nms",
           "onnx_ops", "square_val_loader"]
