"""TFLite's INT8 scheme as a torchao PT2E ``Quantizer``: which tensors of the captured graph get which fake-quant.

TFLite (and NXP eIQ Neutron, which runs TFLite graphs) fixes the arithmetic the device does, so the fake-quant placed
in the graph copies it (https://ai.google.dev/edge/litert/models/quantization_spec):

- weights: int8 symmetric (zero point 0, range [-127, 127]), per output channel by default, per tensor as an option;
  biases stay float here (the converter makes them int32 with scale ``s_in * s_w``);
- activations: int8 asymmetric, one scale per tensor, moving-average min/max observers;
- Concat inputs and output share one scale; MaxPool, Resize and reshapes keep their input's scale;
- Logistic (sigmoid) and Softmax outputs sit on the fixed scale 1/256, zero point -128;
- SiLU does not exist in TFLite: it runs as Logistic then Mul, so the graph is rewritten to ``x * sigmoid(x)`` before
  annotation and that intermediate is quantized on the fixed scale, as the device will;
- ReLU / ReLU6 after a conv (``model.fused_act_layers``) are fused into it by the converter: one observer, at the
  activation's output (the conv's own output is never an int8 tensor).

- an op that reads a fixed-scale tensor (sigmoid/softmax, or a reshape/transpose of one) reads it on that scale:
  no requantize after a sigmoid or softmax (TFLite's TRANSPOSE/RESHAPE must keep their input's scale, and the
  converter refuses a graph where they do not: C2PSA's softmax -> transpose -> matmul);
- Split/chunk outputs keep the split input's scale (TFLite's SPLIT/SLICE do; a multi-output node cannot carry a PT2E
  output spec, so the consumers' input edges share the split input's observer instead);
- a MatMul (C2PSA attention) reads its inputs with zero point 0 where they come from a tensor with a scale of its own
  (the qkv conv, through its reshapes and slices): NXP's Neutron runs BATCH_MATMUL only on zero-point-0 inputs. The
  softmax input of the second MatMul keeps TFLite's fixed zero point -128: a zero-point-0 copy would take a QUANTIZE
  op, which Neutron does not run either.

Conv + BatchNorm pairs are annotated at the BN output, so ``prepare_qat_pt2e`` folds the BN into the conv weight
(the folded weight is what is fake-quantized, as the exported conv) while BN statistics can still update.
With these rules every observer of the graph is a tensor of the TFLite file with the same scale and zero point
(``kdprune.export.tflite`` converts the graph itself and checks that on the file).
"""

from __future__ import annotations

import operator

import torch
from torch.fx import GraphModule, Node
from torchao.quantization.pt2e import (
    FusedMovingAvgObsFakeQuantize,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MovingAveragePerChannelMinMaxObserver,
    PerChannelMinMaxObserver,
)
from torchao.quantization.pt2e.quantizer import (
    FixedQParamsQuantizationSpec,
    QuantizationAnnotation,
    QuantizationSpec,
    Quantizer,
    SharedQuantizationSpec,
)

aten = torch.ops.aten

CONV = {aten.conv2d.default}
BN = {aten.batch_norm.default}
# ops whose output gets a fresh per-tensor scale
FRESH = {aten.add.Tensor, aten.mul.Tensor, aten.matmul.default, aten.sub.Tensor, aten.bmm.default}
# activations the converter fuses into the conv before them (CONV_2D's fused_activation_function): one tensor, the
# activation's output, so the conv's (BN's) output has no observer of its own
FUSED_ACT = {aten.relu.default, aten.relu_.default, aten.hardtanh.default, aten.hardtanh_.default}
# TFLite's fixed-scale outputs
FIXED = {aten.sigmoid.default, aten.softmax.int, aten._softmax.default}
# ops whose output keeps the input's scale (TFLite: same scale in and out)
SAME = {aten.max_pool2d.default, aten.upsample_nearest2d.vec, aten.upsample_nearest2d.default, aten.view.default,
        aten.reshape.default, aten.permute.default, aten.transpose.int, aten.flatten.using_ints,
        aten.unsqueeze.default, aten.squeeze.dim,
        aten.detach.default}  # YOLO26's one-to-one branch reads detached features (an identity in the file)
# multi-output ops whose outputs (read through getitem) keep the input's scale
SPLIT = {aten.chunk.default, aten.split.Tensor, aten.split_with_sizes.default, aten.unbind.int}
SIGMOID_SCALE, SIGMOID_ZP = 1.0 / 256.0, -128


def _act_spec(qat: bool) -> QuantizationSpec:
    obs = (FusedMovingAvgObsFakeQuantize.with_args(observer=MovingAverageMinMaxObserver, averaging_constant=0.01)
           if qat else MinMaxObserver)
    return QuantizationSpec(dtype=torch.int8, quant_min=-128, quant_max=127, qscheme=torch.per_tensor_affine,
                            is_dynamic=False, observer_or_fake_quant_ctr=obs)


def _weight_spec(qat: bool, per_channel: bool) -> QuantizationSpec:
    if per_channel:
        obs = (FusedMovingAvgObsFakeQuantize.with_args(observer=MovingAveragePerChannelMinMaxObserver)
               if qat else PerChannelMinMaxObserver)
        return QuantizationSpec(dtype=torch.int8, quant_min=-127, quant_max=127, qscheme=torch.per_channel_symmetric,
                                ch_axis=0, is_dynamic=False, observer_or_fake_quant_ctr=obs)
    obs = FusedMovingAvgObsFakeQuantize.with_args(observer=MovingAverageMinMaxObserver) if qat else MinMaxObserver
    return QuantizationSpec(dtype=torch.int8, quant_min=-127, quant_max=127, qscheme=torch.per_tensor_symmetric,
                            is_dynamic=False, observer_or_fake_quant_ctr=obs)


def _symmetric_act_spec(qat: bool) -> QuantizationSpec:
    obs = (FusedMovingAvgObsFakeQuantize.with_args(observer=MovingAverageMinMaxObserver, averaging_constant=0.01)
           if qat else MinMaxObserver)
    return QuantizationSpec(dtype=torch.int8, quant_min=-128, quant_max=127, qscheme=torch.per_tensor_symmetric,
                            is_dynamic=False, observer_or_fake_quant_ctr=obs)


def _fixed_spec() -> FixedQParamsQuantizationSpec:
    return FixedQParamsQuantizationSpec(dtype=torch.int8, scale=SIGMOID_SCALE, zero_point=SIGMOID_ZP, quant_min=-128,
                                        quant_max=127, qscheme=torch.per_tensor_affine)


def _tensor_args(node: Node) -> list[Node]:
    """The distinct tensor-valued Node inputs of ``node`` (skips sizes, scalars and lists of ints)."""
    out = []
    for a in node.args:
        for x in (a if isinstance(a, (list, tuple)) else [a]):
            if isinstance(x, Node) and isinstance(x.meta.get("val"), torch.Tensor) and x not in out:
                out.append(x)
    return out


def _fused_act_after(node: Node) -> bool:
    """Whether ``node`` (a conv, or the BN folded into one) has one user, an activation TFLite fuses into the conv."""
    users = list(node.users)
    return len(users) == 1 and users[0].target in FUSED_ACT


def _annotate(node: Node, inputs: dict, output) -> None:
    node.meta["quantization_annotation"] = QuantizationAnnotation(input_qspec_map=inputs, output_qspec=output,
                                                                  _annotated=True)


def decompose_silu(gm: GraphModule) -> GraphModule:
    """``silu(x)`` → ``x * sigmoid(x)``: the ops TFLite will run (it has no SiLU), so each can be quantized."""
    for node in list(gm.graph.nodes):
        if node.op == "call_function" and node.target in (aten.silu.default, aten.silu_.default):
            x = node.args[0]
            with gm.graph.inserting_before(node):
                sig = gm.graph.call_function(aten.sigmoid.default, (x,))
                sig.meta = {**node.meta}
                mul = gm.graph.call_function(aten.mul.Tensor, (x, sig))
                mul.meta = {**node.meta}
            node.replace_all_uses_with(mul)
            gm.graph.erase_node(node)
    gm.graph.lint()
    gm.recompile()
    return gm


def bn_after_shape_reads(gm: GraphModule) -> GraphModule:
    """``sym_size(conv_out, d)`` -> ``sym_size(bn_out, d)`` where the conv feeds a BatchNorm (the same shape).

    With a dynamic batch, torch.export reads a later op's sizes from whatever tensor it had: in YOLO11's C2PSA
    (``model.10.cv1``; PSABlock's ``B, C, H, W = x.shape``) from the conv *before* its BN. That second user of the conv
    output meant the conv was not seen as folded (``annotate``'s one-user rule): it got its own observer, prepare and
    convert did not fold that BN, and the converted graph kept a float batch_norm between two quantized tensors (a
    float island in the ONNX INT8 export). The BN (and its parameter reads) move up next to the conv so the size read
    can take the BN's output."""
    changed = False
    for node in list(gm.graph.nodes):
        if node.op == "call_function" and node.target == aten.sym_size.int:
            src = node.args[0]
            if isinstance(src, Node) and src.target in CONV:
                bns = [u for u in src.users if u.target in BN]
                if len(bns) == 1:
                    bn = bns[0]
                    for a in bn.all_input_nodes:  # BN parameters (get_attr) above the conv, then the BN right after it
                        if a is not src and a.op == "get_attr":
                            src.prepend(a)
                    src.append(bn)
                    node.replace_input_with(src, bn)
                    changed = True
    if changed:
        gm.graph.lint()
        gm.recompile()
    return gm


def _root_spec(edge_or_node, depth: int = 0):
    """The spec an output node or an ``(arg, node)`` input edge finally uses, following SharedQuantizationSpec."""
    if depth > 100:  # a cycle would be our bug; treat it as "not fixed"
        return None
    node = edge_or_node if isinstance(edge_or_node, Node) else edge_or_node[1]
    ann = node.meta.get("quantization_annotation")
    if ann is None:
        return None
    spec = ann.output_qspec if isinstance(edge_or_node, Node) else ann.input_qspec_map.get(edge_or_node[0])
    if isinstance(spec, SharedQuantizationSpec):
        return _root_spec(spec.edge_or_node, depth + 1)
    return spec


def _split_source(node: Node) -> Node | None:
    """For ``getitem(split(x, ...), i)`` with an annotated ``x``: ``x``; else None."""
    if node.op == "call_function" and node.target is operator.getitem:
        sp = node.args[0]
        if isinstance(sp, Node) and sp.target in SPLIT and isinstance(sp.args[0], Node) \
                and sp.args[0].meta.get("quantization_annotation") is not None:
            return sp.args[0]
    return None


def share_fixed_and_split_inputs(model: GraphModule) -> None:
    """Every input edge reading a fixed-scale output, or a split output, shares its producer's (the split input's)
    observer instead of getting its own: a FixedQParams spec and a plain activation spec never unify in PT2E, so
    without this each such edge would requantize. Nodes are visited in graph order, so a producer's edges are
    rewritten before its consumers' are resolved."""
    for node in model.graph.nodes:
        ann = node.meta.get("quantization_annotation")
        if ann is None:
            continue
        for arg in list(ann.input_qspec_map):
            if not isinstance(arg, Node):
                continue
            if (src := _split_source(arg)) is not None:
                ann.input_qspec_map[arg] = SharedQuantizationSpec(src)
            elif isinstance(_root_spec(arg), FixedQParamsQuantizationSpec):
                ann.input_qspec_map[arg] = SharedQuantizationSpec(arg)


def _scale_source(node: Node, depth: int = 0) -> Node:
    """The node whose observer ``node``'s value is read on: up through same-scale ops and split outputs."""
    if depth > 100:
        return node
    if (src := _split_source(node)) is not None:
        return _scale_source(src, depth + 1)
    if node.op == "call_function" and node.target in SAME and isinstance(node.args[0], Node):
        return _scale_source(node.args[0], depth + 1)
    return node


def symmetric_matmul_inputs(model: GraphModule, spec: QuantizationSpec) -> None:
    """Each MatMul input whose scale source has a plain (asymmetric) activation spec: that source becomes symmetric
    (zero point 0), and every edge reading it (through its reshapes and slices: q, k, v, the positional conv) reads it
    on that observer, so no requantize appears (TFLite's RESHAPE/TRANSPOSE must keep their input's scale).
    Fixed-scale sources (softmax) stay."""
    roots = set()
    for node in model.graph.nodes:
        ann = node.meta.get("quantization_annotation")
        if node.op != "call_function" or node.target not in (aten.matmul.default, aten.bmm.default) or ann is None:
            continue
        for arg in [a for a in ann.input_qspec_map if isinstance(a, Node)]:
            src = _scale_source(arg)
            src_ann = src.meta.get("quantization_annotation")
            if src_ann is not None and isinstance(src_ann.output_qspec, QuantizationSpec):
                src_ann.output_qspec = spec
                roots.add(src)
    for node in model.graph.nodes if roots else []:
        ann = node.meta.get("quantization_annotation")
        for arg, sp in list(ann.input_qspec_map.items()) if ann else []:
            if isinstance(arg, Node) and isinstance(sp, QuantizationSpec) and _scale_source(arg) in roots:
                ann.input_qspec_map[arg] = SharedQuantizationSpec(arg)


class TFLiteInt8Quantizer(Quantizer):
    """Annotates a captured (``torch.export``) graph with TFLite's INT8 scheme. ``qat`` picks fake-quant modules with
    moving-average observers (training) or plain min/max observers (post-training calibration)."""

    def __init__(self, *, per_channel: bool = True, qat: bool = True):
        super().__init__()
        self.per_channel, self.qat = per_channel, qat

    def transform_for_annotation(self, model: GraphModule) -> GraphModule:
        return bn_after_shape_reads(decompose_silu(model))

    def annotate(self, model: GraphModule) -> GraphModule:
        act, weight, fixed = _act_spec(self.qat), _weight_spec(self.qat, self.per_channel), _fixed_spec()
        for node in model.graph.nodes:
            if node.op != "call_function":
                continue
            t = node.target
            if t in CONV:
                x, w = node.args[0], node.args[1]
                users = list(node.users)
                folded = len(users) == 1 and users[0].target in BN
                _annotate(node, {x: act, w: weight}, None if folded or _fused_act_after(node) else act)
            elif t in BN:
                src = node.args[0]
                if isinstance(src, Node) and src.target in CONV:
                    _annotate(node, {}, None if _fused_act_after(node) else act)  # conv + BN: the fold's output
                else:
                    _annotate(node, {src: act}, act)
            elif t in FUSED_ACT:
                x = node.args[0]
                if isinstance(x, Node) and (x.target in CONV or (x.target in BN and x.args[0].target in CONV)):
                    _annotate(node, {}, act)  # conv (+ BN) + ReLU: one int8 tensor, the activation's output
                else:
                    _annotate(node, {x: act}, SharedQuantizationSpec((x, node)))
            elif t in FRESH:
                _annotate(node, {a: act for a in _tensor_args(node)}, act)
            elif t in FIXED:
                _annotate(node, {node.args[0]: act}, fixed)
            elif t in SAME:
                x = node.args[0]
                _annotate(node, {x: act}, SharedQuantizationSpec((x, node)))
            elif t == aten.cat.default:
                ins = [a for a in node.args[0] if isinstance(a, Node)]
                shared = SharedQuantizationSpec((ins[0], node))
                _annotate(node, {a: (act if i == 0 else shared) for i, a in enumerate(ins)}, shared)
        symmetric_matmul_inputs(model, _symmetric_act_spec(self.qat))
        share_fixed_and_split_inputs(model)
        return model

    def validate(self, model: GraphModule) -> None:
        pass
