"""The C2f / C3k2 chunk rewrite: identical outputs, and an exact merge back to ultralytics' own modules."""

from __future__ import annotations

from copy import deepcopy

import pytest
import torch
from ultralytics.nn.modules.block import C2f, C3k2
from ultralytics.nn.tasks import DetectionModel

from kdprune.yolo.prunable import SplitC2f, merge_split_blocks, split_blocks


def _randomize_bn(model: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial BN statistics and affine params, so equal outputs are not an accident of init."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(n, generator=g) * 0.5 + 1)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.2)
            m.eps, m.momentum = 1e-3, 0.03  # ultralytics' values; must survive the rewrite


@pytest.mark.parametrize("cfg, block", [("yolov8n.yaml", C2f), ("yolo11n.yaml", C3k2), ("yolo26n.yaml", C3k2)])
def test_split_is_equivalent_and_merges_back_exactly(cfg, block):
    torch.manual_seed(0)
    model = DetectionModel(cfg, nc=3, verbose=False)
    _randomize_bn(model)
    model.eval()
    n_blocks = sum(type(m) is block for m in model.modules())
    assert n_blocks > 0
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)[0]

    split = deepcopy(model)
    assert split_blocks(split) == n_blocks
    assert not any(type(m) in (C2f, C3k2) for m in split.modules())
    for m in split.modules():
        if isinstance(m, SplitC2f):
            assert m.cv0.conv.out_channels == m.cv1.conv.out_channels
            assert m.cv0.bn.eps == 1e-3 and m.cv1.bn.momentum == 0.03
    with torch.no_grad():
        out = split(x)[0]
    assert out.shape == ref.shape
    assert (out - ref).abs().max().item() <= 1e-5

    merged = deepcopy(split)
    assert merge_split_blocks(merged) == n_blocks
    assert sum(type(m) is block for m in merged.modules()) == n_blocks
    sd, ref_sd = merged.state_dict(), model.state_dict()
    assert sd.keys() == ref_sd.keys()
    assert all(torch.equal(sd[k], ref_sd[k]) for k in sd)
    for a, b in zip(merged.model, model.model):  # ultralytics' forward reads these layer attributes
        assert (a.i, a.f, a.type) == (b.i, b.f, b.type)


def test_train_mode_backward_through_split_blocks():
    model = DetectionModel("yolo11n.yaml", nc=3, verbose=False)
    split_blocks(model)
    model.train()
    loss = sum(o.sum() for o in model(torch.rand(2, 3, 64, 64)).values() if isinstance(o, torch.Tensor))
    loss.backward()
    grads = [m.cv0.conv.weight.grad for m in model.modules() if isinstance(m, SplitC2f)]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_merge_refuses_unequal_halves():
    block = SplitC2f(C3k2(16, 32, n=1))
    block.cv1.conv.weight = torch.nn.Parameter(block.cv1.conv.weight.data[:4])
    block.cv1.conv.out_channels = 4
    with pytest.raises(ValueError, match="lockstep"):
        block.merge()
