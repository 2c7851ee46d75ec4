"""ONNX export of the raw-head detector (``RawHeadModel``): the graph the device runs, decode left to the host.

TorchScript exporter (``dynamo=False``): batch 1, static square input ``images`` (float32 NCHW, [0, 1]), one output per
``module.output_names()`` (``box0, cls0, box1, ...``). Fake-quant ops in the module
(``torch.fake_quantize_per_tensor_affine`` / ``per_channel_affine``) become QuantizeLinear/DequantizeLinear pairs.
"""

from __future__ import annotations

import collections
import os
import tempfile
from pathlib import Path

import onnx
import torch
from torch import nn


@torch.no_grad()
def export_onnx(module: nn.Module, path: str | Path, imgsz: int, *, opset: int = 17) -> Path:
    """Export ``module`` (a ``RawHeadModel``, possibly fake-quantized) to ``path`` and return it.

    Traced on CPU at ``(1, 3, imgsz, imgsz)`` in eval mode (the module's own mode is restored afterwards), checked with
    ``onnx.checker`` (``full_check``: shape inference too) before it replaces ``path`` atomically, so ``path`` is
    either the previous file or a complete, checked model.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    device = next(iter(module.parameters()), torch.empty(0)).device
    dummy = torch.zeros(1, 3, int(imgsz), int(imgsz), device=device)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".onnx.tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.onnx.export(
            module, (dummy,), tmp, dynamo=False, opset_version=opset, input_names=["images"],
            output_names=list(module.output_names()), do_constant_folding=True,
            training=torch.onnx.TrainingMode.EVAL, export_params=True,
        )
        onnx.checker.check_model(tmp, full_check=True)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def onnx_ops(path: str | Path) -> collections.Counter:
    """Op types of the model's main graph and their counts (e.g. ``Conv``, ``QuantizeLinear``)."""
    model = onnx.load(str(path), load_external_data=False)
    return collections.Counter(node.op_type for node in model.graph.node)
