"""Pruning without training: schedules, allocation, budgets, and one prune step on each supported YOLO family."""

from __future__ import annotations

from copy import deepcopy

import pytest
import torch
from torch import nn

from kdprune.errors import UserError
from kdprune.pruning import (
    PruneSchedule,
    Unit,
    YoloPruner,
    channels_to_remove,
    count_params,
    epoch_index,
    fraction_at,
    int8_bytes,
    keep_counts,
    measure,
    solve_ratio,
)
from kdprune.pruning.budget import INT8_BYTES_PER_LAYER
from kdprune.yolo import SplitC2f, hyp_namespace, merge_split_blocks, split_blocks
from kdprune.yolo.structure import head_outputs
from tests.conftest import val_args


# ---- schedules -----------------------------------------------------------------------------------------------------
def test_cubic_schedule_front_loads_and_ends_at_one():
    f = [fraction_at(k, 4, "cubic") for k in range(5)]
    assert f[0] == 0.0 and f[-1] == 1.0
    assert f[1] == pytest.approx(1 - 0.75 ** 3)
    assert all(a < b for a, b in zip(f, f[1:]))
    steps = [b - a for a, b in zip(f, f[1:])]
    assert all(a > b for a, b in zip(steps, steps[1:]))  # big steps first
    assert [fraction_at(k, 4, "linear") for k in range(5)] == [0, 0.25, 0.5, 0.75, 1.0]
    assert fraction_at(1, 4, "oneshot") == 1.0
    with pytest.raises(UserError, match=r"prune.shape=exponential: unknown pruning schedule shape; choose one of cub"):
        fraction_at(1, 4, "exponential")


def test_schedule_epochs_and_validation():
    s = PruneSchedule(2, 10, 4, "cubic")
    assert s.epochs() == [2, 5, 7, 10]
    assert s.validate(25) is None
    assert "end_epoch" in s.validate(10)  # no recovery epoch left
    assert "at most" in PruneSchedule(2, 3, 4).validate(25)  # 4 steps in 2 epochs
    one = PruneSchedule(3, 10, 4, "oneshot")
    assert one.epochs() == [3] and one.fraction(1) == 1.0


def test_pruning_epochs_count_from_the_end_like_quant():
    """prune.start_epoch/end_epoch = -k: the k-th epoch from the end, as quant.start_epoch (one function for both)."""
    from kdprune.pruning import check_prune_config
    from tests.conftest import compose

    cfg = compose(["prune=gradual", "prune.start_epoch=-18", "prune.end_epoch=-15", "prune.target.ratio=0.3"])
    schedule, _, _ = check_prune_config(cfg.prune, 25)
    assert schedule.epochs() == [7, 8, 9, 10]
    assert epoch_index(-4, 25) == 21 and epoch_index(3, 25) == 3


def test_prune_shape_is_read_and_its_former_name_is_gone():
    """prune.shape sets the schedule's shape; prune.schedule, its former name (deprecated with a warning since the
    rename), is now an unknown key, and a wrong shape is an error that names prune.shape and the valid ones."""
    from hydra.errors import ConfigCompositionException

    from kdprune.errors import UserError
    from kdprune.pruning import check_prune_config
    from tests.conftest import compose

    base = ["prune=gradual", "prune.target.ratio=0.3", "prune.start_epoch=2", "prune.end_epoch=10"]
    schedule, _, _ = check_prune_config(compose([*base, "prune.shape=cubic"]).prune, 25)
    assert schedule.shape == "cubic" and schedule.fraction(1) > 0.25  # cubic front-loads; linear would give 0.25
    schedule, _, _ = check_prune_config(compose([*base, "prune.shape=oneshot"]).prune, 25)
    assert schedule.epochs() == [2] and schedule.fraction(1) == 1.0
    with pytest.raises(ConfigCompositionException, match="schedule"):
        compose([*base, "prune.schedule=oneshot"])
    with pytest.raises(UserError, match="prune.shape=exp: unknown pruning schedule shape; choose one of cubic"):
        check_prune_config(compose([*base, "prune.shape=exp"]).prune, 25)


# ---- allocation ----------------------------------------------------------------------------------------------------
def _unit(name, n, scores=None, **kw):
    return Unit(name, n, n, torch.tensor(scores, dtype=torch.float) if scores is not None else torch.arange(n).float(),
                **kw)


def test_local_allocation_rounds_to_multiples_and_removes_lowest_scores():
    units = [_unit("a", 64), _unit("b", 40), _unit("c", 6), _unit("d", 64, weight=0.0)]
    keep = keep_counts(units, 0.3, round_to=8)
    assert keep == {"a": 48, "b": 32, "c": 6, "d": 64}  # 44.8 -> 48, 28 -> 32 (half up), narrower than 8: whole
    assert all(v % 8 == 0 for k, v in keep.items() if k != "c")
    idx = channels_to_remove(units, keep)
    assert idx["a"] == list(range(16))  # scores are arange: the 16 lowest are 0..15
    assert "c" not in idx and "d" not in idx


def test_coupled_halves_keep_one_width_under_global_ranking():
    lo, hi = torch.linspace(0, 1, 64), torch.linspace(10, 11, 64)
    units = [_unit("x.cv0", 64, lo.tolist(), couple="x"), _unit("x.cv1", 64, hi.tolist(), couple="x"),
             _unit("y", 64, torch.linspace(5, 6, 64).tolist())]
    keep = keep_counts(units, 0.4, global_ranking=True, round_to=8)
    assert keep["x.cv0"] == keep["x.cv1"]
    for f in (0.3, 0.5, 0.7):  # an intermediate step shares its blocks out per couple, never per half
        half = keep_counts(units, 0.4, global_ranking=True, round_to=8, fraction=f)
        assert half["x.cv0"] == half["x.cv1"] >= keep["x.cv0"]
    free = keep_counts([_unit("x.cv0", 64, lo.tolist()), _unit("x.cv1", 64, hi.tolist())], 0.4, global_ranking=True)
    assert free["x.cv0"] < free["x.cv1"]  # without the coupling, global ranking would split them


@pytest.mark.parametrize("shape", ["cubic", "linear"])
@pytest.mark.parametrize("global_ranking", [False, True])
def test_every_step_removes_its_share_of_the_blocks_and_the_last_lands_on_the_ratio(global_ranking, shape):
    """yolo11n-like widths, 30 %, 4 steps. Scaling the ratio per step made cubic's step 4 (1.6 %) round to step 3's
    widths (it removed nothing); rounding each layer down put most of a linear schedule into its last step. Each step
    must remove its share of all blocks (within one block) and the last must reach the one-shot widths."""
    widths = [16, 32, 64, 64, 128, 128, 256, 256, 64, 80]
    units = [_unit(str(i), n) for i, n in enumerate(widths)]
    final = keep_counts(units, 0.3, global_ranking=global_ranking)
    total = sum(n - final[str(i)] for i, n in enumerate(widths)) // 8  # blocks the whole schedule removes
    removed = []
    for k in range(1, 5):
        keep = keep_counts(units, 0.3, global_ranking=global_ranking, round_to=8, fraction=fraction_at(k, 4, shape))
        assert all(v % 8 == 0 and v <= u.current for u, v in zip(units, keep.values()))
        removed.append(sum(u.current - keep[u.name] for u in units) // 8)
        for u in units:
            u.scores = u.scores[-keep[u.name]:]  # arange scores: the lowest go
            u.current = keep[u.name]
    share = [fraction_at(k, 4, shape) - fraction_at(k - 1, 4, shape) for k in range(1, 5)]
    assert all(r > 0 for r in removed), removed
    assert all(abs(r - s * total) <= 1 for r, s in zip(removed, share)), (removed, [s * total for s in share])
    assert {u.name: u.current for u in units} == final


def test_allocation_never_grows_a_layer_back():
    u = Unit("a", 64, 32, torch.arange(32).float())
    assert keep_counts([u], 0.1, round_to=8)["a"] == 32


# ---- budgets -------------------------------------------------------------------------------------------------------
def test_int8_estimate_counts_weights_and_per_channel_overhead():
    net = nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.Conv2d(16, 8, 1, bias=False), nn.Flatten(),
                        nn.Linear(8, 4))
    weights = 16 * 3 * 9 + 8 * 16 + 4 * 8
    assert int8_bytes(net) == weights + 28 * (16 + 8 + 4) + INT8_BYTES_PER_LAYER * 3  # measured: tests/test_int8_size
    assert int8_bytes(net, per_channel=False) == weights + 4 * (16 + 8 + 4) + INT8_BYTES_PER_LAYER * 3  # int32 bias


def test_solver_lands_within_tolerance_and_reports_the_minimum():
    cost = lambda r: int(1_000_000 * (1 - r) ** 2) + 50_000  # noqa: E731
    r, c, over = solve_ratio(cost, 600_000)
    assert 0.97 * 600_000 <= c <= 600_000 and cost(r) == c and cost(over) > 600_000 and over < r
    assert solve_ratio(cost, 2_000_000) == (0.0, 1_050_000, 0.0)
    with pytest.raises(ValueError) as e:
        solve_ratio(cost, 40_000)
    assert e.value.args[0] == cost(0.999)


# ---- one prune step on real YOLO graphs ------------------------------------------------------------------------------
def _model(cfg: str):
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    m = DetectionModel(cfg, nc=3, verbose=False)
    m.args = hyp_namespace()
    split_blocks(m)
    return m.train()


def _batch(x):
    return {"img": x, "batch_idx": torch.tensor([0.0, 1.0]), "cls": torch.tensor([[1.0], [2.0]]),
            "bboxes": torch.tensor([[0.5, 0.5, 0.3, 0.3], [0.4, 0.4, 0.2, 0.2]])}


@pytest.mark.parametrize("cfg", ["yolov8n.yaml", "yolo11n.yaml", "yolo26n.yaml"])
def test_one_prune_step_keeps_the_model_working(cfg):
    model = _model(cfg)
    x = torch.rand(2, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        ref = model(x)[0]
    model.train()
    head_before = [m.out_channels for m in head_outputs(model)]
    stem_before = model.model[0].conv.out_channels
    params0 = count_params(model)

    pruner = YoloPruner(model)
    pruner.apply(model, pruner.plan(model, 0.3))

    assert count_params(model) < 0.75 * params0
    assert [m.out_channels for m in head_outputs(model)] == head_before  # box/class logits and DFL keep widths
    assert model.model[0].conv.out_channels == stem_before
    for m in model.modules():
        if isinstance(m, SplitC2f):
            assert m.cv0.conv.out_channels == m.cv1.conv.out_channels  # halves in lockstep
    model.train()
    preds = model(x)
    loss, _ = model.init_criterion()(preds, _batch(x))
    loss.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    model.eval()
    with torch.no_grad():
        out = model(x)[0]
    assert out.shape == ref.shape  # same boxes/classes per anchor (or per detection for YOLO26)
    merged = deepcopy(model)
    merge_split_blocks(merged)  # written back as ultralytics' blocks, same function
    assert not any(isinstance(m, SplitC2f) for m in merged.modules())
    with torch.no_grad():
        assert torch.allclose(merged(x)[0], out, atol=1e-5)


def test_budget_is_met_within_three_percent():
    model = _model("yolo11n.yaml")
    pruner = YoloPruner(model)
    budget = int(0.7 * int8_bytes(model))
    ratio, _ = pruner.solve(model, "int8_bytes", budget, 64)
    pruner.apply(model, pruner.plan(model, ratio))
    assert 0.97 * budget <= int8_bytes(model) <= budget
    with pytest.raises(ValueError) as e:
        pruner.solve(model, "params", 1000, 64)
    assert e.value.args[0] > 100_000  # the minimum with every prunable layer at round_to channels


def test_layer_ratios_prune_only_listed_layers_and_split_the_head():
    model = _model("yolov8n.yaml")
    detect = len(model.model) - 1
    pruner = YoloPruner(model, layer_ratios={4: 0.5, detect: [0.0, 0.5]})
    before = pruner.channels(model)
    pruner.apply(model, pruner.plan(model, 1.0))
    after = pruner.channels(model)
    assert after[4][0] == before[4][0] // 2
    assert all(after[i] == before[i] for i in before if i not in (4, detect))
    head = model.model[-1]
    assert head.cv2[0][0].conv.out_channels == 64 and head.cv3[0][0].conv.out_channels < 64  # reg kept, cls pruned
    with pytest.raises(ValueError, match="layer 99 does not exist"):
        YoloPruner(_model("yolov8n.yaml"), layer_ratios={99: 0.5})


def test_shipped_ratio_examples_load(tmp_path):
    from kdprune.pruning import load_layer_ratios, ratios_path

    for name in ("yolov8n", "yolo11n"):
        model = _model(f"{name}.yaml")
        pruner = YoloPruner(model, layer_ratios=load_layer_ratios(ratios_path(name)))  # by name, as the config does
        before = measure(model, "params", 64)
        pruner.apply(model, pruner.plan(model, 1.0))
        assert measure(model, "params", 64) < before


@pytest.mark.parametrize("cfg", ["yolo11n.yaml", "yolo26n.yaml"])
def test_attention_kept_whole_by_default_or_pruned_in_its_ffn_only(cfg):
    from ultralytics.nn.modules.block import Attention, PSABlock

    x = torch.rand(2, 3, 64, 64)
    for mode in ("keep", "ffn"):
        model = _model(cfg)
        attn0 = [(a.num_heads, a.key_dim, a.head_dim, a.qkv.conv.out_channels, a.proj.conv.out_channels)
                 for a in model.modules() if isinstance(a, Attention)]
        ffn0 = [b.ffn[0].conv.out_channels for b in model.modules() if isinstance(b, PSABlock)]
        pruner = YoloPruner(model, attention=mode)
        pruner.apply(model, pruner.plan(model, 0.5))
        attn = [(a.num_heads, a.key_dim, a.head_dim, a.qkv.conv.out_channels, a.proj.conv.out_channels)
                for a in model.modules() if isinstance(a, Attention)]
        ffn = [b.ffn[0].conv.out_channels for b in model.modules() if isinstance(b, PSABlock)]
        assert attn == attn0  # heads, key_dim and head_dim always valid
        assert (ffn == ffn0) if mode == "keep" else all(f == f0 // 2 for f, f0 in zip(ffn, ffn0))
        model.eval()
        merged = deepcopy(model)
        merge_split_blocks(merged)
        with torch.no_grad():
            assert torch.allclose(merged(x)[0], model(x)[0], atol=1e-5)


def test_ema_follows_the_pruned_model():
    """ultralytics' EMA caches its tensor pairs: after a prune it must average the new tensors, not the old ones."""
    from kdprune.yolo import ModelEMA, refresh_ema

    model = _model("yolov8n.yaml")
    ema = ModelEMA(model)
    ema.update(model)  # builds the cache
    pruner = YoloPruner(model)
    plan = pruner.plan(model, 0.3)
    pruner.apply(model, plan)
    pruner.apply(ema.ema, plan)
    refresh_ema(ema)
    assert [p.shape for p in ema.ema.parameters()] == [p.shape for p in model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    before = [p.clone() for p in ema.ema.parameters()]
    ema.update(model)
    moved = [not torch.equal(a, b) for a, b in zip(before, ema.ema.parameters()) if a.is_floating_point()]
    assert all(moved)


def test_taylor_scores_need_gradients_but_a_budget_solves_without_them():
    model = _model("yolov8n.yaml")
    pruner = YoloPruner(model, importance="taylor")
    ratio, cost = pruner.solve(model, "params", int(0.6 * count_params(model)), 64)  # no .grad yet: magnitude
    assert 0 < ratio < 1
    x = torch.rand(2, 3, 64, 64)
    loss, _ = model.init_criterion()(model(x), _batch(x))
    loss.sum().backward()
    units = pruner.units(model)
    assert not all(torch.equal(u.scores, v.scores) for u, v in zip(units, YoloPruner(model).units(model)))
    pruner.apply(model, pruner.plan(model, ratio, units))
    assert count_params(model) == cost


def test_bn_sparsity_adds_the_l1_subgradient_to_bn_gammas():
    from kdprune.module import DetectionModule

    model = _model("yolov8n.yaml")
    module = DetectionModule(model, model.args, {0: "a", 1: "b", 2: "c"}, {}, val=val_args())
    x = torch.rand(2, 3, 64, 64)
    module.criterion(model(x), _batch(x))[0].sum().backward()
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        bns[0].weight[:3] = torch.tensor([-1.0, 0.5, 2.0])
    grads = [m.weight.grad.clone() for m in bns]
    module.set_bn_sparsity(1e-3)
    module._bn_sparsity()
    for m, g in zip(bns, grads):
        torch.testing.assert_close(m.weight.grad - g, 1e-3 * torch.sign(m.weight.detach()))
    torch.testing.assert_close(bns[0].weight.grad[:3] - grads[0][:3], torch.tensor([-1e-3, 1e-3, 1e-3]))
