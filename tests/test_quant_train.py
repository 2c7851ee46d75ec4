"""The QAT phase inside a run and the exports at its end: every stage in report.md / summary.json, artifacts
verified, a failed verification is exit-2 material that keeps what passed, and a run stopped during QAT resumes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from kdprune.errors import UserError
from kdprune.export import OnnxRunner, TorchRunner
from kdprune.export.stages import ExportFailed
from kdprune.train import run
from tests.conftest import TINY, compose
from tests.probes import assert_starts_from, probe

pytestmark = pytest.mark.slow  # trains, converts or exports (make test-fast leaves it out)

QAT = [*TINY, "trainer.max_epochs=3", "prune=gradual", "prune.start_epoch=0", "prune.end_epoch=0",
       "prune.fade_epochs=0", "prune.steps=1",
       "prune.target.ratio=0.2", "quant=int8_qat", "quant.start_epoch=1", "quant.freeze_bn_epoch=2",
       "quant.freeze_observer_epoch=2", "quant.ptq_images=8", "export=int8", "target=ethos_u",
       "export.latency_runs=20", "export.deploy.conf=0.2"]


# a part with 20,000 B of SRAM left for the model (device=generic's keys set by hand), ReLU in the first two layers
# (model.fused_act_layers) and a 4x4 stem (model.pad_free_downsample): the RAM levers' path through QAT, conversion,
# TFLM and resume is verified
PART = ["device.part=test part", "device.flash_bytes=8000000", "device.sram_bytes=100000", "device.reserve.sram=80000",
        "model.fused_act_layers=2", "model.pad_free_downsample=1"]


@pytest.fixture(scope="module")
def from_trained(trained) -> list[str]:
    """The QAT run starts from tests/trained.py's yolo11n on its easy data: its mAPs are not zeros, so the fidelity
    checks between each export and its model compare real numbers (a run from scratch would compare ~0 with ~0)."""
    data, best, _ = trained
    return [f"data.yaml={data}", f"model.weights={best}"]


@pytest.fixture(scope="module")
def qat_run(tmp_path_factory, from_trained, trained):
    """One tiny pruned run with QAT and every export, whose TFLite file is over an impossible byte budget; the dense
    trained model is its reference row."""
    run_dir = tmp_path_factory.mktemp("qat") / "run"
    with pytest.raises(ExportFailed, match=r"TFLite INT8: model_int8.tflite is [\d,]+ bytes, over the budget"):
        run(compose([*QAT, *PART, *from_trained, "export.max_bytes=1000", "export.max_arena_bytes=20000",
                     f"reference={trained[1]}"], run_dir=run_dir))
    return run_dir


def test_every_stage_is_reported(qat_run):
    summary = json.loads((qat_run / "summary.json").read_text())
    rows = {r["stage"]: r for r in summary["stages"]}
    assert list(rows) == ["dense reference", "student before pruning", "pruned fp32", "QAT fake-quant", "PTQ baseline",
                          "ONNX fp32", "ONNX INT8", "TFLite INT8", "TFLite PTQ"]
    assert rows["dense reference"]["params"] > rows["pruned fp32"]["params"]
    # real accuracy before any export is compared with its model (trained start; from scratch every mAP is ~0)
    assert min(rows[n]["mAP50-95"] for n in ("dense reference", "pruned fp32", "QAT fake-quant", "PTQ baseline")) > 0.2
    assert rows["pruned fp32"]["params"] < rows["student before pruning"]["params"]  # pruning happened
    for name in ("PTQ baseline", "ONNX fp32", "ONNX INT8", "TFLite INT8", "TFLite PTQ"):
        r = rows[name]
        assert Path(r["artifact"]).is_file() and r["bytes"] == Path(r["artifact"]).stat().st_size
        assert r["latency_ms"] > 0 and r["mAP50-95"] is not None
    assert rows["ONNX INT8"]["bytes"] < 0.6 * rows["ONNX fp32"]["bytes"]  # int8 weights, not float
    note = rows["TFLite INT8"]["note"]
    assert rows["TFLite INT8"]["status"] == "failed" and "over the budget export.max_bytes" in note
    assert f"{rows['TFLite INT8']['arena_bytes']:,}-byte tensor arena" in note and "export.max_arena_bytes" in note
    assert "max_arena_bytes" not in rows["TFLite PTQ"]["note"]  # the budgets are the device file's
    # each export is checked against the model it came from, on real numbers; a check outside its tolerance fails
    # the row (and only that fails the rows other than the over-budget device file)
    checks = {n: r["check"] for n, r in rows.items() if r.get("check")}
    assert set(checks) == {"ONNX fp32", "ONNX INT8", "TFLite INT8", "TFLite PTQ"}
    for n, c in checks.items():
        assert rows[c["reference"]]["mAP50-95"] > 0.2 and c["ok"] == (abs(c["delta"]) <= c["tolerance"])
        assert (rows[n]["status"] == "ok") == (c["ok"] and n != "TFLite INT8"), (n, c)
    assert all(r["status"] == "ok" for n, r in rows.items() if n not in checks)
    # the float export equals its model. The INT8 files' deltas are not asserted within tolerance: on this 32-image
    # val set integer kernels scored -0.012 (TFLite INT8) and -0.015 (ONNX INT8, over its 0.01) against fake-quant,
    # the small-val-set spread kdprune/stage_rows.py documents; test_tflite_file_is_the_qat_graph_on_real_images
    # checks the file against its graph tensor by tensor instead
    assert checks["ONNX fp32"]["ok"] and abs(checks["ONNX fp32"]["delta"]) <= 0.002
    assert rows["TFLite INT8"]["check"]["reference"] == "QAT fake-quant"  # the file is checked against QAT, not PTQ
    assert summary["quant"]["bn_frozen"] and summary["quant"]["observers_frozen"]
    report = (qat_run / "report.md").read_text()
    assert "| TFLite INT8 |" in report and "## Failed" in report and "over the budget" in report
    part = summary["part"]  # the device verdict: the file's bytes and TFLM's arena against the part
    assert part["part"] == "test part" and not part["fits"] and part["flash"]["fits"] and not part["sram"]["fits"]
    assert part["sram"] == {**part["sram"], "used": rows["TFLite INT8"]["arena_bytes"], "budget": 20_000}
    assert "does NOT fit test part" in note and "does NOT fit test part" in report
    assert "part" not in rows["TFLite PTQ"]  # the verdict is the device file's
    assert "## Pruning steps" in report and "(conf 0.001, IoU 0.7, max_det 300)" in report


def val_images(run_dir: Path, n: int = 8) -> list[Path]:
    """The first ``n`` val images of the run's dataset (tests/trained.py's layout: images/val beside data.yaml)."""
    data = Path(json.loads((run_dir / "summary.json").read_text())["data"])
    return sorted((data.parent / "images" / "val").glob("*"))[:n]


def test_every_tflite_file_runs_in_tflite_micro_as_scored(qat_run):
    """Both files run in TensorFlow Lite Micro with the arena reported (the smallest one it accepts), and compute
    exactly what the LiteRT reference kernels the rows were scored with compute, on the val images."""
    import cv2

    from kdprune.export.tflite import TFLiteRunner
    from kdprune.export.tflm import TFLMRunner, _micro

    rows = {r["stage"]: r for r in json.loads((qat_run / "summary.json").read_text())["stages"]}
    files = val_images(qat_run)
    imgs = [cv2.resize(cv2.imread(str(f))[:, :, ::-1], (64, 64)).transpose(2, 0, 1)[None] / np.float32(255)
            for f in files]
    for stage, name in (("TFLite INT8", "model_int8.tflite"), ("TFLite PTQ", "model_ptq_int8.tflite")):
        path, t = qat_run / "export" / name, rows[stage]["tflm"]
        assert t["images"] == 8 and t["exact"] == 1.0 and t["max_lsb"] == 0
        arena = rows[stage]["arena_bytes"]
        assert arena == t["arena_bytes"] > 0
        x = np.zeros((1, 64, 64, 3), np.int8)
        for size, runs in ((arena, True), (arena - 16, False)):  # the smallest arena, to TFLM's 16-byte alignment
            try:
                it = _micro(path.read_bytes(), size)
                it.set_input(x, 0)
                it.invoke()
                ok = True
            except RuntimeError:
                ok = False
            assert ok is runs, (stage, size)
        ref, micro = TFLiteRunner(path, kernels="reference"), TFLMRunner(path, arena_bytes=arena)
        assert micro.output_names == ref.output_names
        for img in imgs:
            x = ref.quantize_input(img)
            for a, b in zip(ref.run_raw(x), micro.run_raw(x)):
                assert a.shape == b.shape and np.array_equal(a, b)
    report = (qat_run / "report.md").read_text()
    assert f"{rows['TFLite INT8']['arena_bytes']:,}" in report and "TFLite Micro" in report


def test_the_device_file_is_compiled_for_each_npu_target(qat_run):
    """Vela (Ethos-U) on the device file only: every operator of kdprune's fully-INT8 file on the NPU, the compiled
    files kept, the figures in summary.json and report.md."""
    rows = {r["stage"]: r for r in json.loads((qat_run / "summary.json").read_text())["stages"]}
    npu = rows["TFLite INT8"]["npu"]
    assert [n["target"] for n in npu] == ["ethos-u55-128", "ethos-u65-256"] and "npu" not in rows["TFLite PTQ"]
    for n in npu:
        assert n["cpu_ops"] == 0 and n["cpu_operators"] == [] and n["npu_ops"] > 50
        assert n["sram_bytes"] > 0 and n["flash_bytes"] > 0.5 * rows["TFLite INT8"]["bytes"] and n["inference_ms"] > 0
        assert Path(n["artifact"]).is_file() and Path(n["artifact"]).parent == qat_run / "export" / "npu"
    assert npu[1]["inference_ms"] < npu[0]["inference_ms"]  # twice the MACs per cycle
    report = (qat_run / "report.md").read_text()
    assert "## On an MCU NPU (Vela)" in report
    assert f"| TFLite INT8 | ethos-u65-256 | {npu[1]['npu_ops']} | 0 |" in report
    # target=ethos_u's rules, read off the device file (and Vela's CPU operators): nothing to flag here
    assert rows["TFLite INT8"]["target"] == {"name": "ethos_u", "findings": {"batch_1": [], "npu_only": []}}
    assert "target" not in rows["TFLite PTQ"]
    assert "## Target: ethos_u" in report and "- no findings: every rule holds" in report


def test_tflite_file_is_the_qat_graph_on_real_images(qat_run):
    """The device file against the QDQ ONNX of the same QAT graph (its outputs are int8 grid points: requantized
    with the file's output params they are exact) on the val images: >= 99 % of the int8 outputs within 1 LSB."""
    import cv2

    from kdprune.export.tflite import TFLiteRunner, check_fully_int8

    export = qat_run / "export"
    tfl = export / "model_int8.tflite"
    assert check_fully_int8(tfl) == []
    assert sorted(p.name for p in export.iterdir()) == ["model_fp32.onnx", "model_int8.tflite", "model_int8_qdq.onnx",
                                                         "model_ptq_int8.onnx", "model_ptq_int8.tflite", "npu"]
    lite, qdq = TFLiteRunner(tfl), OnnxRunner(export / "model_int8_qdq.onnx")
    assert lite.output_names == qdq.output_names
    files = val_images(qat_run)
    assert len(files) == 8
    d = []
    for f in files:
        img = cv2.resize(cv2.imread(str(f))[:, :, ::-1], (64, 64)).transpose(2, 0, 1)[None] / np.float32(255)
        for raw, ref, (scale, zp) in zip(lite.run_raw(lite.quantize_input(img)), qdq(img), lite.output_quant):
            rq = np.clip(np.round(ref.transpose(0, 2, 3, 1) / scale) + zp, -128, 127)
            d.append(np.abs(rq - raw).ravel())
    d = np.concatenate(d)
    print(f"\n{d.size} int8 outputs: exact {np.mean(d == 0):.3f}, within 1 LSB {np.mean(d <= 1):.4f}, max {d.max()}")
    assert np.mean(d <= 1) >= 0.99


def test_relu_layers_are_fused_into_their_convs_in_the_file(qat_run):
    """model.fused_act_layers=2: the stem and the next conv write ReLU outputs from CONV_2D itself (no RELU, LOGISTIC
    or MUL after them: one tensor each, what the arena saving is), every later conv keeps SiLU as LOGISTIC + MUL.
    model.pad_free_downsample=1: the 4x4 stem reads the image itself (SAME padding, no PAD copy); every 3x3 stride-2
    conv left still reads a PAD's copy (one PAD each, no more)."""
    from ultralytics.nn.tasks import load_checkpoint

    from kdprune.export.flatbuffer import TFLiteFile

    f = TFLiteFile(qat_run / "export" / "model_int8.tflite")
    convs = [op for _, name, op in f.ops if name == "CONV_2D"]
    relu = [i for i, op in enumerate(convs) if op.builtinOptions.fusedActivationFunction == 1]  # RELU
    assert relu == [0, 1], relu
    assert "RELU" not in {name for _, name, _ in f.ops}
    readers = {t: name for _, name, op in f.ops for t in op.inputs}
    assert readers[int(f.g.inputs[0])] == "CONV_2D" and f.shape(int(convs[0].inputs[1]))[1:3] == [4, 4]
    assert readers[int(convs[0].outputs[0])] == "PAD"  # the 3x3 stride-2 conv after it reads a padded copy
    assert readers[int(convs[2].outputs[0])] in ("LOGISTIC", "MUL")
    model = load_checkpoint(str(qat_run / "weights" / "best.pt"), device="cpu")[0]
    convs2 = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.stride == (2, 2)]
    k3s2 = [m for m in convs2 if m.kernel_size == (3, 3)]
    assert len(convs2) == 7 and len(k3s2) == 6 and sum(name == "PAD" for _, name, _ in f.ops) == len(k3s2)


def test_onnx_fp32_equals_the_pytorch_model(qat_run):
    from ultralytics.nn.tasks import load_checkpoint

    from kdprune.yolo.rawhead import RawHeadModel

    model = load_checkpoint(str(qat_run / "weights" / "best.pt"), device="cpu")[0].float().eval()
    img = np.random.default_rng(1).random((1, 3, 64, 64), dtype=np.float32)
    for a, b in zip(OnnxRunner(qat_run / "export" / "model_fp32.onnx")(img),
                    TorchRunner(RawHeadModel(model, one2one=False))(img)):
        assert np.allclose(a, b, atol=1e-4)


def test_export_failure_is_a_user_error_that_keeps_the_run_dir(qat_run):
    from kdprune.__main__ import _clean_run_dir

    assert issubclass(ExportFailed, UserError)  # one line, exit code 2 (__main__)
    _clean_run_dir(qat_run)
    assert (qat_run / "report.md").is_file() and (qat_run / "export" / "model_int8.tflite").is_file()


def test_resume_during_qat(qat_run, from_trained, tmp_path):
    """last.ckpt was written during QAT: resuming rebuilds the pruned architecture, then the fake-quant graph with
    its frozen ranges (every scale and zero point as saved, not re-observed), and continues to a 4th epoch."""
    ckpt = torch.load(qat_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["compression"]["qat"]["observers_frozen"]
    assert any(k.startswith("compression.qat.graph.") for k in ckpt["state_dict"])
    s = run(compose([*QAT, *PART, *from_trained, "trainer.max_epochs=4", "export.formats=[]",
                     f"ckpt_path={qat_run}/checkpoints/last.ckpt",
                     *probe(tmp_path / "start")], run_dir=tmp_path / "resumed"))
    assert s["epochs"] == 4 and s["quant"]["observers_frozen"]
    assert_starts_from(tmp_path / "start.0", ckpt)  # weights, optimizer moments, QAT scales and state
    scales = [k for k in ckpt["state_dict"] if k.startswith("compression.qat.graph.") and k.endswith(".scale")]
    assert scales and s["quant"]["bn_frozen"] == ckpt["compression"]["qat"]["bn_frozen"]


def test_the_c_postprocessing_computes_what_the_report_scored(qat_run, tmp_path):
    """The kit the run wrote itself (with export.deploy.conf), its C library driven on the int8 outputs TensorFlow
    Lite Micro gives for every val image: the same detections as the decode + ultralytics' NMS that scored the file,
    and the mAP50-95 computed from the C boxes is the report's TFLite INT8 row (within 1e-4, its rounding)."""
    from kdprune.deploy.check import check_kit
    from kdprune.deploy.host import compile_library

    assert "#define KDP_CONF 0.2f" in (qat_run / "deploy" / "kdp_model_io.h").read_text()  # written by the run
    r = check_kit(qat_run, compile_library(tmp_path), conf=0.2)
    assert r["equal"] and r["images"] >= 8, r
    assert r["row_mAP50-95"] > 0.05, "the check must compare real numbers"
    assert abs(r["mAP50-95"] - r["row_mAP50-95"]) <= 1e-4 and abs(r["mAP50"] - r["row_mAP50"]) <= 1e-4, r
    assert 0.5 < r["skipped"] < 1  # most anchors never reach float work at the device's threshold


def test_the_deploy_kit_is_the_file_and_its_contract(qat_run, tmp_path):
    """``python -m kdprune.deploy`` on the run: the C array holds the file's bytes (read back from the compiled
    object), the generated header and the library compile with -Werror and a main that uses every level's macros, the
    example's resolver registers exactly the file's operators, and each level's output indices are TFLM's."""
    import ctypes
    import re
    import subprocess

    from kdprune.deploy.kit import RESOLVER
    from kdprune.export.flatbuffer import TFLiteFile
    from kdprune.export.tflm import _output_tensors
    from tests.conftest import run_cli

    p = run_cli(str(qat_run), "--conf", "0.3", "--check", "--images", "3", module="kdprune.deploy")
    assert p.returncode == 0, p.stderr[-2000:]
    check = json.loads((qat_run / "deploy" / "check.json").read_text())
    assert check["images"] == 3 and check["equal"] and check["conf"] == 0.3
    kit, tfl = qat_run / "deploy", qat_run / "export" / "model_int8.tflite"
    flags = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic"]
    so = tmp_path / "kit.so"
    subprocess.run(["gcc", *flags, "-fPIC", "-shared", str(kit / "kdp_model_data.c"), "-o", str(so)], check=True)
    data = tfl.read_bytes()
    assert bytes((ctypes.c_ubyte * len(data)).in_dll(ctypes.CDLL(str(so)), "kdp_model")) == data
    io = (kit / "kdp_model_io.h").read_text()
    macros = dict(re.findall(r"#define (KDP_\w+) (.+)", io))
    nl = int(macros["KDP_NL"])
    levels = ", ".join(f"{{0, 0, KDP_L{i}_H, KDP_L{i}_W, KDP_L{i}_STRIDE, KDP_L{i}_BOX_SCALE, KDP_L{i}_BOX_ZERO_POINT, "
                       f"KDP_L{i}_CLS_SCALE, KDP_L{i}_CLS_ZERO_POINT}}" for i in range(nl))
    (tmp_path / "m.c").write_text(
        '#include "kdp_model_io.h"\n#include "kdp_postprocess.h"\n'
        f"int main(void) {{ const char *names[KDP_NC] = KDP_CLASS_NAMES; kdp_level_t lv[KDP_NL] = {{{levels}}}; "
        "kdp_config_t c = {KDP_NC, KDP_REG_MAX, KDP_NL, KDP_CONF, KDP_IOU, KDP_MAX_DET, KDP_MULTI_LABEL, KDP_END2END}; "
        "return (int)(names[0][0] == 0) + (int)(lv[0].h == 0) + (int)(c.nc == 0) + KDP_ARENA_BYTES % 16; }\n")
    subprocess.run(["gcc", *flags, f"-I{kit}", str(tmp_path / "m.c"), str(kit / "kdp_postprocess.c"), "-lm", "-o",
                    str(tmp_path / "m")], check=True)
    assert subprocess.run([str(tmp_path / "m")]).returncode == 0
    f = TFLiteFile(tfl)
    ops = sorted({n for _, n, _ in f.ops})
    calls = re.findall(r"resolver\.(Add\w+)\(\);", (kit / "main.cc").read_text())
    assert calls == [RESOLVER[o] for o in ops] and "AddConv2D" in calls  # exactly the file's operators
    assert f"MicroMutableOpResolver<{len(ops)}>" in (kit / "main.cc").read_text()
    order = _output_tensors(tfl)  # TFLM's output numbering
    sig = {o.name.decode(): int(o.tensorIndex) for o in f.model.signatureDefs[0].outputs}
    for i in range(nl):
        assert int(macros[f"KDP_L{i}_BOX_OUTPUT"]) == order.index(sig[f"box{i}"])
        assert int(macros[f"KDP_L{i}_CLS_OUTPUT"]) == order.index(sig[f"cls{i}"])
    assert macros["KDP_CONF"].split()[0] == "0.3f" and int(macros["KDP_INPUT_H"]) == 64
    arena = {r["stage"]: r for r in json.loads((qat_run / "summary.json").read_text())["stages"]}["TFLite INT8"]
    assert int(macros["KDP_ARENA_BYTES"]) >= arena["arena_bytes"] * 1.1


def test_the_kit_refuses_a_file_whose_head_it_does_not_know(qat_run, tmp_path):
    """The run's file with its outputs renamed (a TFLite file kdprune did not write): one UserError naming the
    layout, and no deploy/ written."""
    import shutil

    from kdprune.deploy.kit import write_kit
    from kdprune.export.flatbuffer import load, save

    (tmp_path / "export").mkdir()
    shutil.copy(qat_run / "summary.json", tmp_path)
    model, _ = load(qat_run / "export" / "model_int8.tflite")
    for o in model.signatureDefs[0].outputs:
        o.name = b"out_" + o.name
    save(tmp_path / "export" / "model_int8.tflite", model)
    with pytest.raises(UserError, match="unknown head layout"):
        write_kit(tmp_path)
    assert not (tmp_path / "deploy").exists() and not list(tmp_path.glob(".deploy-*"))

