"""The command line: `python -m kdprune -m +experiment=yolo11n_mcu prune.target.int8_bytes=A,B,C` runs every job, the
jobs share one teacher, a failing job is a row of the summary, and `python -m kdprune.report` rebuilds it."""

from __future__ import annotations

import csv
import json

import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from tests.conftest import TINY
from tests.conftest import run_cli as kdprune

pytestmark = pytest.mark.slow  # trains, converts or exports (make test-fast leaves it out)

SWEEP_ARGS = ["+experiment=yolo11n_mcu", "trainer.max_epochs=2", "prune.start_epoch=0", "prune.end_epoch=0",
              "prune.fade_epochs=0",
              "prune.steps=1", "teacher.cfg=yolov8n.yaml", "teacher.epochs=1", "quant.start_epoch=-1",
              "quant.freeze_bn_epoch=-1", "quant.freeze_observer_epoch=-1", "export.formats=[]"]


def read_csv(path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def hparams_of(run_dir) -> dict:
    """The HParams entry TensorBoard shows for a run: its hparams and the metric tags it lists."""
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    info = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    values = {k: (v.number_value if v.HasField("number_value") else v.string_value) for k, v in info.hparams.items()}
    return {"hparams": values, "scalars": set(acc.Tags()["scalars"]), "acc": acc}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Three jobs of the MCU experiment at 64 px; the third asks for an impossible 1,000-byte model."""
    d = tmp_path_factory.mktemp("cli") / "sweep"
    args = [a for a in TINY if not a.startswith("trainer.max_epochs")]
    p = kdprune("-m", *args, *SWEEP_ARGS, "prune.target.int8_bytes=1500000,2000000,1000", "logger=tensorboard",
                f"hydra.sweep.dir={d}")
    return d, p


def test_every_job_runs_into_its_own_dir_and_shares_one_teacher(sweep):
    d, p = sweep
    assert "Traceback" not in p.stderr, p.stderr[-3000:]
    summaries = {k: json.loads((d / k / "summary.json").read_text()) for k in ("0", "1")}
    for k, budget in (("0", 1_500_000), ("1", 2_000_000)):
        assert summaries[k]["pruning"]["target"] == {"int8_bytes": budget, "arena_bytes": 393_216}  # + the part's RAM
        assert 0.97 * budget <= summaries[k]["int8_bytes_est"] <= budget
        assert summaries[k]["quant"]["name"] == "int8_qat" and summaries[k]["quant"]["observers_frozen"]
        assert (d / k / "weights" / "best.pt").is_file() and (d / k / ".hydra" / "overrides.yaml").is_file()
    # the experiment distils: one teacher, trained by at most one job (none if this session's cache had it)
    assert summaries["0"]["teacher"]["weights"] == summaries["1"]["teacher"]["weights"]
    assert not (d / "1" / "teacher").exists()


def test_a_failed_job_is_a_row_and_stops_neither_the_others_nor_the_summary(sweep):
    d, p = sweep
    assert p.returncode == 2, p.stderr[-3000:]  # every failure was a user error; the summary was still written
    rows = read_csv(d / "sweep_summary.csv")
    assert [r["job"] for r in rows] == ["0", "1", "2"]
    assert [r["status"] for r in rows] == ["ok", "ok", "failed"]
    assert "unreachable" in rows[2]["error"] and rows[2]["int8_mAP50-95"] == ""
    assert "prune.target.int8_bytes=1000" in rows[2]["overrides"].split()
    failed = json.loads((d / "2" / "failed.json").read_text())
    assert failed["kind"] == "user" and sorted(x.name for x in (d / "2").iterdir()) == [".hydra", "failed.json"]
    for r, budget in zip(rows[:2], (1_500_000, 2_000_000)):
        s = json.loads((d / r["job"] / "summary.json").read_text())
        qat = next(x for x in s["stages"] if x["stage"] == "QAT fake-quant")
        assert r["int8_source"] == "QAT fake-quant" and float(r["int8_mAP50-95"]) == qat["mAP50-95"]
        assert int(r["int8_bytes"]) == s["int8_bytes_est"] and int(r["budget_bytes"]) == budget
        assert float(r["score"]) == qat["mAP50-95"] and float(r["wall_time_s"]) == s["wall_time_s"]
        assert float(r["qat_fake_quant_mAP50-95"]) == qat["mAP50-95"] and int(r["params"]) == s["params"]
    assert "job 2 failed" in p.stdout and "sweep_summary.csv" in p.stdout
    png = (d / "pareto.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    best = yaml.safe_load((d / "best.yaml").read_text())
    ok = [r for r in rows if r["status"] == "ok"]
    top = max(ok, key=lambda r: (float(r["score"]), -int(r["int8_bytes"])))
    assert best["job"] == top["job"] and best["command"] == f"python -m kdprune {top['overrides']}"


def test_report_rebuilds_the_identical_summary(sweep, tmp_path):
    d, _ = sweep
    p = kdprune(str(d), "--out", str(tmp_path), module="kdprune.report", timeout=120)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "sweep_summary.csv").read_bytes() == (d / "sweep_summary.csv").read_bytes()
    assert (tmp_path / "best.yaml").read_text() == (d / "best.yaml").read_text()
    # an interrupted sweep: a job that never finished is a row too
    (tmp_path / "runs" / "3" / ".hydra").mkdir(parents=True)
    (tmp_path / "runs" / "3" / ".hydra" / "overrides.yaml").write_text("- prune.target.int8_bytes=1200000\n")
    p = kdprune(str(d / "0"), str(d / "1"), str(tmp_path / "runs" / "3"), "--out", str(tmp_path / "mixed"),
                module="kdprune.report", timeout=120)
    assert p.returncode == 0, p.stderr
    rows = read_csv(tmp_path / "mixed" / "sweep_summary.csv")
    assert [r["status"] for r in rows] == ["ok", "ok", "incomplete"]
    assert kdprune(str(tmp_path / "nothing"), module="kdprune.report").returncode == 2


def test_tensorboard_hparams_lists_each_job_with_its_final_metrics(sweep):
    d, _ = sweep
    rows = {r["job"]: r for r in read_csv(d / "sweep_summary.csv")}
    for k, budget in (("0", 1_500_000), ("1", 2_000_000)):
        hp = hparams_of(d / k)
        assert hp["hparams"]["prune.target.int8_bytes"] == budget  # the job's override, as a number
        assert hp["hparams"]["distill"] == "kd" and hp["hparams"]["quant"] == "int8_qat"
        for tag in ("final/int8_mAP50-95", "final/int8_bytes", "final/params", "final/mAP50-95"):
            assert tag in hp["scalars"], (tag, hp["scalars"])
        assert hp["acc"].Scalars("final/int8_bytes")[-1].value == int(rows[k]["int8_bytes"])


def test_a_run_does_not_import_tensorflow_where_it_is_installed(tmp_path):
    """TensorBoard's compat layer imports TensorFlow wherever it is installed: 6.4 s and +510 MB peak memory on the
    2-core machine, for nothing (kdprune's TFLite route does not use it, and does not install it). A stand-in
    ``tensorflow`` package on the path, and a sitecustomize that records at exit whether the run imported it; the
    TensorBoard file must still hold the scalars and images (its stub writes them)."""
    hook = tmp_path / "hook"
    (hook / "tensorflow").mkdir(parents=True)
    (hook / "tensorflow" / "__init__.py").write_text("__version__ = '2.21.0'\n")
    (hook / "sitecustomize.py").write_text(
        "import atexit, importlib.util, os, sys\n"
        "assert importlib.util.find_spec('tensorflow').origin.startswith(os.path.dirname(__file__))\n"
        "atexit.register(lambda: open(os.environ['TF_PROBE'], 'w').write(str('tensorflow' in sys.modules)))\n")
    import os

    probe, run_dir = tmp_path / "probe.txt", tmp_path / "run"
    path = os.pathsep.join(p for p in (str(hook), os.environ.get("PYTHONPATH")) if p)
    p = kdprune(*TINY, "export=none", f"hydra.run.dir={run_dir}", PYTHONPATH=path, TF_PROBE=str(probe))
    assert p.returncode == 0, p.stderr[-3000:]
    assert probe.read_text() == "False"
    events = next((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    acc = EventAccumulator(str(events.parent))
    acc.Reload()
    assert "train/box_loss_epoch" in acc.Tags()["scalars"] and acc.Tags()["images"]
