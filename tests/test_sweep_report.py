"""The sweep summary's logic on hand-made run dirs: statuses, the INT8 score and its budget, the Pareto front, the
labels of the plot, and byte-identical rebuilds."""

from __future__ import annotations

import json

import yaml

from kdprune.report import collect, deployed, summarize
from kdprune.report.pareto import labels
from kdprune.report.sweep import pareto_front


def job(root, name, *, budget=2_000_000, stages=None, overrides=(), failed=None, est=None, summary=True):
    d = root / name
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(list(overrides)))
    if failed is not None:
        (d / "failed.json").write_text(json.dumps({"error": failed, "kind": "user", "wall_time_s": 1.0}))
        return d
    if summary:
        (d / "config.yaml").write_text(yaml.safe_dump({"prune": {"target": {"int8_bytes": budget}},
                                                       "export": {"max_bytes": budget}}))
        (d / "summary.json").write_text(json.dumps({"mAP50-95": 0.3, "mAP50": 0.5, "params": 1000, "gflops": 0.5,
                                                    "int8_bytes_est": est, "wall_time_s": 10.0,
                                                    "stages": stages or []}))
    return d


def tfl(map5095, nbytes, status="ok", note=""):
    return [{"stage": "QAT fake-quant", "mAP50-95": map5095 + 0.01, "mAP50": 0.5, "bytes": None, "status": "ok"},
            {"stage": "TFLite INT8", "mAP50-95": map5095, "mAP50": 0.5, "bytes": nbytes, "status": status,
             "note": note}]


def test_statuses_scores_and_front(tmp_path):
    job(tmp_path, "0", stages=tfl(0.31, 1_900_000), overrides=["a=1"])
    job(tmp_path, "1", stages=tfl(0.25, 1_500_000), overrides=["a=2"])
    job(tmp_path, "2", stages=tfl(0.20, 1_700_000), overrides=["a=3"])  # beaten by job 1: smaller and better
    job(tmp_path, "3", stages=tfl(0.35, 2_100_000, "failed", "model_int8.tflite is 2,100,000 bytes, over the budget"),
        overrides=["a=4"])
    job(tmp_path, "4", failed="prune.target.int8_bytes=1,000: unreachable", overrides=["a=5"])
    job(tmp_path, "5", summary=False, overrides=["a=6"])  # interrupted
    job(tmp_path, "10", stages=[], est=1_000_000, overrides=["a=7"])  # no INT8 stage: the float model and the estimate
    rows = {r["job"]: r for r in collect([tmp_path])}
    assert list(rows) == ["0", "1", "2", "3", "4", "5", "10"]  # numeric job order
    assert [rows[k]["status"] for k in rows] == ["ok", "ok", "ok", "over budget", "failed", "incomplete", "ok"]
    assert rows["0"]["score"] == 0.31 and rows["0"]["int8_source"] == "TFLite INT8"
    assert rows["3"]["score"] == -1.05  # infeasible: below any feasible job, -bytes/budget
    assert rows["4"]["score"] is None and "unreachable" in rows["4"]["error"]
    assert rows["10"]["int8_bytes"] == 1_000_000 and rows["10"]["int8_mAP50-95"] == 0.3
    front = [r["job"] for r in pareto_front(list(rows.values()))]
    assert front == ["10", "0", "3"]  # 1 MB at 0.30 beats jobs 1 and 2; 3 is over budget but still a trade-off
    assert [k for k, r in rows.items() if r["pareto"]] == ["0", "3", "10"]


def test_deployed_prefers_the_tflite_file():
    s = {"mAP50-95": 0.3, "int8_bytes_est": 5, "stages": [
        {"stage": "ONNX INT8", "mAP50-95": 0.29, "mAP50": 0.4, "bytes": 3_300_000},
        {"stage": "TFLite INT8", "mAP50-95": 0.28, "mAP50": 0.41, "bytes": 1_900_000, "arena_bytes": 380_000}]}
    assert deployed(s) == {"int8_source": "TFLite INT8", "int8_mAP50-95": 0.28, "int8_mAP50": 0.41,
                           "int8_bytes": 1_900_000, "arena_bytes": 380_000}  # flash and RAM of the device file
    s["stages"] = s["stages"][:1]  # the QDQ ONNX file is not the deployed size: the estimate is
    assert deployed(s)["int8_bytes"] == 5 and deployed(s)["int8_source"] == "ONNX INT8"


def test_summarize_writes_csv_plot_best_and_rebuilds_identically(tmp_path):
    sweep = tmp_path / "sweep"
    job(sweep, "0", stages=tfl(0.30, 1_900_000), overrides=["+experiment=x", "prune.target.int8_bytes=2000000",
                                                             "distill=none"])
    job(sweep, "1", stages=tfl(0.33, 1_950_000), overrides=["+experiment=x", "prune.target.int8_bytes=2000000",
                                                             "distill=kd"])
    rows, top = summarize([sweep], sweep)
    assert top["job"] == "1"
    best = yaml.safe_load((sweep / "best.yaml").read_text())
    assert best["command"] == "python -m kdprune +experiment=x prune.target.int8_bytes=2000000 distill=kd"
    assert (sweep / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    first = (sweep / "sweep_summary.csv").read_bytes()
    summarize([sweep / "0", sweep / "1"], tmp_path / "elsewhere")
    assert (tmp_path / "elsewhere" / "sweep_summary.csv").read_bytes() == first
    assert labels(rows) == {"0": "distill=none", "1": "distill=kd"}  # only what the sweep varied


def test_labels_shorten_paths_and_long_lists():
    rows = [{"job": "0", "overrides": "seed=0 prune.prune_ratios=/a/b/ratios.yaml"},
            {"job": "1", "overrides": "seed=1"},
            {"job": "2", "overrides": " ".join(f"k{i}={i}" for i in range(30))}]
    out = labels(rows)
    assert out["0"] == "prune_ratios=ratios.yaml seed=0" and out["1"] == "seed=1"
    assert len(out["2"]) == 48 and out["2"].endswith("…")
