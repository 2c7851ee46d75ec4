"""Per-layer sensitivity: the allocator on synthetic curves, BN recalibration, and one end-to-end scan at 64 px whose
YAML is then loaded the way training loads it."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from PIL import Image
from torch import nn

from kdprune.errors import UserError
from kdprune.sensitivity import (
    Curve,
    allocate,
    check_config,
    hull_steps,
    make_curve,
    predicted_drops,
    recalibrate_bn,
    run,
)
from tests.conftest import TINY, compose

pytestmark = pytest.mark.slow  # trains, converts or exports (make test-fast leaves it out)

BUDGET = 2_300_000  # yolo11n at nc=8 is ~2.90 MB dense: forces real pruning, reachable at ratio 0.5
SCAN = [*TINY, "sensitivity.ratios=[0.25,0.5]", "sensitivity.bn_batches=2"]


# ---- the allocator on synthetic curves -----------------------------------------------------------------------------
def _curves(drops: dict[str, list[float]], saved: dict[str, list[float]], ratios=(0.0, 0.25, 0.5, 0.75)):
    return [Curve((i, k), list(ratios), drops[k], saved[k]) for i, k in enumerate(drops)]


def _additive(curves, dense: int, interaction: float = 0.0):
    """Size model for tests: dense minus the savings, plus ``interaction`` x the product of any two groups' savings
    (savings that overlap, as a layer's outputs and the next layer's inputs do)."""
    by_key = {c.key: c for c in curves}

    def size(alloc):
        s = [by_key[k].saved[by_key[k].ratios.index(r)] for k, r in alloc.items()]
        pairs = sum(a * b for i, a in enumerate(s) for b in s[i + 1:])
        return int(dense - sum(s) + interaction * pairs / dense)

    return size


def test_allocator_leaves_a_sensitive_group_alone_when_a_cheap_one_suffices():
    curves = _curves({"cheap": [0, 0.001, 0.002, 0.004], "sensitive": [0, 0.2, 0.4, 0.6]},
                     {"cheap": [0, 100, 200, 300], "sensitive": [0, 100, 200, 300]})
    a = allocate(curves, _additive(curves, 1000), 800)
    assert a.ratios == {(0, "cheap"): 0.5, (1, "sensitive"): 0.0}
    assert a.size == 800 and a.predicted_drop == pytest.approx(0.002)
    # a budget the cheap group cannot meet alone: the sensitive one gives only what is missing
    a = allocate(curves, _additive(curves, 1000), 600)
    assert a.ratios == {(0, "cheap"): 0.75, (1, "sensitive"): 0.25} and a.size <= 600


def test_allocator_verifies_non_additive_sizes_and_lands_near_the_budget():
    ratios = [round(0.05 * i, 2) for i in range(16)]
    drops = {f"g{i}": [(i + 1) * 0.01 * r ** 2 for r in ratios] for i in range(6)}
    saved = {f"g{i}": [2000 * (i % 3 + 1) * r for r in ratios] for i in range(6)}
    curves = _curves(drops, saved, ratios)
    calls = []
    additive = _additive(curves, 30_000, interaction=2.0)  # real savings are smaller than the summed predictions

    def size(alloc):
        calls.append(alloc)
        return additive(alloc)

    for budget in (27_000, 24_000, 21_000):
        a = allocate(curves, size, budget)
        assert a.size == size(a.ratios) <= budget
        assert a.size >= budget * 0.97  # the slack is spent, down to the 3 % tolerance training uses
    assert len(calls) < 200  # bisection on the Lagrangian path, not an enumeration


def test_allocator_unreachable_budget_raises_with_the_smallest_size():
    curves = _curves({"a": [0, 0.1, 0.2, 0.3]}, {"a": [0, 10, 20, 30]})
    with pytest.raises(ValueError) as e:
        allocate(curves, _additive(curves, 100), 60)
    assert e.value.args[0] == 70


def test_measured_drops_become_monotone_and_non_negative():
    assert predicted_drops([0.25, 0.5, 0.75], [-0.01, 0.03, 0.02]) == pytest.approx([0.0, 0.03, 0.03])
    c = make_curve((4, ""), [(0.0, 0.0), (0.1, 0.125), (0.15, 0.125), (0.5, 0.5)],
                   [(0.25, 0.02, 100.0), (0.5, 0.05, 200.0)])
    assert c.ratios == [0.0, 0.1, 0.5]  # 0.15 removes the same channels as 0.1: one candidate
    assert c.drop[1] == pytest.approx(0.01, abs=1e-5) and c.saved[1] == pytest.approx(50.0)  # interpolated
    assert [j for _, j in hull_steps(c)] == [1, 2]


# ---- BN recalibration ----------------------------------------------------------------------------------------------
def test_recalibrate_bn_is_a_cumulative_mean_over_the_batches_and_restores_the_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 1, bias=False), nn.BatchNorm2d(4, momentum=0.03)).eval()
    model[1].running_mean.fill_(5.0)
    batches = [{"img": torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)} for _ in range(3)]
    recalibrate_bn(model, batches, torch.device("cpu"))
    with torch.no_grad():
        means = [model[0](b["img"].float() / 255).mean((0, 2, 3)) for b in batches]
    assert torch.allclose(model[1].running_mean, torch.stack(means).mean(0), atol=1e-6)
    assert model[1].momentum == 0.03 and not model.training


# ---- end to end ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The scan runs ~80 forwards of tiny 64 px batches: one thread is as fast as two, and immune to OpenMP's
    spin-waiting when other processes share the cores (measured: 17 s alone, ~10 min beside a training run)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def scan(tmp_path_factory, cache_dir):
    run_dir = tmp_path_factory.mktemp("sensitivity")
    summary = run(compose([*SCAN, f"sensitivity.target_int8_bytes={BUDGET}"], run_dir, experiment="sensitivity"))
    return run_dir, summary


def test_csv_has_one_row_per_group_and_ratio_with_drops_from_the_baseline(scan):
    run_dir, summary = scan
    rows = list(csv.DictReader(open(run_dir / "sensitivity.csv")))
    groups = {(r["layer"], r["branch"]) for r in rows}
    assert len(groups) == len(summary["allocation"]) >= 15  # yolo11n: 15 layers + Detect reg/cls, minus stem/C2PSA
    assert ("23", "reg") in groups and ("23", "cls") in groups and ("0", "") not in groups and ("10", "") not in groups
    assert len(rows) == 2 * len(groups) and {r["ratio"] for r in rows} == {"0.25", "0.5"}
    dense = summary["dense"]
    for r in rows:
        for m in ("mAP50", "mAP50-95"):
            assert float(r[f"drop_{m}"]) == pytest.approx(dense[m] - float(r[m]), abs=2e-6)
        assert int(r["channels_after"]) < int(r["channels_before"])
        assert int(r["int8_bytes"]) < dense["int8_bytes"]
    by = {(r["layer"], r["branch"], r["ratio"]): int(r["int8_bytes"]) for r in rows}
    assert all(by[(la, b, "0.5")] < by[(la, b, "0.25")] for la, b in groups)


def test_heatmap_is_a_png(scan):
    run_dir, summary = scan
    with Image.open(run_dir / "sensitivity.png") as im:
        assert im.format == "PNG" and im.width > 200 and im.height > 0.32 * 110 * len(summary["allocation"])


def test_yaml_loads_in_prune_ratios_and_meets_the_budget_as_training_applies_it(scan, tmp_path):
    from omegaconf import OmegaConf

    from kdprune.data import resolve_data
    from kdprune.pruning import PruningPhase, int8_bytes, load_layer_ratios
    from kdprune.yolo import build_model, hyp_namespace, split_blocks

    run_dir, summary = scan
    path = run_dir / "prune_ratios.yaml"
    ratios = load_layer_ratios(path)
    assert set(ratios) == {int(k.split()[0]) for k in summary["allocation"]} and isinstance(ratios[23], list)
    assert any(v > 0 for v in summary["allocation"].values())
    cfg = compose([*TINY, "prune=gradual", f"prune.prune_ratios={path}", "prune.start_epoch=0", "prune.end_epoch=0",
                   "prune.fade_epochs=0",
                   "prune.steps=1"], tmp_path)
    assert all(v is None for v in cfg.prune.target.values())  # the ratios alone, as written
    data = resolve_data(None, cfg.cache_dir, OmegaConf.to_container(cfg.data.embedded), False)
    model = build_model(cfg.model.cfg, None, data["names"], hyp_namespace())
    split_blocks(model)
    cb = PruningPhase.from_config(cfg.prune, model, imgsz=64, max_epochs=1)
    cb.pruner.apply(model, cb.pruner.plan(model, cb.ratio * cb.schedule.fraction(1)))
    size = int8_bytes(model)
    assert size == summary["int8_bytes"] <= BUDGET
    assert size >= 0.85 * BUDGET  # pruned to the budget, not far past it
    assert "use: python -m kdprune +experiment=yolo11n_mcu prune.prune_ratios=" in path.read_text()


def test_unreachable_or_missing_budget_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="unreachable"):
        run(compose([*SCAN, "sensitivity.target_int8_bytes=100000"], tmp_path, experiment="sensitivity"))
    assert not (tmp_path / "sensitivity.csv").exists()  # refused before the scan
    with pytest.raises(UserError, match="target_int8_bytes is not set"):
        check_config(compose([*SCAN, "sensitivity.target_int8_bytes=null"], tmp_path, experiment="sensitivity"))
    with pytest.raises(UserError, match="sensitivity.ratios"):
        check_config(compose([*SCAN, "sensitivity.ratios=[0.5,1.0]"], tmp_path, experiment="sensitivity"))


def test_summary_records_the_run(scan):
    run_dir, summary = scan
    saved = json.loads((run_dir / "summary.json").read_text())
    assert saved["int8_bytes"] == summary["int8_bytes"] and saved["budget_int8_bytes"] == BUDGET
    assert saved["source"].startswith("untrained")
    one_shot = saved["one_shot"]  # the combined allocation and the uniform ratio, measured at the same budget
    assert one_shot["sensitivity"]["int8_bytes"] == saved["int8_bytes"]
    assert 0.97 * BUDGET <= one_shot["uniform"]["int8_bytes"] <= BUDGET and 0 < one_shot["uniform"]["ratio"] < 1


def test_cli_runs_the_sensitivity_task(tmp_path):
    """`python -m kdprune +experiment=sensitivity` reaches this task (not training): its own budget check answers,
    as one line with exit code 2, and leaves no run dir."""
    from tests.test_errors import assert_user_error, kdprune

    run_dir = tmp_path / "run"
    p = kdprune("+experiment=sensitivity", *SCAN[len(TINY):], "sensitivity.target_int8_bytes=100000", run_dir=run_dir)
    assert_user_error(p, "sensitivity.target_int8_bytes=100,000: unreachable", run_dir=run_dir)
    assert "Epoch" not in p.stderr


def test_scan_of_a_trained_model_sees_drops_that_grow_with_the_ratio(trained, tmp_path):
    """On untrained weights every drop is 0 and the scan could rank layers by nothing; a trained model must lose
    accuracy when its channels go, more at 0.75 than at 0.25 (BN recalibrated in both)."""
    data, best, s = trained
    assert s["mAP50-95"] > 0.1  # the fixture detects
    summary = run(compose([*TINY, f"data.yaml={data}", f"model.weights={best}", "sensitivity.ratios=[0.25,0.75]",
                           "sensitivity.bn_batches=2", f"sensitivity.target_int8_bytes={BUDGET}"], tmp_path,
                          experiment="sensitivity"))
    # the scan starts from best.pt (untrained weights score 0); its BN is recalibrated on 2 batches, so not equal:
    # measured 0.52 against the fixture's 0.61
    assert summary["dense"]["mAP50-95"] > 0.3
    rows = list(csv.DictReader(open(tmp_path / "sensitivity.csv")))
    drop = {r: [float(x["drop_mAP50-95"]) for x in rows if x["ratio"] == r] for r in ("0.25", "0.75")}
    # measured over two fixture trainings (CPU nondeterminism: mAP 0.68 / 0.61): 7 and 3 of 17 groups lose > 0.05 at
    # 0.75 (P3/P4 backbone, layer 16, the head; the P5 path barely matters for one large object at 64 px); sums 1.13
    # at 0.75 vs 0.11 at 0.25. Untrained weights give 0 everywhere.
    hurt = [i for i, d in enumerate(drop["0.75"]) if d > 0.05]
    assert len(hurt) >= 2 and all(drop["0.75"][i] > drop["0.25"][i] for i in hurt)
    assert sum(drop["0.75"]) > max(2 * sum(drop["0.25"]), 0.1)  # cutting more costs more
