"""INT8 quantization: TFLite's scheme on a captured graph (one backend, ``backend.py``), QAT and PTQ."""

from kdprune.quant import backend
from kdprune.quant.qat import QATDetector
from kdprune.quant.scheme import TFLiteInt8Quantizer

__all__ = ["QATDetector", "TFLiteInt8Quantizer", "backend"]
