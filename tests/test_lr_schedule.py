"""The learning-rate schedule (``kdprune.yolo.optim.LRSchedule``, ultralytics' warm-up and decay as a function of
the global batch) and the nominal batch: each config key it reads (``optim.lrf``, ``cos_lr``, ``warmup_*``,
``momentum``, ``nbs``) changes the numbers below, hand-computed from ultralytics' formulas."""

from __future__ import annotations

import math

import pytest
import torch

from kdprune.yolo import hyp_namespace
from kdprune.yolo.optim import LRSchedule, nominal_accumulate

NB = 10  # batches per epoch


def _optimizer(lr0: float = 0.01) -> torch.optim.Optimizer:
    w, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([{"params": [w], "param_group": "weight"}, {"params": [b], "param_group": "bias"}],
                          lr=lr0, momentum=0.9)
    for g in opt.param_groups:
        g["initial_lr"] = lr0
    return opt


def _hyp(**kw):
    base = dict(lrf=0.01, cos_lr=False, warmup_epochs=3.0, warmup_bias_lr=0.1, warmup_momentum=0.8, momentum=0.937)
    return hyp_namespace(**{**base, **kw})


def test_decay_reads_lrf_and_cos_lr():
    """After warm-up every group's lr is lr0 * lf(epoch): linear to ``lrf`` over the run, or ultralytics' one-cycle
    cosine with ``cos_lr``; the momentum is ``optim.momentum``."""
    lin = LRSchedule(10, NB, _hyp(warmup_epochs=0), accumulate=4)
    cos = LRSchedule(10, NB, _hyp(warmup_epochs=0, cos_lr=True), accumulate=4)
    half = LRSchedule(10, NB, _hyp(warmup_epochs=0, lrf=0.5), accumulate=4)
    opt = _optimizer()
    for sched, epoch, lf in ((lin, 0, 1.0), (lin, 2, 0.8 * 0.99 + 0.01), (lin, 9, 0.1 * 0.99 + 0.01),
                             (cos, 2, 1 - (1 - math.cos(math.pi * 2 / 10)) / 2 * 0.99), (half, 5, 0.5 * 0.5 + 0.5)):
        assert sched.apply(opt, epoch * NB + 3) == 4  # the nominal accumulation once warm-up is over
        assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.01 * lf] * 2, rel=1e-9)
        assert [g["momentum"] for g in opt.param_groups] == [0.937, 0.937]


def test_warmup_ramps_lr_momentum_and_accumulation():
    """Over the first ``warmup_epochs`` of batches: weights' lr from 0 and biases' from ``warmup_bias_lr`` to
    lr0 * lf(epoch), momentum from ``warmup_momentum``, accumulation from 1 to nominal; a run shorter than the
    warm-up keeps one epoch after it."""
    sched = LRSchedule(10, NB, _hyp(), accumulate=4)
    assert sched.nw == 30
    opt = _optimizer()
    acc = sched.apply(opt, 15)  # half-way, in epoch 1: lf(1) = 0.9 * 0.99 + 0.01
    target = 0.01 * (0.9 * 0.99 + 0.01)
    weight, bias = (g["lr"] for g in opt.param_groups)
    assert weight == pytest.approx(0.5 * target) and bias == pytest.approx(0.1 + 0.5 * (target - 0.1))
    assert opt.param_groups[0]["momentum"] == pytest.approx(0.8 + 0.5 * (0.937 - 0.8))
    assert acc == round(1 + 0.5 * 3)
    assert sched.apply(_optimizer(), 0) == 1 and sched.apply(_optimizer(), 30) == 4
    assert LRSchedule(2, NB, _hyp(warmup_epochs=3.0), accumulate=4).nw == NB  # capped at epochs - 1
    # keyed to the global batch: a rebuilt optimizer (a pruning step) continues where the old one was
    again = _optimizer()
    sched.apply(again, 15)
    assert [g["lr"] for g in again.param_groups] == [weight, bias]


@pytest.mark.parametrize("batch,nbs,acc,decay_scale", [(16, 64, 4, 1.0), (8, 64, 8, 1.0), (48, 64, 1, 0.75),
                                                       (16, 16, 1, 1.0)])
def test_nominal_batch_sets_accumulation_and_scales_weight_decay(batch, nbs, acc, decay_scale):
    """``optim.nbs``: gradients accumulate to about ``nbs`` images and the weight decay scales with the images per
    optimizer step (ultralytics' rule); never more accumulation than the run has batches."""
    hyp = hyp_namespace(nbs=nbs, weight_decay=0.0005)
    a, decay = nominal_accumulate(hyp, batch, batches_per_epoch=100, epochs=10)
    assert a == acc and decay == pytest.approx(0.0005 * decay_scale)
    assert nominal_accumulate(hyp_namespace(nbs=64), 8, batches_per_epoch=2, epochs=2)[0] == 4


def test_the_config_reaches_the_schedule():
    """What the user sets under ``optim.`` is what the schedule reads (through ultralytics' namespace)."""
    from kdprune.build import hyp_from_cfg
    from tests.conftest import compose

    cfg = compose(["optim.lrf=0.2", "optim.cos_lr=true", "optim.warmup_epochs=1", "optim.nbs=32", "data.batch=8"])
    hyp = hyp_from_cfg(cfg, {"yaml_file": "data.yaml"})
    assert (hyp.lrf, hyp.cos_lr, hyp.warmup_epochs, hyp.nbs) == (0.2, True, 1, 32)
    sched = LRSchedule(10, NB, hyp, accumulate=nominal_accumulate(hyp, 8, NB, 10)[0])
    assert sched.nw == NB and sched.accumulate == 4 and sched.lf(10) == pytest.approx(0.2)
