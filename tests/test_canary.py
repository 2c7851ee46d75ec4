"""The accuracy canary, CI-sized: the plain recipe's absolute mAP50-95 against the value recorded from 3 seeds.

Every other test compares within one run, so a change that makes every run learn worse (a dependency release that
changes what the data pipeline computes, a training-step or data-order change) passes them all. This run is the plain
recipe of ``+experiment=yolo11n_mcu`` (the dense student: ``prune=none distill=none``, the default optimizer,
augmentation, mosaic and its close, EMA) on the embedded generator at a scale CI affords (160 training images at
128 px, 20 epochs, scored once at the end on 120 val images, ~2 min on 2 cores). Its mAP50-95 must fall within the
band of the recorded seeds (``tests/canary_ci.json``: mean ± max(3 sd, floor)). Re-record deliberately, after
``python -m bench.canary`` at the default scale agrees: ``python -m tests.test_canary 0 1 2`` (one run per seed).
"""

from __future__ import annotations

import datetime
import json
import sys
from pathlib import Path

import pytest

from bench.canary import band
from tests.conftest import compose

pytestmark = pytest.mark.slow  # trains (make test-fast leaves it out)

RECORD = Path(__file__).with_name("canary_ci.json")
# the RAM levers off and data.imgsz: the recipe as recorded, whatever the experiment's device levers become
CANARY = ["+experiment=yolo11n_mcu", "prune=none", "distill=none", "quant=none", "export=none",
          "model.fused_act_layers=0", "model.pad_free_downsample=0", "data.embedded.n_train=160",
          "data.embedded.n_val=120", "data.embedded.imgsz=128", "data.imgsz=128",
          "trainer.max_epochs=20", "data.augment.close_mosaic=5", "trainer.check_val_every_n_epoch=20", "logger=none",
          "val.plot_every=0"]
FLOOR = 0.004  # the smallest band (mAP50-95 at this scale is ~0.05)


def canary_map(seed: int, run_dir: Path) -> float:
    from kdprune.train import run

    overrides = [o for o in CANARY if not o.startswith("+experiment")]
    return float(run(compose([*overrides, f"seed={seed}"], run_dir=run_dir, experiment="yolo11n_mcu"))["mAP50-95"])


def recorded_band() -> tuple[float, float, dict]:
    rec = json.loads(RECORD.read_text())
    mean, width = band(list(rec["values"].values()), floor=FLOOR)
    assert width is not None, "the canary's band needs >= 3 recorded seeds"
    return mean, width, rec


def test_plain_recipe_reaches_its_recorded_absolute_map(tmp_path):
    mean, band, rec = recorded_band()
    got = canary_map(0, tmp_path / "run")
    assert abs(got - mean) <= band, (
        f"plain-recipe canary mAP50-95 {got:.4f}, recorded {mean:.4f} ± {band:.4f} ({rec['commit']}, {rec['date']}): "
        "something changed what training computes (dependencies vs requirements.lock, the data pipeline, the step). "
        "Find it with python -m bench.pipeline_fingerprint and python -m bench.canary before re-recording.")


if __name__ == "__main__":  # re-record: python -m tests.test_canary SEED [SEED ...]
    import subprocess
    import tempfile

    from kdprune.environment import environment

    seeds = [int(s) for s in sys.argv[1:]] or [0, 1, 2]
    with tempfile.TemporaryDirectory() as d:
        values = {str(s): round(canary_map(s, Path(d) / f"s{s}"), 5) for s in seeds}
    commit = subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], text=True).strip()
    RECORD.write_text(json.dumps({"values": values, "commit": commit, "date": datetime.date.today().isoformat(),
                                  "config": CANARY, "packages": environment()["packages"]}, indent=1) + "\n")
    print(json.dumps(values))
