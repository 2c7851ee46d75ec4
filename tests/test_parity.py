"""kdprune's val mAP is ultralytics' val mAP: same weights, data, imgsz -> within 0.005 of YOLO(best.pt).val()."""

from __future__ import annotations

import pytest

from kdprune.train import run
from tests.conftest import compose

pytestmark = pytest.mark.slow  # trains, converts or exports (make test-fast leaves it out)

IMGSZ = 128


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A model that clearly detects something (so the comparison means something): 16 images, mosaic off,
    validated on its own training images, trained until it fits them a little."""
    from kdprune.data.synth import generate

    tmp = tmp_path_factory.mktemp("parity")
    yaml = generate(tmp / "ds", n_train=16, n_val=1, imgsz=IMGSZ, seed=5, workers=0)
    yaml.write_text(yaml.read_text().replace("val: images/val", "val: images/train"))
    overrides = [
        f"data.yaml={yaml}", f"data.imgsz={IMGSZ}", "data.batch=4", "data.val_batch=8", "optim.lr0=0.005",
        "data.workers=0",
        "data.augment.mosaic=0", "data.augment.close_mosaic=0", "data.augment.scale=0", "data.augment.translate=0",
        "trainer.max_epochs=40", "optim.warmup_epochs=1", "val.plot_every=0", "logger=none",
    ]
    run_dir = tmp / "run"
    return run_dir, run(compose(overrides, run_dir=run_dir))


def test_map_matches_ultralytics_validator(trained):
    from ultralytics import YOLO

    run_dir, summary = trained
    print(f"\nparity: kdprune mAP50-95 {summary['mAP50-95']:.4f} mAP50 {summary['mAP50']:.4f}")
    assert summary["mAP50"] > 0.05, summary  # a model that detects something
    m = YOLO(str(run_dir / "weights" / "best.pt")).val(data=summary["data"], imgsz=IMGSZ, batch=8, device="cpu",
                                                      conf=0.001, iou=0.7, plots=False, verbose=False)
    print(f"parity: ultralytics mAP50-95 {float(m.box.map):.4f} mAP50 {float(m.box.map50):.4f}")
    assert abs(float(m.box.map) - summary["mAP50-95"]) <= 0.005, (float(m.box.map), summary["mAP50-95"])
    assert abs(float(m.box.map50) - summary["mAP50"]) <= 0.005, (float(m.box.map50), summary["mAP50"])
    per_class = {m.names[int(c)]: float(ap) for c, ap in zip(m.box.ap_class_index, m.box.all_ap.mean(1))}
    assert per_class.keys() == summary["per_class"].keys()
    for name, ap in per_class.items():
        assert abs(ap - summary["per_class"][name]["AP50-95"]) <= 0.01, name
