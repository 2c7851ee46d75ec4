"""Distillation inside training: the teacher stage and its cache, a KD run that prunes and resumes, the losses from
the config, and bad input."""

from __future__ import annotations

import hashlib
import json
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from kdprune.build import hyp_from_cfg
from kdprune.data import resolve_data
from kdprune.errors import UserError
from kdprune.teacher_stage import obtain_teacher, teacher_key
from kdprune.train import run
from kdprune.yolo import build_model, head_input_channels, hyp_namespace, save_ultralytics_checkpoint
from tests.conftest import TINY, compose
from tests.probes import assert_starts_from, probe
from tests.test_errors import assert_user_error, kdprune

pytestmark = pytest.mark.slow  # trains, converts or exports (make test-fast leaves it out)

# A tiny teacher (yolov8n, one epoch) trained by the teacher stage (its own seed, so no other test cached it first);
# the student is pruned at the start of epoch 0 with KD on, so the adapters follow a prune step before any training;
# class-weighted loss.
TEACHER = ["teacher=yolo11s", "teacher.cfg=yolov8n.yaml", "teacher.epochs=1"]
KD = [*TINY, *TEACHER, "teacher.seed=1", "distill=kd", "trainer.max_epochs=2", "prune=gradual",
      "prune.fade_epochs=0", "prune.start_epoch=0", "prune.end_epoch=0", "prune.steps=1", "prune.target.ratio=0.5",
      "loss=class_weighted"]


def _sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def kd_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("kd") / "run"
    return run_dir, run(compose(KD, run_dir=run_dir))


def _data_and_student(cfg):
    from omegaconf import OmegaConf

    data = resolve_data(cfg.data.yaml, cfg.cache_dir, OmegaConf.to_container(cfg.data.embedded), False)
    return data, build_model(cfg.model.cfg, None, data["names"], hyp_from_cfg(cfg, data))


def test_kd_run_trains_the_teacher_once_and_reports_each_term(kd_run):
    run_dir, s = kd_run
    assert s["teacher"]["source"] == "cache" and s["teacher"]["model"] == "yolov8n.yaml"
    assert (run_dir / "teacher" / "summary.json").is_file()  # stage 1 ran inside this run's dir
    assert s["distill"]["kd_ms_per_step"] > 0
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for t in ("train/kd_cls_epoch", "train/kd_ld_epoch", "train/kd_cwd_epoch", "train/box_loss_epoch",
              "train/kd_scale", "perf/kd_ms_per_step", "perf/kd_share_of_step"):
        assert t in tags, t
    assert len(acc.Scalars("teacher/mAP50-95")) == 1
    assert all(e.value > 0 for e in acc.Scalars("train/kd_cwd_epoch"))
    # the teacher's margin over the student, from the report's own rows (one evaluator, one loader)
    by = {r["stage"]: r["mAP50-95"] for r in s["stages"]}
    m = s["teacher"]["margin"]
    assert m["vs"] == "pruned fp32" and m["delta"] == round(by["teacher"] - by["pruned fp32"], 4)
    assert f"teacher mAP50-95 {by['teacher']:.4f} vs pruned fp32" in (run_dir / "report.md").read_text()
    meta = json.loads((Path(s["teacher"]["weights"]).parent / "meta.json").read_text())  # the cached teacher's
    assert meta["environment"]["packages"]["torch"] == metadata.version("torch")        # environment, for its users


def test_teacher_is_not_saved_or_trained_and_adapters_match_the_pruned_student(kd_run):
    run_dir, s = kd_run
    teacher_pt = s["teacher"]["weights"]
    meta_sha = _sha(teacher_pt)
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    keys = list(ckpt["state_dict"])
    assert not any("teacher" in k for k in keys)
    adapters = [ckpt["state_dict"][f"distiller.adapters.convs.{i}.weight"] for i in range(3)]
    best = torch.load(s["weights"]["best"], map_location="cpu", weights_only=False)["ema"]
    assert [a.shape[1] for a in adapters] == head_input_channels(best)  # pruned inputs, same as the student's
    teacher = torch.load(teacher_pt, map_location="cpu", weights_only=False)["ema"]
    assert [a.shape[0] for a in adapters] == head_input_channels(teacher)
    assert not any("distiller" in k or "teacher" in k for k in best.state_dict())
    params = sum(p.numel() for g in ckpt["optimizer_states"][0]["state"].values() for p in [g["exp_avg"]])
    student = sum(p.numel() for n, p in best.named_parameters() if ".dfl" not in n)  # DFL is frozen: no state
    assert params == student + sum(a.numel() + a.shape[0] for a in adapters)  # student + adapters, no teacher
    assert _sha(teacher_pt) == meta_sha


def test_teacher_cache_hit_skips_training(kd_run, tmp_path):
    _, s = kd_run
    cfg = compose(KD, run_dir=tmp_path / "again")
    data, student = _data_and_student(cfg)

    def must_not_train(_cfg):
        raise AssertionError("the cached teacher should have been reused")

    t = obtain_teacher(cfg, data, student, tmp_path / "again", train_fn=must_not_train)
    assert t.info["weights"] == s["teacher"]["weights"] and t.info["source"] == "cache"
    assert not t.model.training and not any(p.requires_grad for p in t.model.parameters())
    other = compose([*KD, "teacher.epochs=2"], run_dir=tmp_path / "x")
    assert teacher_key(other, data) != teacher_key(cfg, data)
    assert teacher_key(compose([*KD, "seed=3"], run_dir=tmp_path / "x"), data) == teacher_key(cfg, data)


def test_class_weights_are_counted_from_the_training_labels(kd_run):
    _, s = kd_run
    data_yaml = Path(s["data"])
    names = s["loss"]["counts"]
    hand = dict.fromkeys(names, 0)
    order = list(names)
    for f in (data_yaml.parent / "labels" / "train").glob("*.txt"):
        for line in f.read_text().splitlines():
            if line.strip():
                hand[order[int(line.split()[0])]] += 1
    assert s["loss"]["counts"] == hand
    n = np.array([hand[k] for k in order], dtype=float)
    raw = np.where(n > 0, 1 / np.maximum(n, 1), 0) ** 0.5
    raw = np.where(n > 0, raw, raw[n > 0].mean())
    assert np.allclose([s["loss"]["class_weights"][k] for k in order], raw / raw.mean(), atol=1e-4)


def test_resume_a_pruned_kd_run(kd_run, tmp_path):
    run_dir, s = kd_run
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    cfg = compose([*KD, "trainer.max_epochs=3", f"ckpt_path={ckpt}", *probe(tmp_path / "start")],
                  run_dir=tmp_path / "resumed")
    r = run(cfg)
    assert r["epochs"] == 3 and r["params"] == s["params"]
    # pruned weights, adapters (pruned with the student), optimizer moments and EMA as saved
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert any(k.startswith("distiller.adapters.") for k in saved["state_dict"])
    assert_starts_from(tmp_path / "start.0", saved)


def test_distill_none_loads_no_teacher(tmp_path):
    cfg = compose([*TINY, "teacher.weights=/no/such/teacher.pt", "teacher.name=custom"], run_dir=tmp_path / "r")
    data, student = _data_and_student(cfg)
    assert obtain_teacher(cfg, data, student, tmp_path, train_fn=None) is None


def test_teacher_with_other_classes_is_a_one_line_error(tmp_path):
    other = build_model("yolov8n.yaml", None, {0: "cat", 1: "dog", 2: "bird"}, hyp_namespace(imgsz=64))
    pt = save_ultralytics_checkpoint(tmp_path / "t.pt", other, epoch=0, train_args={})
    run_dir = tmp_path / "run"
    p = kdprune("distill=kd", f"teacher.weights={pt}", "teacher.name=custom", run_dir=run_dir)
    err = assert_user_error(p, "3 classes (cat, dog, bird)", "8 classes (", run_dir=run_dir)
    assert "circle" in err


@pytest.mark.parametrize("extra, needle", [
    (["distill=kd"], "needs a teacher"),
    (["distill=kd", *TEACHER, "distill.cls=0", "distill.ld=0", "distill.cwd=0"], "every term has weight 0"),
    (["distill=kd", *TEACHER, "distill.anchors=nearest"], "distill.anchors=nearest"),
    (["distill=kd", *TEACHER, "distill.t_ld=0"], "t_ld=0"),
    (["distill=kd", *TEACHER, "distill.schedule.shape=step"], "distill.schedule.shape=step"),
    (["loss=class_weighted", "loss.power=2"], "loss.power=2"),
    (["loss=focal", "loss.gamma=-1"], "gamma=-1"),
    (["distill=kd", *TEACHER, "+distill.t_cdw=5"], "distill.t_cdw"),  # a typo of t_cwd: refused, not silently dropped
    (["distill=kd", "teacher.weights=/no/such.pt", "teacher.name=custom"], "teacher.weights=/no/such.pt"),
])
def test_bad_distillation_and_loss_options_are_one_line_errors(extra, needle, tmp_path):
    with pytest.raises(UserError, match=needle.replace("(", r"\(")):
        run(compose([*TINY, *extra], run_dir=tmp_path / "run"))


def test_a_bad_option_stops_the_run_before_the_teacher_stage(tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(UserError, match="prune.target.ratio=1.5"):
        run(compose([*KD, "teacher.seed=7", "prune.target.ratio=1.5"], run_dir=run_dir))
    assert not (run_dir / "teacher").exists()  # no minutes spent training a teacher for a run that cannot start
