"""YOLO26 through a whole run to the device file: pruning, QAT of its one-to-one (NMS-free) branch, the full-INT8
TFLite file, TFLite Micro, the head's layout in summary.json / report.md, and the deploy kit's C top-k on the file's
TFLite Micro outputs against the host decode that scored it. The branch-level checks (which branch is quantized,
the file against its graph within 1 LSB) are in tests/test_quant.py and tests/test_tflite.py."""

from __future__ import annotations

import json

import pytest

from kdprune.train import run
from tests.conftest import TINY, compose

pytestmark = pytest.mark.slow  # trains, converts or exports (make test-fast leaves it out)

E2E = [*TINY, "model=yolo26n", "teacher=none", "distill=none", "trainer.max_epochs=3", "prune=gradual",
       "prune.start_epoch=0", "prune.end_epoch=0", "prune.fade_epochs=0", "prune.steps=1", "prune.target.ratio=0.2",
       "quant=int8_qat", "quant.start_epoch=1", "quant.freeze_bn_epoch=2", "quant.freeze_observer_epoch=2",
       "quant.ptq_images=8", "export=int8", "export.formats=[onnx_int8,tflite_int8]", "target=neutron",
       "export.npu=[]",  # Vela on YOLO26 files: bench.yolo26 (the run here is about the head)
       "export.latency_runs=20", "export.deploy.conf=0.05",
       "export.deploy.max_det=50"]  # 64 px: 84 anchors, the most rows the NMS-free head gives


@pytest.fixture(scope="module")
def e2e_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("yolo26") / "run"
    summary = run(compose(E2E, run_dir=run_dir))
    return run_dir, summary


def test_a_pruned_yolo26_file_is_its_nms_free_branch_and_runs_in_tflite_micro(e2e_run):
    run_dir, summary = e2e_run
    rows = {r["stage"]: r for r in summary["stages"]}
    assert summary["head"] == {"branch": "one2one", "two_branches": True, "postprocess": "top-k", "box": "ltrb",
                               "reg_max": 1, "nc": summary["head"]["nc"], "strides": [8.0, 16.0, 32.0]}
    assert "from the one-to-one branch" in (run_dir / "report.md").read_text()
    assert rows["pruned fp32"]["params"] < rows["student before pruning"]["params"]  # pruning happened
    assert "QAT graph" in rows["TFLite INT8"]["note"] and rows["TFLite INT8"]["status"] == "ok"
    assert rows["TFLite INT8"]["tflm"]["exact"] == 1.0  # TensorFlow Lite Micro = the reference kernels it was scored on
    from kdprune.export.tflite import TFLiteRunner

    runner = TFLiteRunner(run_dir / "export" / "model_int8.tflite")
    shapes = [o.shape for o in runner(runner_input(runner))]
    assert [s[1] for s in shapes[0::2]] == [4, 4, 4]  # box outputs: 4 distances per anchor, no DFL bins


def runner_input(runner):
    import numpy as np

    return np.random.default_rng(0).random((1, 3, *runner.input_shape[1:3]), dtype=np.float32)


def test_the_file_is_the_quantized_one_to_one_graph_within_one_lsb(e2e_run):
    """The device file against the QAT graph it came from (its QDQ ONNX, convert_pt2e of the same graph), on the same
    int8 input grid: every output (the one-to-one branch's box and class tensors) within 1 LSB for >= 90 % of
    elements (integer kernels round requantization where the graph rounds a float), and the top-k rows decoded from
    both agree in score within what one LSB moves a sigmoid."""
    import numpy as np
    import torch

    from kdprune.export import OnnxRunner
    from kdprune.export.decode import decode
    from kdprune.export.tflite import TFLiteRunner
    from tests.test_tflite import smooth_images

    run_dir, summary = e2e_run
    tfl = TFLiteRunner(run_dir / "export" / "model_int8.tflite")
    qdq = OnnxRunner(run_dir / "export" / "model_int8_qdq.onnx")
    (s_in, z_in), size = tfl.input_quant, tfl.input_shape[1]
    lsb, rows = [], []
    for img in smooth_images(4, size, seed=5):
        xq = tfl.quantize_input(img[None])
        x = ((xq.astype(np.float32) - z_in) * s_in).transpose(0, 3, 1, 2)
        a, b = tfl(img[None]), qdq(np.ascontiguousarray(x))
        lsb += [np.abs(p - q).ravel() / s for p, q, (s, _) in zip(a, b, tfl.output_quant)]
        rows.append([decode([torch.from_numpy(o) for o in outs], [8, 16, 32], nc=summary["head"]["nc"], reg_max=1,
                            end2end=True, max_det=20)[0] for outs in (a, b)])
    d = np.round(np.concatenate(lsb))
    assert np.mean(d <= 1) >= 0.9 and d.max() <= 8, (np.mean(d <= 1), d.max())
    score_lsb = 0.25 * max(s for s, _ in tfl.output_quant[1::2])
    gaps = torch.cat([(f[:, 4] - g[:, 4]).abs() for f, g in rows])
    assert gaps.median() <= score_lsb and gaps.max() <= 8 * score_lsb


def test_the_c_top_k_on_tflite_micro_outputs_is_the_scored_decode(e2e_run, tmp_path):
    """The kit the run wrote says KDP_END2END 1; its C library on every val image's TFLite Micro outputs gives the
    decode's top-k rows (val settings: conf 0.001, so the max_det cut-off by the anchors' best score decides, among
    many tied int8 scores) and the report's mAP."""
    from kdprune.deploy.check import check_kit
    from kdprune.deploy.host import compile_library

    run_dir, summary = e2e_run
    assert "#define KDP_END2END 1" in (run_dir / "deploy" / "kdp_model_io.h").read_text()
    r = check_kit(run_dir, compile_library(tmp_path), conf=0.05)
    assert r["equal"] and r["images"] >= 8, r
    assert r["boxes"] >= 8 * 20, r  # rows were compared (the untrained head still clears conf 0.001)
    assert abs(r["mAP50-95"] - r["row_mAP50-95"]) <= 1e-4, r
    assert json.loads((run_dir / "summary.json").read_text())["head"]["postprocess"] == "top-k"
