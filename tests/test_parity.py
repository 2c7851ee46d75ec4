"""kdprune's val mAP is ultralytics' val mAP: same weights, data, imgsz -> within 0.005 of YOLO(best.pt).val()."""

from __future__ import annotations

import pytest

from kdprune.train import run
from tests.conftest import compose

# Trained long enough on a tiny set for mAP to be clearly above zero, so the comparison means something.
PARITY = [
    "data.imgsz=128", "data.embedded.n_train=48", "data.embedded.n_val=16", "data.embedded.imgsz=128",
    "data.batch=8", "data.val_batch=8", "data.workers=0", "trainer.max_epochs=12", "val.plot_every=0",
    "logger=none", "optim.warmup_epochs=1",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("parity") / "run"
    return run_dir, run(compose(PARITY, run_dir=run_dir))


def test_map_matches_ultralytics_validator(trained):
    from ultralytics import YOLO

    run_dir, summary = trained
    assert summary["mAP50"] > 0.02, summary  # a model that detects something
    m = YOLO(str(run_dir / "weights" / "best.pt")).val(data=summary["data"], imgsz=128, batch=8, device="cpu",
                                                      conf=0.001, iou=0.7, plots=False, verbose=False)
    assert abs(float(m.box.map) - summary["mAP50-95"]) <= 0.005, (float(m.box.map), summary["mAP50-95"])
    assert abs(float(m.box.map50) - summary["mAP50"]) <= 0.005, (float(m.box.map50), summary["mAP50"])
    per_class = {m.names[int(c)]: float(ap) for c, ap in zip(m.box.ap_class_index, m.box.all_ap.mean(1))}
    for name, ap in per_class.items():
        assert abs(ap - summary["per_class"][name]["AP50-95"]) <= 0.01, name
