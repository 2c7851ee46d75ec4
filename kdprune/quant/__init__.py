"""INT8 quantization: TFLite's scheme on a captured graph (one backend, ``backend.py``), QAT and PTQ."""

from kdprune.errors import UserError
from kdprune.quant import backend
from kdprune.quant.phase import QATSchedule
from kdprune.quant.qat import QATDetector
from kdprune.quant.scheme import TFLiteInt8Quantizer

GRANULARITIES = ("per_channel", "per_tensor")


def per_channel(granularity) -> bool:
    """``quant.granularity`` (weights: one scale per output channel, or one per tensor), checked: a typo is an error,
    never a silent per-tensor."""
    if str(granularity) not in GRANULARITIES:
        raise UserError(f"quant.granularity={granularity}: choose {' or '.join(GRANULARITIES)}")
    return str(granularity) == "per_channel"


__all__ = ["GRANULARITIES", "QATDetector", "QATSchedule", "TFLiteInt8Quantizer", "backend",
           "per_channel"]
