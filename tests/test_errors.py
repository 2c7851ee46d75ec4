"""Bad input a user can cause: one line on stderr, exit code 2, and no run dir left behind."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT, TINY, run_cli, run_main

pytestmark = pytest.mark.slow  # trains, converts or exports (make test-fast leaves it out)


def kdprune(*args: str, run_dir: Path, timeout: int = 240, new_process: bool = False) -> subprocess.CompletedProcess:
    """One tiny run into ``run_dir``: in this process (``run_main``: the errors below stop a run before training), or
    with ``new_process`` as a user's terminal sees it."""
    if new_process:
        return run_cli(*TINY, f"hydra.run.dir={run_dir}", *args, timeout=timeout)
    return run_main(*TINY, f"hydra.run.dir={run_dir}", *args)


def assert_user_error(p: subprocess.CompletedProcess, *needles: str, run_dir: Path | None = None) -> str:
    assert p.returncode == 2, (p.returncode, p.stderr[-3000:])
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("kdprune: error:")]
    assert len(errors) == 1, p.stderr[-3000:]
    assert "Traceback" not in p.stderr
    for n in needles:
        assert n in errors[0], (n, errors[0])
    if run_dir is not None:
        assert not run_dir.exists(), list(run_dir.rglob("*"))
    return errors[0]


@pytest.fixture
def user_data(tmp_path):
    """A small user dataset in ultralytics format (copied out of the generator), with its data.yaml."""
    from kdprune.data.synth import generate

    yaml = generate(tmp_path / "ds", n_train=8, n_val=4, imgsz=64, seed=3, workers=0)
    return yaml.parent, yaml


def _rewrite_yaml(yaml: Path, drop: str | None = None) -> Path:
    import yaml as pyyaml

    d = pyyaml.safe_load(yaml.read_text())
    if drop:
        d.pop(drop)
    yaml.write_text(pyyaml.safe_dump(d))
    return yaml


def test_missing_data_yaml(tmp_path):
    p = kdprune("data.yaml=/nonexistent/data.yaml", run_dir=tmp_path / "run", new_process=True)
    msg = assert_user_error(p, "/nonexistent/data.yaml", run_dir=tmp_path / "run")
    assert p.stderr.strip().splitlines() == [msg]  # the one line is all a user sees (no library warning before it)


def test_data_yaml_without_names(tmp_path, user_data):
    root, yaml = user_data
    _rewrite_yaml(yaml, drop="names")
    p = kdprune(f"data.yaml={yaml}", run_dir=tmp_path / "run")
    assert_user_error(p, "names", run_dir=tmp_path / "run")


@pytest.mark.parametrize("line, needle", [("8 0.5 0.5 0.1 0.1", "class"), ("0 0.5 1.5 0.1 0.1", "[0, 1]")])
def test_bad_label_names_file_and_line(tmp_path, user_data, line, needle):
    root, yaml = user_data
    label = sorted((root / "labels" / "train").glob("*.txt"))[0]
    lines = label.read_text().splitlines()
    label.write_text("\n".join([*lines, line]) + "\n")
    p = kdprune(f"data.yaml={yaml}", run_dir=tmp_path / "run")
    msg = assert_user_error(p, f"{label.name}:{len(lines) + 1}", run_dir=tmp_path / "run")
    assert needle in msg


def test_unknown_model_name(tmp_path):
    p = kdprune("model.cfg=yolo99n.yaml", run_dir=tmp_path / "run")
    assert_user_error(p, "yolo99n.yaml", run_dir=tmp_path / "run")


def test_missing_weights_never_downloads(tmp_path):
    p = kdprune("model.weights=yolo11n.pt", run_dir=tmp_path / "run", timeout=120)
    msg = assert_user_error(p, "yolo11n.pt", "model.cfg=yolo11n.yaml", "never downloads", run_dir=tmp_path / "run")
    assert str(ROOT / "yolo11n.pt") in msg  # where to put it
    assert not (ROOT / "yolo11n.pt").exists()


def test_unknown_config_key(tmp_path):
    p = kdprune("no_such_key=1", run_dir=tmp_path / "run")
    assert p.returncode == 2, p.stderr[-2000:]
    assert "no_such_key" in p.stderr and "Traceback" not in p.stderr


def test_unknown_device_and_a_reserve_larger_than_the_part(tmp_path):
    p = kdprune("device=mcx_nosuch", run_dir=tmp_path / "run")
    assert p.returncode == 2 and "mcx_nosuch" in p.stderr and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert "mcxn947" in p.stderr  # the valid choices are listed
    p = kdprune("device=mcxn947", "target=neutron", "device.reserve.sram=524288", run_dir=tmp_path / "run")
    assert_user_error(p, "device.reserve.sram=524,288 leaves nothing", run_dir=tmp_path / "run")


def test_undecodable_image_is_skipped_and_counted(tmp_path, user_data):
    """As ultralytics does: a corrupt image is skipped with a warning, and summary.json counts it."""
    root, yaml = user_data
    bad = sorted((root / "images" / "train").glob("*.jpg"))[0]
    bad.write_bytes(b"this is not a jpeg")
    run_dir = tmp_path / "run"
    p = kdprune(f"data.yaml={yaml}", "logger=none", run_dir=run_dir, new_process=True)
    assert p.returncode == 0, p.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["images_skipped"] == {"train": 1, "val": 0}
    assert bad.name in p.stdout + p.stderr  # ultralytics' warning names the file


@pytest.mark.parametrize("key", ["model.weights", "teacher.weights", "teacher.init"])
@pytest.mark.parametrize("yaml,task", [("yolo11n-cls.yaml", "classify"), ("yolo11n-seg.yaml", "segment")])
def test_a_checkpoint_of_another_task_is_named(tmp_path, key, yaml, task):
    """A classification or segmentation checkpoint where a detection one is needed: the message says what it is."""
    import torch
    from ultralytics.nn.tasks import ClassificationModel, SegmentationModel

    model = (ClassificationModel if task == "classify" else SegmentationModel)(yaml, nc=3, verbose=False)
    path = tmp_path / f"{task}.pt"
    torch.save({"model": model, "train_args": {}}, path)
    extra = ["distill=kd", "teacher=yolo11s"] if key.startswith("teacher.") else []
    p = kdprune(f"{key}={path}", *extra, run_dir=tmp_path / "run")
    assert_user_error(p, f"a {task} checkpoint", "needs a detection model", run_dir=tmp_path / "run")


def test_missing_reference_weights(tmp_path):
    p = kdprune("reference=/nonexistent/best.pt", run_dir=tmp_path / "run")
    assert_user_error(p, "reference=/nonexistent/best.pt", "no such file", run_dir=tmp_path / "run")


def _half(path: Path) -> Path:
    """``path`` cut to half its bytes (a copy interrupted, a disk that filled while it was written)."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.fixture
def lightning_like(tmp_path) -> Path:
    """A file with a Lightning checkpoint's top-level structure (what the check reads), saved as torch saves."""
    import torch

    path = tmp_path / "state.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(4096)}, "loops": {}, "epoch": 0}, path)
    return path


def test_a_truncated_checkpoint_to_resume_is_one_line_before_anything_is_built(tmp_path, lightning_like):
    """Before: Lightning's 'PytorchStreamReader failed reading zip archive' traceback, exit 1, after the data scan,
    the student and the teacher were built."""
    bad = _half(lightning_like)
    p = kdprune(f"ckpt_path={bad}", run_dir=tmp_path / "run")
    assert_user_error(p, f"ckpt_path={bad}", "not a readable checkpoint", "cut short", "without ckpt_path",
                      run_dir=tmp_path / "run")


def test_weights_given_as_the_checkpoint_to_resume_name_model_weights(tmp_path, trained):
    _, best, _ = trained  # an ultralytics best.pt: weights, not the training state
    p = kdprune(f"ckpt_path={best}", run_dir=tmp_path / "run")
    assert_user_error(p, "not a kdprune training checkpoint", "model.weights=", run_dir=tmp_path / "run")


def test_a_truncated_last_ckpt_is_named_when_resuming_with_last(tmp_path, lightning_like):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    _half(lightning_like).rename(run_dir / "checkpoints" / "last.ckpt")
    p = kdprune("ckpt_path=last", run_dir=run_dir)
    assert_user_error(p, "ckpt_path=last", "last.ckpt", "not a readable checkpoint")
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()  # the user's file is left where it was


@pytest.mark.parametrize("key", ["reference", "teacher.weights"])
def test_a_corrupt_best_pt_for_reference_or_teacher_is_one_line_before_training(tmp_path, trained, key):
    """reference= was read only at the end, after the whole training (a traceback then); both are now read first."""
    import shutil

    _, best, _ = trained
    bad = _half(Path(shutil.copy(best, tmp_path / "best.pt")))
    extra = ["distill=kd", "teacher=yolo11s"] if key == "teacher.weights" else []
    p = kdprune(f"{key}={bad}", *extra, run_dir=tmp_path / "run")
    assert_user_error(p, f"{key}={bad}", "not a loadable ultralytics checkpoint", run_dir=tmp_path / "run")


@pytest.mark.parametrize("split", ["val", "train"])
def test_a_split_without_labels_is_refused_before_training(tmp_path, user_data, split):
    """Before: a missing labels/val trained, validated every epoch and reported mAP50-95 0.0000 everywhere, exit 0."""
    import shutil

    root, yaml = user_data
    shutil.rmtree(root / "labels" / split)
    p = kdprune(f"data.yaml={yaml}", run_dir=tmp_path / "run")
    assert_user_error(p, f"{split}: none of its", "has a label", f"labels/{split}", run_dir=tmp_path / "run")


def test_a_split_mostly_without_labels_is_a_warning_with_the_counts(user_data, caplog):
    from kdprune.data import resolve_data

    root, yaml = user_data
    files = sorted((root / "labels" / "train").glob("*.txt"))
    for f in files[: len(files) - 2]:
        f.unlink()
    with caplog.at_level("WARNING", logger="kdprune"):
        resolve_data(str(yaml), root / "cache", {}, True)
    n = len(list((root / "images" / "train").iterdir()))
    warned = [r.getMessage() for r in caplog.records if "have no label" in r.getMessage()]
    assert n >= 8 and warned == [f"kdprune: train: {n - 2} of {n} images have no label (background images); if that "
                                 f"is not intended, check the label files in {root / 'labels' / 'train'}/"]


def test_unknown_embedded_dataset_kind(tmp_path):
    p = kdprune("data.embedded.kind=letters", run_dir=tmp_path / "run")
    assert_user_error(p, "data.embedded.kind=letters", "shapes, glyphs", run_dir=tmp_path / "run")
    # the sensitivity scan reads the same data settings and gets the same line (before: a ValueError traceback)
    p = kdprune("+experiment=sensitivity", "sensitivity.target_int8_bytes=2000000", "data.embedded.kind=letters",
                run_dir=tmp_path / "scan")
    assert_user_error(p, "data.embedded.kind=letters", "shapes, glyphs", run_dir=tmp_path / "scan")


def test_too_few_latency_runs_is_refused_before_training(tmp_path):
    """Before: a ValueError traceback after the whole run had trained, at the first timed export."""
    p = kdprune("export=int8", "export.formats=[onnx]", "export.latency_runs=5", run_dir=tmp_path / "run")
    assert_user_error(p, "export.latency_runs=5", "at least 20", run_dir=tmp_path / "run")


@pytest.mark.parametrize("student,teacher", [("yolo26n", "yolo11s"), ("yolo11n", "yolo26s")])
def test_box_distillation_across_yolo_families_is_refused_before_the_teacher_trains(tmp_path, student, teacher):
    """distill.ld distils DFL bins, which YOLO26 has none of: a YOLO11 teacher for a YOLO26 student (or the reverse)
    with ld > 0 is one line naming the way out, before the teacher stage trains anything (no teacher run dir)."""
    p = kdprune(f"model={student}", f"teacher={teacher}", "distill=kd", "distill.ld=1.0", run_dir=tmp_path / "run")
    assert_user_error(p, f"teacher={teacher}", "reg_max", "distill.ld=0", run_dir=tmp_path / "run")


def test_more_deploy_rows_than_an_nms_free_head_gives_is_refused_before_training(tmp_path):
    """YOLO26's one-to-one head gives one top-k row per anchor at most: 84 at 64 px."""
    p = kdprune("model=yolo26n", "export=int8", "export.deploy.max_det=300", run_dir=tmp_path / "run")
    assert_user_error(p, "export.deploy.max_det=300", "at most 84 rows", "<=84", run_dir=tmp_path / "run")
    # (an NMS head with the same setting runs: tests/test_quant_train.py's 64-px yolo11n kit keeps max_det 300)


def test_a_deploy_threshold_outside_0_1_is_refused_before_training(tmp_path):
    """The deploy kit's settings (export.deploy.*) are checked with the other export settings, before any work."""
    p = kdprune("export=int8", "export.deploy.conf=1.5", run_dir=tmp_path / "run")
    assert_user_error(p, "export.deploy.conf=1.5", "must be in (0, 1)", run_dir=tmp_path / "run")
    assert "Epoch" not in p.stderr
