"""The command line: `python -m kdprune -m +experiment=yolo11n_mcu prune.target.int8_bytes=A,B` runs a two-job sweep,
and the jobs share one teacher."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import ROOT, TINY


def test_multirun_sweep_runs_each_job_into_its_own_dir(tmp_path):
    sweep = tmp_path / "sweep"
    args = [a for a in TINY if not a.startswith("trainer.max_epochs")]
    p = subprocess.run(
        [sys.executable, "-m", "kdprune", "-m", "+experiment=yolo11n_mcu", *args, "trainer.max_epochs=2",
         "prune.start_epoch=0", "prune.end_epoch=0", "prune.steps=1", "prune.target.int8_bytes=1500000,2000000",
         "teacher.cfg=yolov8n.yaml", "teacher.epochs=1", "quant.start_epoch=-1", "quant.freeze_bn_epoch=-1",
         "quant.freeze_observer_epoch=-1", "export.formats=[]",
         "logger=none", f"hydra.sweep.dir={sweep}"],
        cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"}, capture_output=True, text=True, timeout=600,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    summaries = {d.name: json.loads((d / "summary.json").read_text()) for d in sorted(sweep.iterdir()) if d.is_dir()}
    assert sorted(summaries) == ["0", "1"]
    for k, budget in (("0", 1_500_000), ("1", 2_000_000)):
        assert summaries[k]["pruning"]["target"] == {"int8_bytes": budget}
        assert 0.97 * budget <= summaries[k]["int8_bytes_est"] <= budget
        assert summaries[k]["quant"]["name"] == "int8_qat" and summaries[k]["quant"]["observers_frozen"]
    # the experiment distils: one teacher, trained by at most one job (none if this session's cache had it)
    assert summaries["0"]["teacher"]["weights"] == summaries["1"]["teacher"]["weights"]
    assert not (sweep / "1" / "teacher").exists()
    for k in ("0", "1"):
        assert (sweep / k / "weights" / "best.pt").is_file()
        assert (sweep / k / ".hydra" / "overrides.yaml").is_file()
