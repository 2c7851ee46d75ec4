"""The one quantization backend: torchao's PT2E flow, behind the few calls kdprune makes.

Why PT2E (``torch.export`` capture + ``prepare_qat_pt2e`` / ``convert_pt2e`` from torchao): ``torch.ao.quantization``
(eager and FX) is deprecated in torch 2.14 and its successor is exactly this flow, moved to torchao. It works on the
captured ATen graph, so the fake-quant sits on every op of ultralytics' blocks (the adds, concats, attention matmuls
inside C3k2/SPPF/C2PSA) without re-writing their ``forward``s; it simulates Conv+BN folding during QAT; it honours
shared and fixed quantization specs (what TFLite needs for Concat and Sigmoid); and ``convert_pt2e`` yields
quantize/dequantize ops that ``torch.onnx`` (dynamo exporter) writes as QuantizeLinear/DequantizeLinear pairs.
Everything PT2E-specific lives in this file and ``scheme.py``; the rest of kdprune calls these functions only.
"""

from __future__ import annotations

import copy
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.export import Dim
from torch.fx import GraphModule
from torchao.quantization.pt2e import (
    disable_observer,
    enable_observer,
    move_exported_model_to_eval,
    move_exported_model_to_train,
)
from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e, prepare_qat_pt2e

from kdprune.quant.scheme import TFLiteInt8Quantizer

NAME = "pt2e"


def capture(module: nn.Module, example: torch.Tensor, stride: int) -> GraphModule:
    """The module's ATen training graph, with batch and image size (multiples of ``stride``) left dynamic, so the same
    graph trains on mosaic batches and validates on ultralytics' rectangular val batches."""
    dims = {0: Dim("batch", min=1, max=4096), 2: stride * Dim("h", min=1, max=1024),
            3: stride * Dim("w", min=1, max=1024)}
    return torch.export.export(module, (example,), dynamic_shapes={"x": dims}, strict=False).module()


def prepare_qat(module: nn.Module, example: torch.Tensor, stride: int, *, per_channel: bool = True) -> GraphModule:
    """Fake-quantized, trainable copy of ``module``'s graph (BN folded into the conv weights it fake-quantizes).
    The graph holds the same parameter tensors as ``module``: training one trains the other."""
    module.train()
    return prepare_qat_pt2e(capture(module, example, stride), TFLiteInt8Quantizer(per_channel=per_channel, qat=True))


@torch.no_grad()
def calibrate_ptq(module: nn.Module, batches, stride: int, *, per_channel: bool = True) -> GraphModule:
    """Post-training quantization: min/max observers over ``batches`` (float images, NCHW in [0, 1]), no training.
    Returns the observed graph; ``convert`` it like a QAT graph."""
    module.eval()
    batches = list(batches)
    gm = torch.export.export(module, (batches[0],), dynamic_shapes={"x": {0: Dim("batch", min=1, max=4096)}},
                             strict=False).module()
    gm = prepare_pt2e(gm, TFLiteInt8Quantizer(per_channel=per_channel, qat=False))
    for x in batches:
        gm(x)
    return gm


def set_mode(gm: GraphModule, *, train: bool) -> None:
    """BatchNorm's train/eval behaviour in a captured graph (``.train()``/``.eval()`` do not reach into it)."""
    (move_exported_model_to_train if train else move_exported_model_to_eval)(gm)


def set_observers(gm: GraphModule, *, enabled: bool) -> None:
    """Whether activation and weight ranges update on a forward; fake-quant stays on with the current scales."""
    gm.apply(enable_observer if enabled else disable_observer)


def freeze_observers(gm: GraphModule) -> None:
    """Stop updating activation and weight ranges for good."""
    set_observers(gm, enabled=False)


def fake_quant_modules(gm: nn.Module) -> list[nn.Module]:
    return [m for m in gm.modules() if hasattr(m, "activation_post_process") or hasattr(m, "fake_quant_enabled")]


def describe(gm: nn.Module) -> dict:
    """How many fake-quant points of each kind a prepared graph has (for the log and the tests)."""
    kinds = Counter()
    for m in fake_quant_modules(gm):
        kinds[str(getattr(m, "qscheme", "?")).replace("torch.", "")] += 1
    return dict(kinds)


def convert(gm: GraphModule) -> GraphModule:
    """The reference INT8 graph: BN folded for good, weights stored as int8, quantize/dequantize around every op.
    Works on a copy: ``gm`` stays trainable (``convert_pt2e`` rewrites its argument in place)."""
    gm = copy.deepcopy(gm)
    set_mode(gm, train=False)
    return convert_pt2e(gm, fold_quantize=True)


def convert_for_tflite(gm: GraphModule) -> GraphModule:
    """``convert`` with the weights left as float constants behind quantize/dequantize (``fold_quantize=False``):
    the form litert-torch lowers to int8 TFLite tensors (it fails on pre-folded int8 weights)."""
    gm = copy.deepcopy(gm)
    set_mode(gm, train=False)
    return convert_pt2e(gm, fold_quantize=False)


def _attr(gm: nn.Module, target: str):
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def qparams(converted: GraphModule) -> dict:
    """The quantization a ``convert_for_tflite`` graph carries, as float32 values, for checking a file against it:
    ``activations``: the (scale, zero point) of every activation quantize; ``weights``: one scale tuple per weight
    quantize (per channel, or one value); ``conv_biases``: weight-scale tuple -> (input scale, float bias)."""
    qd = torch.ops.quantized_decomposed

    def const(v):
        return _attr(converted, v.target) if isinstance(v, torch.fx.Node) else v

    acts, weights, biases = [], [], {}
    for n in converted.graph.nodes:
        if n.op != "call_function":
            continue
        if n.target in (qd.quantize_per_tensor.default, qd.quantize_per_tensor.tensor):
            scale = np.float32(float(const(n.args[1])))
            if n.args[0].op == "get_attr":
                weights.append((float(scale),))
            else:
                acts.append((float(scale), int(const(n.args[2]))))
        elif n.target == qd.quantize_per_channel.default:
            weights.append(tuple(const(n.args[1]).detach().float().numpy().astype(np.float32).tolist()))
        elif n.target == torch.ops.aten.conv2d.default and len(n.args) > 2 and isinstance(n.args[2], torch.fx.Node):
            x, w, b = n.args[:3]
            if "dequantize" in str(x.target) and "dequantize" in str(w.target) and b.op == "get_attr":
                wq = w.args[0]
                sw = (const(wq.args[1]).detach().float().numpy().astype(np.float32)
                      if wq.target == qd.quantize_per_channel.default else np.array([const(wq.args[1])], np.float32))
                biases[tuple(sw.tolist())] = (np.float32(float(const(x.args[1]))),
                                              const(b).detach().float().numpy())
    return {"activations": acts, "weights": weights, "conv_biases": biases}


def export_qdq_onnx(converted: GraphModule, path: str | Path, imgsz: int, output_names: list[str]) -> Path:
    """QDQ ONNX of a converted graph (torch.onnx's dynamo exporter: it maps PT2E's quantize/dequantize ops to
    QuantizeLinear/DequantizeLinear with per-channel axes; batch 1, static size, as the device runs it). The graph
    may have more outputs than ``output_names`` (the QAT graph also returns the Detect inputs for the loss): the ONNX
    keeps only the first ``len(output_names)``, cut out with ``onnx.utils.extract_model``."""
    import onnx
    import onnx.utils

    path = Path(path)
    tmp, cut = path.with_suffix(".full.tmp.onnx"), path.with_suffix(".tmp.onnx")
    try:
        example = torch.zeros(1, 3, imgsz, imgsz)
        for m in converted.modules():  # BN is folded and observers are gone: the flag only silences torch.onnx
            m.training = False
        torch.onnx.export(converted, (example,), str(tmp), dynamo=True, opset_version=18, input_names=["images"],
                          output_names=list(output_names), external_data=False, verbose=False)
        onnx.utils.extract_model(str(tmp), str(cut), ["images"], list(output_names))
        onnx.checker.check_model(str(cut), full_check=True)
        cut.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
        cut.unlink(missing_ok=True)
    return path
