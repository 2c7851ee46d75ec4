"""INT8 QAT (kdprune.quant): the TFLite scheme's fake-quant placement, BN folding, QDQ export, and the QAT phase."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from omegaconf import OmegaConf
from torchao.quantization.pt2e import disable_fake_quant, disable_observer
from ultralytics.nn.tasks import DetectionModel

from kdprune.errors import UserError
from kdprune.quant import QATDetector, QATSchedule, backend
from kdprune.yolo.rawhead import RawHeadModel

pytestmark = pytest.mark.slow  # trains, converts or exports (make test-fast leaves it out)


def _model(cfg="yolov8n.yaml", seed=0):
    torch.manual_seed(seed)
    m = DetectionModel(cfg, nc=3, verbose=False)
    for mod in m.modules():  # non-trivial BN statistics, so a wrong fold shows
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-0.2, 0.2)
    return m


def _qat_graph(per_channel=True):
    m = _model()
    raw = RawHeadModel(m)
    gm = backend.prepare_qat(raw, torch.rand(2, 3, 64, 64), 32, per_channel=per_channel)
    for _ in range(2):  # observers see data
        gm(torch.rand(2, 3, 64, 64))
    return m, raw, gm


def test_bn_folding_is_exact_before_fake_quant():
    m, raw, gm = _qat_graph()
    gm.apply(disable_fake_quant)
    gm.apply(disable_observer)
    backend.set_mode(gm, train=False)
    x = torch.rand(2, 3, 64, 96)  # another size than captured: the graph is dynamic
    with torch.no_grad():
        ref = RawHeadModel(m).eval()(x)
        out = gm(x)
    for a, b in zip(out, ref):
        assert a.shape == b.shape
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4), float((a - b).abs().max())
    # and fake-quant on changes the outputs (it is really in the graph)
    gm.apply(lambda mod: mod.enable_fake_quant() if hasattr(mod, "enable_fake_quant") else None)
    with torch.no_grad():
        q = gm(x)
    assert max(float((a - b).abs().max()) for a, b in zip(q, ref)) > 1e-3


def _producer(graph: onnx.GraphProto) -> dict:
    return {o: n for n in graph.node for o in n.output}


def _init(graph: onnx.GraphProto) -> dict:
    return {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}


def _const(name, inits, prod):
    if name in inits:
        return inits[name]
    n = prod[name]
    assert n.op_type == "Constant", n.op_type
    return onnx.numpy_helper.to_array(n.attribute[0].t)


@pytest.fixture(scope="module", params=[True, False], ids=["per_channel", "per_tensor"])
def qdq(request, tmp_path_factory):
    """A QAT graph, its converted INT8 reference, and that exported as QDQ ONNX (the slow part: built once)."""
    m, raw, gm = _qat_graph(request.param)
    conv = backend.convert(gm)
    path = backend.export_qdq_onnx(conv, tmp_path_factory.mktemp("qdq") / "q.onnx", 64, raw.output_names())
    return request.param, m, raw, conv, path


def test_qdq_around_every_conv_with_configured_granularity(qdq):
    per_channel, m, raw, _, path = qdq
    g = onnx.load(str(path)).graph
    prod, inits = _producer(g), _init(g)
    convs = [n for n in g.node if n.op_type == "Conv"]
    assert len(convs) == sum(isinstance(x, torch.nn.Conv2d) for x in m.modules()) - 1  # all but the (unused) DFL
    for c in convs:
        x, w = prod[c.input[0]], prod[c.input[1]]
        assert x.op_type == "DequantizeLinear" and w.op_type == "DequantizeLinear", c.name
        w_int = _const(w.input[0], inits, prod)
        assert w_int.dtype == np.int8  # weights stored as int8
        scale = _const(w.input[1], inits, prod)
        assert scale.size == (w_int.shape[0] if per_channel else 1), (c.name, scale.shape)
        zp = _const(w.input[2], inits, prod) if len(w.input) > 2 else np.zeros(1)
        assert np.all(zp == 0)  # symmetric weights
        assert np.abs(w_int).max() <= 127  # TFLite's weight range excludes -128
    # every graph output is dequantized from an int8 tensor (the head's logits are quantized too)
    for o in g.output:
        assert prod[o.name].op_type == "DequantizeLinear"
    # shared scales: each Concat's inputs are all dequantized with one scale
    for cat in (n for n in g.node if n.op_type == "Concat"):
        scales = {float(_const(prod[i].input[1], inits, prod))
                  for i in cat.input if prod[i].op_type == "DequantizeLinear"}
        assert len(scales) == 1, (cat.name, scales)
    # sigmoid outputs on TFLite's fixed 1/256 scale, zero point -128
    sig_q = [n for n in g.node if n.op_type == "QuantizeLinear" and prod.get(n.input[0]) is not None
             and prod[n.input[0]].op_type == "Sigmoid"]
    assert sig_q
    for q in sig_q:
        assert float(_const(q.input[1], inits, prod)) == pytest.approx(1 / 256)
        assert int(_const(q.input[2], inits, prod)) == -128


def test_onnx_int8_matches_the_converted_graph(qdq):
    import onnxruntime as ort

    _, m, raw, conv, path = qdq
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.rand(1, 3, 64, 64)
    got = s.run(None, {"images": x.numpy()})
    with torch.no_grad():
        ref = conv(x)
    assert [o.name for o in s.get_outputs()] == raw.output_names()
    for a, b in zip(got, ref):
        step = float(b.abs().max()) / 127
        assert np.mean(np.abs(a - b.numpy()) <= step + 1e-6) > 0.99  # ORT's integer kernels round like PyTorch's


def test_qat_detector_trains_the_model_tensors_and_answers_like_detectionmodel():
    m = _model()
    q = QATDetector(m, 64)
    params = {id(p) for p in m.parameters()}
    # one set of tensors: the optimizer keeps ultralytics' groups
    assert {id(p) for p in q.graph.parameters()} <= params
    q.train(True)
    preds = q(torch.rand(2, 3, 64, 64))
    assert set(preds) == {"boxes", "scores", "feats"} and preds["scores"].shape[1] == 3
    (preds["boxes"].sum() + preds["scores"].sum()).backward()
    assert m.model[0].conv.weight.grad is not None and m.model[0].conv.weight.grad.abs().sum() > 0
    def scales():
        return [b.clone() for n, b in q.graph.named_buffers() if n.endswith("scale")]

    q.train(False)
    before = scales()
    y, _ = q(torch.rand(1, 3, 64, 96) * 5)  # validation, out of range: the ranges do not learn from it
    assert y.shape == (1, 4 + 3, 8 * 12 + 4 * 6 + 2 * 3)
    assert all(torch.equal(a, b) for a, b in zip(before, scales()))
    q.train(True)
    q(torch.rand(2, 3, 64, 64) * 5)  # training: they do
    assert not all(torch.equal(a, b) for a, b in zip(before, scales()))
    q.freeze_observers()
    before = scales()
    q.train(True)
    q(torch.rand(2, 3, 64, 64) * 10)  # out-of-range input: frozen ranges do not move
    assert all(torch.equal(a, b) for a, b in zip(before, scales()))


@pytest.mark.parametrize("one2one", [True, False], ids=["one2one_deployed", "one2many_deployed"])
def test_qat_of_a_two_branch_head_quantizes_the_deployed_branch(one2one):
    """YOLO26: the fake-quantized graph holds the branch the model deploys (``model.end2end``), the other branch runs
    in float beside it, and E2ELoss gets Detect.forward's ``{"one2many", "one2one"}`` dict. The one-to-one branch
    reads detached features (its loss never reaches the backbone), as ultralytics trains it. The branches are made
    to differ, so a graph holding the wrong one fails."""
    from kdprune.yolo import DetectionCriterion, choose_branch, hyp_namespace

    m = _model("yolo26n.yaml")
    assert choose_branch(m, None if one2one else False) is one2one
    with torch.no_grad():  # deepcopies at build: make the one-to-one class logits differ by a whole +3
        for seq in m.model[-1].one2one_cv3:
            seq[-1].bias += 3.0
    q = QATDetector(m, 64)
    x = torch.rand(2, 3, 64, 64)
    q.train(True)
    preds = q(x)
    assert set(preds) == {"one2many", "one2one"}
    ref = RawHeadModel(m.eval(), one2one=True)(x), RawHeadModel(m, one2one=False)(x)
    m.train()
    quantized = preds["one2one"] if one2one else preds["one2many"]
    deployed_ref, other_ref = (ref[0], ref[1]) if one2one else (ref[1], ref[0])
    flat = lambda outs: torch.cat([o.flatten(2) for o in outs[1::2]], -1)  # noqa: E731  (class logits, all levels)
    # the graph's class logits follow the deployed branch (within fake-quant error, far from the +3 of the other)
    assert (quantized["scores"] - flat(deployed_ref)).abs().mean() < 0.5
    assert (quantized["scores"] - flat(other_ref)).abs().mean() > 2.0
    m.args = hyp_namespace(imgsz=64)
    batch = {"img": x, "batch_idx": torch.tensor([0.0, 1.0]), "cls": torch.tensor([[0.0], [2.0]]),
             "bboxes": torch.tensor([[0.5, 0.5, 0.4, 0.4], [0.3, 0.6, 0.2, 0.3]])}
    loss, _, _ = DetectionCriterion(m)(preds, batch)
    loss.sum().backward()
    head = m.model[-1]
    for branch in (head.cv3, head.one2one_cv3):  # both branches train
        assert branch[0][-1].weight.grad.abs().sum() > 0
    stem = m.model[0].conv.weight
    assert stem.grad.abs().sum() > 0
    m.zero_grad()
    q(x)["one2one"]["scores"].sum().backward()  # the one-to-one loss alone: nothing reaches the backbone
    assert stem.grad is None or stem.grad.abs().sum() == 0
    assert head.one2one_cv3[0][-1].weight.grad.abs().sum() > 0
    q.train(False)
    y, _ = q(torch.rand(1, 3, 64, 64))
    # eval: the head's own decode of the deployed branch: top-k rows (x1 y1 x2 y2 score class), or xywh + scores
    assert y.shape == ((1, 84, 6) if one2one else (1, 4 + 3, 84)) and q.end2end is one2one


def test_qat_phase_config_checks():
    from kdprune import CONF_DIR

    base = {**OmegaConf.to_container(OmegaConf.load(CONF_DIR / "quant" / "int8_qat.yaml")),
            "start_epoch": -2, "freeze_bn_epoch": -1, "freeze_observer_epoch": 10, "granularity": "per_channel"}
    p = QATSchedule.from_config(OmegaConf.create(base), max_epochs=10, imgsz=64, prune_end=5)
    assert (p.start_epoch, p.freeze_bn_epoch, p.freeze_observer_epoch, p.per_channel) == (8, 9, 10, True)
    with pytest.raises(UserError, match=r"start_epoch=12 is outside the run"):
        QATSchedule.from_config(OmegaConf.create({**base, "start_epoch": 12}), max_epochs=10, imgsz=64, prune_end=None)
    with pytest.raises(UserError, match="after the last pruning step"):
        QATSchedule.from_config(OmegaConf.create(base), max_epochs=10, imgsz=64, prune_end=8)
    with pytest.raises(UserError, match="freeze_bn_epoch"):
        QATSchedule.from_config(OmegaConf.create({**base, "freeze_bn_epoch": 3}), max_epochs=10, imgsz=64,
                                prune_end=None)
    with pytest.raises(UserError, match="quant.backend=fx"):
        QATSchedule.from_config(OmegaConf.create({**base, "backend": "fx"}), max_epochs=10, imgsz=64, prune_end=None)
    with pytest.raises(UserError, match="granularity"):
        QATSchedule.from_config(OmegaConf.create({**base, "granularity": "per_row"}), max_epochs=10, imgsz=64,
                             prune_end=None)


def test_fidelity_checks_and_report(tmp_path):
    from kdprune.export.stages import check_fidelity
    from kdprune.report import stage_table, write_report

    rows = [{"stage": "pruned fp32", "mAP50-95": 0.30}, {"stage": "QAT fake-quant", "mAP50-95": 0.29},
            {"stage": "ONNX fp32", "mAP50-95": 0.3015}, {"stage": "ONNX INT8", "mAP50-95": 0.27},
            {"stage": "TFLite INT8", "mAP50-95": None, "status": "failed", "note": "over the budget"}]
    failed = check_fidelity(rows)
    by = {r["stage"]: r for r in rows}
    assert by["ONNX fp32"]["check"] == {"reference": "pruned fp32", "delta": 0.0015, "tolerance": 0.002, "ok": True}
    assert by["ONNX INT8"]["check"]["ok"] is False and by["ONNX INT8"]["check"]["delta"] == pytest.approx(-0.02)
    assert "check" not in by["TFLite INT8"]  # no number, no verdict
    # outside its margin an export is a failed row (a verdict, not a warning): the run ends with exit code 2
    assert by["ONNX fp32"].get("status") is None and by["ONNX INT8"]["status"] == "failed"
    assert failed == ["ONNX INT8: mAP50-95 -0.0200 vs QAT fake-quant, outside the expected ±0.01"]
    table = stage_table(rows)
    assert table.count("\n") == len(rows) + 1 and "| ONNX INT8 | — | — | — | — | — | 0.2700 |" in table
    text = write_report(tmp_path / "report.md", rows, {"model": "m", "data": "d.yaml"}).read_text()
    assert "**outside**" in text and "## Failed" in text and "- TFLite INT8: over the budget" in text
    assert "- ONNX INT8: mAP50-95 -0.0200 vs QAT fake-quant" in text


def test_qat_runs_in_fp32_under_mixed_precision():
    # trainer=gpu trains in 16-mixed; autocast handed the fake-quant ops half-precision activations and QAT failed at
    # its first step (found on an H200). CPU autocast (bf16) reproduces it: the fake-quantized forward must give the
    # fp32 result inside an autocast region.
    q = QATDetector(_model(), 64)
    q.train(True)
    x = torch.rand(2, 3, 64, 64)
    q(x)  # observers see data (at their initial scale of 1 the output is near-constant and would prove nothing)
    q.freeze_bn()
    q.freeze_observers()  # the same BN statistics and ranges for both forwards
    ref = q(x)
    assert ref["boxes"].std() > 0.01
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = q(x)
    assert got["boxes"].dtype == torch.float32 and torch.equal(got["boxes"], ref["boxes"])


def test_every_bn_of_yolo11_is_folded_into_its_conv(pt):
    # YOLO11's C2PSA reads its input's size from the conv before model.10.cv1's BN (dynamic batch in torch.export);
    # that second user kept the BN out of the fold, and the converted graph (so the ONNX INT8 file) held a float
    # batch_norm between two quantized tensors. Every BN must fold: no batch_norm op after convert. On conftest's
    # ``pt``: a trained-in-QAT yolo11n, converted (its BNs frozen, as at the end of a run).
    conv = pt[0]
    calls = [str(n.target) for n in conv.graph.nodes if n.op == "call_function"]
    assert any("conv2d" in c for c in calls)  # the graph is read
    left = [c for c in calls if "batch_norm" in c]
    assert not left, left
