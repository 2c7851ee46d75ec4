"""bench.pair: pairs two arms seed by seed across sweep files, and refuses runs solved to different budgets."""

import json

import pytest

from bench import pair


def _sweep(path, arm, seeds, maps, params, imgsz=256, kd=True, per_run_seed=True):
    runs = [{"mAP50-95": m, "params": params, **({"seed": s} if per_run_seed else {})} for s, m in zip(seeds, maps)]
    path.write_text(json.dumps({"data": "shapes", "imgsz": imgsz, "kd": kd, "finetune": None, "overrides": [],
                                "seeds": seeds, "complete": True, "arms": [{"arm": arm, "runs": runs}]}))
    return path


def _main(monkeypatch, *argv):
    monkeypatch.setattr("sys.argv", ["pair.py", *map(str, argv)])
    pair.main()


def test_pairs_by_seed_across_files(tmp_path, monkeypatch, capsys):
    a = _sweep(tmp_path / "a.json", "fade", [0, 1], [0.30, 0.32], 1_879_504, per_run_seed=False)  # order of "seeds"
    b0 = _sweep(tmp_path / "b0.json", "oneshot", [1], [0.31], 1_879_300)
    b1 = _sweep(tmp_path / "b1.json", "oneshot", [2], [0.50], 1_879_300)  # no partner: not paired
    other = _sweep(tmp_path / "c.json", "oneshot", [0], [0.90], 1_879_300, imgsz=160)  # another scale: ignored
    _main(monkeypatch, "fade", "oneshot", a, b0, b1, other)
    out = capsys.readouterr().out
    assert "| 1 | 0.3200 | 0.3100 | +0.0100 |" in out
    assert "| 0 |" not in out and "| 2 |" not in out
    assert "+0.0100 ± 0.0000" in out


def test_refuses_pruned_runs_of_different_budgets(tmp_path, monkeypatch, capsys):
    a = _sweep(tmp_path / "a.json", "late_fade", [0], [0.17], 1_879_504)
    b = _sweep(tmp_path / "b.json", "oneshot", [0], [0.16], 1_689_976)  # the per-channel budget's model
    with pytest.raises(SystemExit) as e:
        _main(monkeypatch, "late_fade", "oneshot", a, b)
    assert e.value.code == 2
    assert "not the same size" in capsys.readouterr().err
    # the dense reference has no budget: pairing against it is allowed whatever its size
    d = _sweep(tmp_path / "d.json", "dense", [0], [0.18], 2_591_205)
    _main(monkeypatch, "late_fade", "dense", a, d)
    assert "-0.0100" in capsys.readouterr().out


def test_a_seed_in_two_files_is_an_error(tmp_path, monkeypatch):
    a = _sweep(tmp_path / "a.json", "fade", [0], [0.30], 1_879_504)
    b = _sweep(tmp_path / "b.json", "fade", [0], [0.31], 1_879_504)
    with pytest.raises(SystemExit, match="keep one"):
        _main(monkeypatch, "fade", "fade", a, b)
