"""Distillation and the imbalanced-data losses without a training run: KD terms, adapters under pruning, the teacher
wrapper, the KD schedule, focal loss and class weights."""

from __future__ import annotations

from copy import deepcopy

import numpy as np
import pytest
import torch
from torch import nn

from kdprune.distill import Distiller, Teacher, kd_scale_at
from kdprune.errors import UserError
from kdprune.losses import FocalBCE, cls_kd, cwd, ld_kd
from kdprune.pruning import YoloPruner
from kdprune.yolo import (
    DetectionCriterion,
    build_model,
    head_input_channels,
    hyp_namespace,
    inverse_frequency_weights,
    raw_head,
    split_blocks,
)
from tests.conftest import compose

NAMES = {i: f"c{i}" for i in range(4)}


def _model(cfg="yolo11n.yaml", seed=0):
    torch.manual_seed(seed)
    return build_model(cfg, None, NAMES, hyp_namespace(imgsz=64))


def _batch(bs=2, imgsz=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    boxes = torch.tensor([[0.5, 0.5, 0.4, 0.4], [0.3, 0.6, 0.2, 0.3], [0.7, 0.3, 0.3, 0.2]])
    return {"img": torch.rand(bs, 3, imgsz, imgsz, generator=g), "batch_idx": torch.tensor([0.0, 0.0, 1.0]),
            "cls": torch.tensor([[0.0], [2.0], [3.0]]), "bboxes": boxes}


def _distiller(student, teacher, **kw):
    kd = compose(["distill=kd"]).distill  # temperatures and anchor mode as configured (conf/distill/kd.yaml)
    args = dict(cls=1.0, ld=1.0, cwd=1.0, t_cls=kd.t_cls, t_ld=kd.t_ld, t_cwd=kd.t_cwd, anchors=kd.anchors,
                reg_max=16, student_channels=head_input_channels(student),
                teacher_channels=head_input_channels(teacher))
    return Distiller(**{**args, **kw})


# ---- KD terms ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("anchors", ["teacher_conf", "foreground", "all"])
def test_kd_terms_are_zero_for_the_same_network_and_not_for_another(anchors):
    student = _model().eval()
    same, other = Teacher(deepcopy(student)), Teacher(deepcopy(student))
    with torch.no_grad():  # another network: fresh random models all start from the same head biases
        for p in other.model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    batch = _batch()
    s = raw_head(student(batch["img"]))
    fg = torch.ones(s["scores"].shape[0], s["scores"].shape[2], dtype=torch.bool)
    total, items = _distiller(student, same.model, anchors=anchors)(s, raw_head(same(batch["img"])), fg)
    assert set(items) == {"cls", "ld", "cwd"}
    assert float(total) == pytest.approx(0.0, abs=1e-5)
    total, items = _distiller(student, other.model, anchors=anchors)(s, raw_head(other(batch["img"])), fg)
    assert all(float(v) > 1e-3 for v in items.values()), items


def test_anchor_modes_weight_different_anchors():
    """``distill.anchors`` changes what the response terms average over: ``all`` weights every anchor alike,
    ``foreground`` only the assigner's, ``teacher_conf`` by the teacher's top class probability; on the same student
    and teacher outputs the three modes give three different cls and ld values, far beyond float rounding (were the
    mode ignored, they would be equal bit for bit)."""
    from kdprune.losses import anchor_weights

    g = torch.Generator().manual_seed(0)
    b, nc, a = 2, 4, 84
    s = {"scores": torch.randn(b, nc, a, generator=g), "boxes": torch.randn(b, 4 * 16, a, generator=g)}
    t = {"scores": torch.randn(b, nc, a, generator=g) - 1, "boxes": 3 * torch.randn(b, 4 * 16, a, generator=g)}
    fg = torch.zeros(b, a, dtype=torch.bool)
    fg[:, ::7] = True  # one anchor in seven is foreground
    assert torch.equal(anchor_weights("all", t["scores"], None), torch.ones(b, a))
    assert torch.equal(anchor_weights("foreground", t["scores"], fg), fg.float())
    assert torch.allclose(anchor_weights("teacher_conf", t["scores"], None), t["scores"].sigmoid().amax(1))
    items = {mode: Distiller(anchors=mode, cls=1.0, ld=1.0)(s, t, fg)[1] for mode in ("all", "foreground",
                                                                                     "teacher_conf")}
    for term in ("cls", "ld"):
        values = [float(items[m][term]) for m in items]
        assert min(abs(x - y) for i, x in enumerate(values) for y in values[i + 1:]) > 1e-5 * max(values), values


def test_kd_terms_pull_the_student_towards_the_teacher():
    """A gradient step on each term lowers it: the signs and temperatures are right."""
    torch.manual_seed(0)
    t_cls, t_box, t_feat = torch.randn(2, 4, 30), torch.randn(2, 64, 30), torch.randn(2, 8, 5, 6)
    w = torch.rand(2, 30)
    for fn, t in ((lambda s: cls_kd(s, t_cls, w, T=2.0), t_cls), (lambda s: ld_kd(s, t_box, w, 16, T=10.0), t_box),
                  (lambda s: cwd(s, t_feat, T=1.0), t_feat)):
        s = torch.randn_like(t, requires_grad=True)
        loss = fn(s)
        loss.backward()
        with torch.no_grad():
            after = fn(s - 0.5 * s.grad / s.grad.norm() * s.numel() ** 0.5 * 0.01)
        assert float(after) < float(loss)
        assert float(fn(t.clone())) == pytest.approx(0.0, abs=1e-6)


def test_zero_weight_terms_are_not_computed_and_all_zero_is_refused():
    student = _model()
    d = _distiller(student, student, cwd=0.0, ld=0.0)
    assert d.adapters is None and list(d.parameters()) == []
    with pytest.raises(ValueError, match=r"anchors=nearest: unknown KD anchor weighting; choose one of teacher_conf"):
        _distiller(student, student, anchors="nearest")
    with pytest.raises(ValueError, match=r"t_cls=0.0: a temperature must be > 0"):
        _distiller(student, student, t_cls=0.0)


# ---- the teacher -----------------------------------------------------------------------------------------------------
def test_no_gradient_reaches_the_teacher_and_it_stays_in_eval():
    student, teacher = _model(), Teacher(_model("yolov8n.yaml", seed=1))
    teacher.model.train()  # someone switched it: the wrapper must still run it in eval mode
    before = {k: v.clone() for k, v in teacher.model.state_dict().items()}
    d = _distiller(student, teacher.model)
    batch = _batch()
    t = raw_head(teacher(batch["img"]))
    assert not teacher.model.training
    assert all(not x.requires_grad for x in (t["scores"], t["boxes"], *t["feats"]))
    total, _ = d(raw_head(student(batch["img"])), t)
    total.backward()
    assert all(p.grad is None and not p.requires_grad for p in teacher.model.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert all(p.grad is not None for p in d.parameters())  # the adapters learn
    after = teacher.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN running stats untouched too
    assert not isinstance(teacher, nn.Module)  # so a LightningModule never registers it as a submodule


# ---- adapters follow pruning ---------------------------------------------------------------------------------
def test_adapters_follow_a_prune_step_and_keep_their_trained_columns():
    """Identity-initialised adapters (teacher = the unpruned student): after a prune step each adapter keeps exactly the
    columns of the channels the feature kept, in order, which we read off the feature's producing conv."""
    model = _model()
    teacher = Teacher(deepcopy(model))
    split_blocks(model)
    d = _distiller(model, teacher.model)
    assert d.adapters.in_channels() == head_input_channels(model) == head_input_channels(teacher.model)
    producers = [model.model[i].cv2.bn for i in model.model[-1].f]  # C3k2's output Conv makes each Detect input
    for bn in producers:  # tag each channel of each feature with its original index
        bn.running_mean.copy_(torch.arange(bn.num_features, dtype=torch.float))
    pruner = YoloPruner(model, importance="l2")
    pruner.apply(model, pruner.plan(model, 0.5), follow=d.adapters.prune_inputs)
    assert d.adapters.in_channels() == head_input_channels(model)
    assert all(a < b for a, b in zip(head_input_channels(model), head_input_channels(teacher.model)))
    for conv, bn in zip(d.adapters.convs, producers):
        keep = conv.weight[:, :, 0, 0].argmax(0)  # column j is one-hot at the original channel it reads
        assert torch.equal(conv.weight[:, :, 0, 0].abs().sum(0), torch.ones(conv.in_channels))
        assert torch.equal(bn.running_mean, keep.float())  # the feature's channel j is original channel keep[j]
    batch = _batch()
    crit = DetectionCriterion(model)
    preds = model(batch["img"])
    det, _, fg = crit(preds, batch, foreground=True)
    kd, items = d(raw_head(preds), raw_head(teacher(batch["img"])), fg)
    (det.sum() + kd).backward()
    assert all(p.grad is not None and p.grad.shape == p.shape for p in d.adapters.parameters())
    state = d.state_dict()
    fresh = _distiller(_model(), teacher.model)  # a resumed run: unpruned adapters resized to the checkpoint's
    fresh.adapters.match(state, "adapters.")
    fresh.load_state_dict(state)
    assert fresh.adapters.in_channels() == d.adapters.in_channels()


# ---- KD weight schedule ----------------------------------------------------------------------------------------------
def test_kd_schedule_shapes():
    assert [kd_scale_at(e, 5) for e in range(5)] == [1.0] * 5
    assert [kd_scale_at(e, 5, "linear", final=0.0) for e in range(5)] == [1.0, 0.75, 0.5, 0.25, 0.0]
    cos = [kd_scale_at(e, 5, "cosine", final=0.2) for e in range(5)]
    assert cos[0] == pytest.approx(1.0) and cos[-1] == pytest.approx(0.2) and cos[2] == pytest.approx(0.6)
    assert [kd_scale_at(e, 5, warmup_epochs=2) for e in range(3)] == [0.5, 1.0, 1.0]
    with pytest.raises(UserError, match=r"distill.schedule.shape=step: unknown KD schedule shape; choose one of con"):
        kd_scale_at(0, 5, "step")


# ---- losses for imbalanced data --------------------------------------------------------------------------------------
def test_focal_with_gamma0_and_no_alpha_is_bce_and_down_weights_easy_examples():
    torch.manual_seed(0)
    x, y = torch.randn(2, 50, 4) * 3, torch.rand(2, 50, 4) * (torch.rand(2, 50, 4) > 0.7)
    bce = nn.BCEWithLogitsLoss(reduction="none")(x, y)
    assert torch.allclose(FocalBCE(0.0, None)(x, y), bce, atol=1e-7)
    hard = (y > 0).float()
    focal, bce_hard = FocalBCE(2.0, None)(x, hard), nn.BCEWithLogitsLoss(reduction="none")(x, hard)
    easy = (x.sigmoid() - hard).abs() < 0.1
    assert easy.sum() > 10 and (focal[easy] / bce_hard[easy]).max() < 0.0101  # (1 - p_t)^2 < 0.01 where it is right
    assert torch.all(FocalBCE(2.0, None)(x, y) <= bce + 1e-7)
    # inside ultralytics' loss: gamma=0, alpha=None gives the default criterion's loss exactly
    model, batch = _model(), _batch()
    preds = model(batch["img"])
    plain, _, _ = DetectionCriterion(model)(preds, batch)
    same, _, _ = DetectionCriterion(model, cls_loss=FocalBCE(0.0, None))(preds, batch)
    other, _, _ = DetectionCriterion(model, cls_loss=FocalBCE(1.5, 0.25))(preds, batch)
    assert torch.allclose(plain, same) and not torch.isclose(plain[1], other[1])
    assert torch.equal(plain[[0, 2]], other[[0, 2]])  # box and DFL terms untouched


def test_class_weights_match_the_hand_formula():
    # counts 4, 1, 0: (1/n)^1 -> 0.25, 1, and the absent class gets the mean 0.625; normalised to mean 1
    assert np.allclose(inverse_frequency_weights(np.array([4, 1, 0]), 1.0), [0.4, 1.6, 1.0])
    assert np.allclose(inverse_frequency_weights(np.array([9, 1]), 0.5), [0.5, 1.5])
    assert np.allclose(inverse_frequency_weights(np.array([9, 1]), 0.0), [1.0, 1.0])
    model, batch = _model(), _batch()
    w = torch.tensor([1.0, 0.0, 0.0, 0.0])
    preds = model(batch["img"])
    only0, _, _ = DetectionCriterion(model, class_weights=w)(preds, batch)
    plain, _, _ = DetectionCriterion(model)(preds, batch)
    assert 0 < float(only0[1]) < float(plain[1])


def test_end_to_end_criterion_and_foreground():
    model, batch = _model("yolo26n.yaml"), _batch()
    crit = DetectionCriterion(model, cls_loss=FocalBCE(0.0, None))
    assert crit.end2end and len(crit.branches) == 2
    preds = model(batch["img"])
    a, _, none = crit(preds, batch)
    b, _, fg = crit(preds, batch, foreground=True)
    assert none is None and torch.allclose(a, b)
    assert fg.shape == raw_head(preds)["scores"].shape[::2] and fg.any()


def test_criterion_follows_the_predictions_to_their_device():
    # The criterion is built with the module, on CPU, before Lightning moves the model to the GPU; ultralytics' loss
    # keeps the device it was built on (proj, class weights), so trainer=gpu failed at the first step (found on an
    # H200). Here: a criterion whose tensors sit on another device ("meta") must come back to the predictions' device
    # and give the loss of one built there; without DetectionCriterion.to the matmul with a meta proj raises.
    model, batch = _model(), _batch()
    preds = model(batch["img"])
    w = torch.tensor([1.0, 2.0, 0.5, 1.0])
    ref, _, _ = DetectionCriterion(model, class_weights=w)(preds, batch)
    crit = DetectionCriterion(model, class_weights=w).to("meta")
    assert crit.device.type == "meta" and crit.inner.proj.device.type == "meta"
    got, _, _ = crit(preds, batch)
    assert crit.device.type == "cpu" and crit.inner.class_weights.device.type == "cpu"
    assert torch.equal(got, ref)
    e2e = _model("yolo26n.yaml")
    crit = DetectionCriterion(e2e).to("meta")
    crit(e2e(batch["img"]), batch, foreground=True)
    assert {b.proj.device.type for b in crit.branches} == {"cpu"}


def test_optimizer_is_not_fused_so_amp_can_clip_its_gradients(monkeypatch):
    # ultralytics builds fused Adam/AdamW when the model is on CUDA; Lightning's AMP plugin (trainer=gpu, 16-mixed)
    # refuses to clip the gradients of an optimizer that unscales them itself, so trainer=gpu failed at its first step
    # (found on an H200). Emulated on CPU by forcing the fused choice: ours must come back unfused, groups intact.
    from lightning.pytorch.plugins.precision.amp import _optimizer_handles_unscaling

    from kdprune.yolo import build_optimizer

    real = torch.optim.AdamW
    made = []
    monkeypatch.setattr(torch.optim, "AdamW",
                        lambda params, **kw: made.append(real(params, fused=True, **kw)) or made[-1])
    model = _model()
    opt, _ = build_optimizer(model, hyp_namespace(imgsz=64, optimizer="AdamW"), 4, 100, 5e-4)
    assert len(made) == 1 and _optimizer_handles_unscaling(made[0])  # what ultralytics built, and Lightning refuses
    assert not _optimizer_handles_unscaling(opt) and not any(g.get("fused") for g in opt.param_groups)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    assert [g["weight_decay"] for g in opt.param_groups] == [g["weight_decay"] for g in made[0].param_groups]


def test_a_registered_kd_term_needs_nothing_else(monkeypatch):
    """The extension promise of kdprune.losses.kd: registering a term is enough for the Distiller (weight, default
    temperature, its own item) and for the config check; every shipped term has its two keys in conf/distill/kd.yaml."""
    from omegaconf import OmegaConf

    from kdprune import CONF_DIR
    from kdprune.losses import KD_TERMS, check_kd, kd_term

    kd = OmegaConf.load(CONF_DIR / "distill" / "kd.yaml")
    assert all(n in kd and f"t_{n}" in kd for n in KD_TERMS)
    monkeypatch.setattr(KD_TERMS, "_entries", dict(KD_TERMS._entries))  # the registration below is undone afterwards
    kd_term("l2", temperature=3.0)(lambda s, t, ctx: ((s["scores"] - t["scores"]) ** 2).mean() / ctx.T)
    s, t = {"scores": torch.ones(1, 2, 4)}, {"scores": torch.zeros(1, 2, 4)}
    total, items = Distiller(anchors="all", l2=2.0)(s, t)
    assert set(items) == {"l2"} and float(total) == pytest.approx(2.0 / 3.0)
    assert "a temperature" in check_kd({"l2": 1.0, "t_l2": 0.0}, "all")
    assert "no such KD term" in check_kd({"l3": 1.0}, "all")
