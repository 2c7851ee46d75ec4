"""Gradual pruning without cliffs: the fade makes a removal lossless, the optimizer state and EMA of kept channels
survive it exactly (the moments survive entering QAT too), accumulated Taylor scores decide the cut, and bad fade
settings are one-line errors."""

from __future__ import annotations

from copy import deepcopy
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from kdprune.errors import UserError
from kdprune.pruning import ChannelFade, TaylorEMA, YoloPruner
from tests.conftest import TINY, compose, val_args
from tests.test_pruning import _batch, _model


def _out(model, x) -> torch.Tensor:
    with torch.no_grad():
        y = model(x)
    return y[0] if isinstance(y, (tuple, list)) else y


def test_a_faded_step_removes_its_channels_without_changing_the_output():
    model = _model("yolo11n.yaml")
    x = torch.rand(4, 3, 64, 64)
    model(x)  # one training-mode pass: BN running statistics that are not the identity
    model.eval()
    pruner = YoloPruner(model, importance="l2")
    plan = pruner.plan(model, 0.3)
    ref = _out(model, x)
    cut = deepcopy(model)
    pruner.apply(cut, plan)
    cliff = (_out(cut, x) - ref).abs().max().item()

    targets = pruner.bn_targets(model, plan)
    assert sum(len(v) for v in targets.values()) >= sum(len(v) for v in plan.values())  # coupled BNs too
    bn_name, idxs = next(iter(targets.items()))
    w0 = model.get_submodule(bn_name).weight.detach()[idxs].clone()
    fade = ChannelFade(targets, steps=3)
    fade.step(model)
    torch.testing.assert_close(model.get_submodule(bn_name).weight.detach()[idxs], w0 * (2 / 3))  # linear, 1/3 done
    fade.step(model)
    fade.step(model)
    assert fade.complete
    faded = _out(model, x)
    pruner.apply(model, plan)
    after = _out(model, x)
    assert (after - faded).abs().max().item() < 1e-4  # the removal itself loses nothing
    assert cliff > 1e-2  # while the same cut without the fade changes the output


def _stepped_module():
    """A DetectionModule (yolo11n, EMA on) whose AdamW took two real steps, with a stand-in trainer."""
    from kdprune.module import DetectionModule
    from kdprune.yolo import ModelEMA, build_optimizer

    model = _model("yolo11n.yaml")
    module = DetectionModule(model, model.args, {0: "a", 1: "b", 2: "c"}, {}, val=val_args())
    module._optim_args = (100, 1.0)
    opt, _ = build_optimizer(module.trainable(), model.args, 3, *module._optim_args)
    strategy = SimpleNamespace(optimizers=[opt], model=module)
    module.trainer = SimpleNamespace(strategy=strategy)
    module.ema = ModelEMA(model)
    x = torch.rand(2, 3, 64, 64)
    for _ in range(2):  # real Adam steps: every parameter has moments and a step count
        module.criterion(model(x), _batch(x))[0].sum().backward()
        opt.step()
        opt.zero_grad()
        module.ema.update(model)
    return module, model, opt, strategy


def test_entering_qat_keeps_the_optimizer_moments_and_starts_from_the_ema():
    module, model, opt, strategy = _stepped_module()
    old = {p: {k: v.clone() if torch.is_tensor(v) else v for k, v in st.items()} for p, st in opt.state.items()}
    ema = {k: v.clone() for k, v in module.ema.ema.state_dict().items()}
    module.compression.start_qat(module, 64)
    new = strategy.optimizers[0]
    assert module.qat is not None and module.ema is None
    assert len(old) > 100 and set(new.state) == set(old)  # the same tensors, every one with its state
    for p, st in old.items():
        assert torch.equal(new.state[p]["exp_avg"], st["exp_avg"]) and float(new.state[p]["step"]) == 2.0
    sd = model.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in ema.items())  # QAT trains on from the validated (EMA) weights


def test_a_pruning_step_carries_the_optimizer_state_and_ema_of_kept_channels_exactly():
    module, model, opt, strategy = _stepped_module()
    with torch.no_grad():  # state as a known function of the weights, so its indexing can be checked exactly
        stepped = {n for n, p in model.named_parameters() if p in opt.state}  # (not the frozen DFL)
        for p in opt.state:
            opt.state[p]["exp_avg"].copy_(3 * p)
            opt.state[p]["exp_avg_sq"].copy_(p * p)
        sd = model.state_dict()
        for k, v in module.ema.ema.state_dict().items():
            if v.is_floating_point():
                v.copy_(2 * sd[k])
    pruner = YoloPruner(model, importance="l2")
    plan = pruner.plan(model, 0.3)
    shapes = {n: p.shape for n, p in model.named_parameters()}
    index_map = module.compression.prune(module, pruner, plan)

    new = strategy.optimizers[0]
    assert new is not opt and module.pruning_history
    changed = [n for n, p in model.named_parameters() if p.shape != shapes[n]]
    assert changed and {f"model.{n}" for n in changed} <= set(index_map)
    assert len(stepped) > 100
    for n, p in model.named_parameters():
        if n not in stepped:
            assert p not in new.state, n
            continue
        st = new.state[p]
        assert torch.equal(st["exp_avg"], 3 * p.detach()) and torch.equal(st["exp_avg_sq"], p.detach() ** 2), n
        assert float(st["step"]) == 2.0, n
    sd = model.state_dict()
    for k, v in module.ema.ema.state_dict().items():
        if v.is_floating_point():
            assert v.shape == sd[k].shape and torch.equal(v, 2 * sd[k]), k


def test_accumulated_taylor_scores_average_the_steps_and_decide_the_cut():
    model = _model("yolo11n.yaml")
    acc = TaylorEMA(steps=2)  # decay 1/2
    terms = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        x = torch.rand(2, 3, 64, 64)
        model.zero_grad()
        model.init_criterion()(model(x), _batch(x))[0].sum().backward()
        terms.append({n: (p.detach() * p.grad).abs() for n, p in model.named_parameters() if p.grad is not None})
        acc.update(model)
    name = "model.0.conv.weight"
    torch.testing.assert_close(acc.acc[name], 0.5 * terms[0][name] + 0.5 * terms[1][name])

    pruner = YoloPruner(model, importance="taylor")
    unit = next(u for u in pruner.units(model) if u.current >= 32 and u.couple is None and u.weight > 0)
    conv = unit.name  # e.g. model.3.conv: its BN is the sibling .bn
    for k in acc.acc:
        acc.acc[k] = torch.ones_like(acc.acc[k])
    acc.acc[f"{conv}.weight"][:8] = 0  # on average, these 8 channels did nothing
    acc.acc[f"{conv[:-len('conv')]}bn.weight"][:8] = 0
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    pruner.use_accumulated(acc)
    units = pruner.units(model)
    assert all(torch.equal(p, weights[n]) for n, p in model.named_parameters())  # weights are back after scoring
    u = next(u for u in units if u.name == conv)
    ratio = 8 / unit.current + 1e-6
    assert pruner.plan(model, ratio, [u])[conv] == list(range(8))


@pytest.mark.parametrize("extra,needle", [
    (["prune.fade_epochs=2", "prune.start_epoch=2", "prune.importance_epochs=1"],
     "no room to score channels for an epoch and fade them"),
    (["prune.fade_epochs=4", "prune.start_epoch=3", "prune.importance_epochs=0"], "no room to fade them"),
    (["prune.fade_epochs=2", "prune.start_epoch=3", "prune.end_epoch=5", "prune.steps=3"], "longer than the pruning"),
    (["prune.fade_epochs=-1"], "must be >= 0"),
    (["prune.importance_epochs=-0.5"], "must be >= 0"),
])
def test_bad_fade_settings_are_one_line_errors(extra, needle):
    from ultralytics.nn.tasks import DetectionModel

    from kdprune.pruning import PruningPhase
    from kdprune.yolo import split_blocks

    cfg = compose([*TINY, "trainer.max_epochs=8", "prune=gradual", "prune.start_epoch=3", "prune.end_epoch=6",
                   "prune.steps=2", "prune.target.ratio=0.2", *extra])
    m = DetectionModel("yolo11n.yaml", nc=3, verbose=False)
    split_blocks(m)
    with pytest.raises(UserError) as e:
        PruningPhase.from_config(cfg.prune, m, imgsz=64, max_epochs=8)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_bn_targets_cover_every_bn_the_group_removes():
    model = _model("yolo11n.yaml")
    pruner = YoloPruner(model, importance="l2")
    plan = pruner.plan(model, 0.3)
    targets = pruner.bn_targets(model, plan)
    cut = deepcopy(model)
    pruner.apply(cut, plan)
    shrunk = {n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)
              and cut.get_submodule(n).num_features < m.num_features}
    assert set(targets) == shrunk
    for n, idxs in targets.items():
        assert len(idxs) == model.get_submodule(n).num_features - cut.get_submodule(n).num_features, n


@pytest.mark.parametrize("updates", [0, 3])
def test_a_step_before_any_accumulated_score_scores_fresh_batches(updates, monkeypatch):
    """With accumulated Taylor on (the default) a step that comes before any training step (epoch 0 of a fine-tune)
    has no accumulated scores: it scores taylor_batches fresh batches, as importance_epochs=0 does, rather than
    falling back to weight magnitude. Once the average has seen steps, no extra batches run."""
    from ultralytics.nn.tasks import DetectionModel

    from kdprune.pruning import PruningPhase
    from kdprune.yolo import split_blocks

    cfg = compose([*TINY, "trainer.max_epochs=4", "prune=gradual", "prune.start_epoch=0", "prune.end_epoch=0",
                   "prune.steps=1", "prune.fade_epochs=0", "prune.importance_epochs=1", "prune.target.ratio=0.2"])
    m = DetectionModel("yolo11n.yaml", nc=3, verbose=False)
    split_blocks(m)
    gp = PruningPhase.from_config(cfg.prune, m, imgsz=64, max_epochs=4)
    assert gp.taylor is not None
    gp.taylor.updates = updates
    calls = []
    trainer = SimpleNamespace(is_global_zero=True, strategy=SimpleNamespace(broadcast=lambda x, src: x))
    module = SimpleNamespace(model=m, trainer=trainer, accumulate_gradients=lambda batches: calls.append(batches))
    plan = gp._decide(module)
    assert plan and calls == ([gp.taylor_batches] if updates == 0 else [])


@pytest.mark.slow
def test_the_fade_runs_end_to_end_with_the_ema_and_the_step_has_no_cliff(trained, tmp_path):
    """The default path (``prune.fade_epochs=1``, the EMA on) in a real run from a trained model: the step's channels
    fade to zero in the trained model *and* its EMA over the epoch before the step, so removing them moves the EMA's
    val mAP50-95 by nothing (the step's ``cliff``); the same cut without the fade drops it. A fade that skipped the
    EMA, or ended early, would leave a cliff."""
    from kdprune.train import run

    data, best, _ = trained
    base = [f"data.yaml={data}", f"model.weights={best}", "data.imgsz=64", "data.batch=16", "data.val_batch=16",
            "data.workers=0", "data.augment.mosaic=0", "data.augment.close_mosaic=0", "trainer.max_epochs=3",
            "prune=gradual", "prune.start_epoch=2", "prune.end_epoch=2", "prune.steps=1", "prune.target.ratio=0.4",
            "prune.importance=l1", "val.plot_every=0", "logger=none", "optim.ema=true"]
    cliffs = {}
    for fade in (1, 0):
        s = run(compose([*base, f"prune.fade_epochs={fade}"], run_dir=tmp_path / f"fade{fade}"))
        step = s["pruning"]["steps"][0]
        assert step["epoch"] == 2 and step["channels_removed"] > 0 and step["mAP50-95_before"] > 0.1, step
        cliffs[fade] = step["cliff"]
    assert abs(cliffs[1]) <= 0.002 and cliffs[0] > 0.02, cliffs
