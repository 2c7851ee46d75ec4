"""Every experiment and every group option composes, and what it names instantiates."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from tests.conftest import CONF, compose

EXPERIMENTS = sorted(p.stem for p in (Path(CONF) / "experiment").glob("*.yaml"))
MODELS = sorted(p.stem for p in (Path(CONF) / "model").glob("*.yaml"))


def test_there_are_experiments():
    assert "yolo11n_mcu" in EXPERIMENTS


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes_and_instantiates(name, tmp_path):
    from kdprune.yolo import build_model, hyp_namespace

    cfg = compose(experiment=name, run_dir=tmp_path)
    callbacks = [instantiate(c) for c in cfg.callbacks.values()]
    loggers = [instantiate(c) for c in cfg.logger.values()]
    assert callbacks and (loggers or cfg.task == "sensitivity")  # the scan trains nothing: nothing to log
    names = {i: f"c{i}" for i in range(8)}
    model = build_model(cfg.model.cfg, cfg.model.weights, names, hyp_namespace())
    assert model.nc == 8 and model.names == names


def test_config_groups_and_none_options():
    cfg = compose()
    for group in ("data", "model", "teacher", "prune", "distill", "loss", "quant", "export", "trainer", "logger",
                  "callbacks"):
        assert group in cfg, group
    for group in ("prune", "distill", "quant"):
        assert cfg[group].name == "none"
    assert cfg.export.formats == []  # export=none: no formats (the group has no name key: nothing would read it)
    assert "experiment" not in cfg


@pytest.mark.parametrize("trainer", ["cpu", "gpu", "ddp"])
def test_trainer_options_compose(trainer):
    import inspect

    import lightning as L

    cfg = compose([f"trainer={trainer}"])
    assert cfg.trainer.max_epochs >= 1
    unknown = set(cfg.trainer) - set(inspect.signature(L.Trainer.__init__).parameters)
    assert not unknown, unknown
    if trainer != "gpu":  # no GPU here; the gpu options are checked by name above
        L.Trainer(**cfg.trainer, logger=False, enable_checkpointing=False)


@pytest.mark.parametrize("model", MODELS)
def test_model_options_build(model):
    from kdprune.yolo import build_model, hyp_namespace

    cfg = compose([f"model={model}"])
    m = build_model(cfg.model.cfg, None, {0: "a", 1: "b"}, hyp_namespace())
    assert m.nc == 2


@pytest.mark.parametrize("nc", [2, 80])
def test_weights_saved_without_a_trainer_load(nc, tmp_path):
    """A checkpoint of a DetectionModel built directly (no ``nc`` attribute, as a trainer would set) loads as
    model.weights, with the same class count (used as is) or another (rebuilt, tensors transferred)."""
    from ultralytics.nn.tasks import DetectionModel

    from kdprune.yolo import build_model, hyp_namespace, save_ultralytics_checkpoint

    plain = DetectionModel("yolo11n.yaml", nc=nc, verbose=False)
    assert not hasattr(plain, "nc")
    path = save_ultralytics_checkpoint(tmp_path / "plain.pt", plain, epoch=0, train_args={})
    m = build_model(None, str(path), {0: "a", 1: "b"}, hyp_namespace())
    assert m.model[-1].nc == 2 and m.nc == 2
    stem = "model.0.conv.weight"
    assert torch.equal(m.state_dict()[stem], plain.state_dict()[stem].half().float())


def test_embedded_dataset_default_is_the_issue_default():
    cfg = compose(experiment="yolo11n_mcu")
    assert cfg.data.yaml is None and cfg.data.embedded.n_train >= 100


@pytest.mark.parametrize("teacher", sorted(p.stem for p in (Path(CONF) / "teacher").glob("*.yaml") if p.stem != "none"))
def test_teacher_options_build_and_pass_the_checks(teacher):
    from kdprune.losses.objectives import check_objectives
    from kdprune.yolo import build_model, hyp_namespace

    cfg = compose([f"teacher={teacher}", "distill=kd"])
    check_objectives(cfg)
    assert cfg.teacher.epochs >= 1 and cfg.teacher.weights is None
    m = build_model(cfg.teacher.cfg, None, {0: "a"}, hyp_namespace())
    assert m.nc == 1


@pytest.mark.parametrize("loss", sorted(p.stem for p in (Path(CONF) / "loss").glob("*.yaml")))
def test_loss_options_pass_the_checks(loss):
    from kdprune.losses.objectives import LOSSES, check_objectives

    cfg = compose([f"loss={loss}"])
    assert cfg.loss.name in LOSSES
    check_objectives(cfg)


def test_the_mcu_experiment_distils():
    cfg = compose(experiment="yolo11n_mcu")
    assert cfg.distill.name == "kd" and cfg.teacher.name == "yolo11s"


def test_sweep_options_compose():
    """The shipped sweeper and launchers: Optuna maximises within a multirun; SLURM asks for what the trainer uses."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        opt = hydra_compose("config", ["+experiment=yolo11n_mcu", "+hparams_search=optuna"], return_hydra_config=True)
        slurm = hydra_compose("config", ["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4",
                                         "trainer.num_nodes=2"], return_hydra_config=True)
        par = hydra_compose("config", ["hydra/launcher=parallel"], return_hydra_config=True)
    assert str(opt.hydra.mode) == "RunMode.MULTIRUN" and opt.hydra.sweeper.direction == "maximize"
    assert {"distill.cls", "prune.importance", "prune.shape", "prune.start_epoch", "prune.end_epoch"} <= set(
        opt.hydra.sweeper.params)
    # every sampled start/end pair is a valid schedule before yolo11n_mcu's QAT (epoch 21 of 25), with room for its
    # steps (one per epoch) and the default fade before the first, and the default schedule is one of them
    def bounds(key):
        lo, hi = (int(x) for x in opt.hydra.sweeper.params[key].removeprefix("range(").rstrip(")").split(","))
        return lo, hi - 1  # range's end is exclusive

    (s0, s1), (e0, e1) = bounds("prune.start_epoch"), bounds("prune.end_epoch")
    assert e0 - s1 >= opt.prune.steps - 1 and e1 < opt.trainer.max_epochs + opt.quant.start_epoch
    assert s0 <= opt.prune.start_epoch <= s1 and e0 <= opt.prune.end_epoch <= e1
    assert s0 >= opt.prune.fade_epochs + (opt.prune.importance_epochs > 0)
    launcher = OmegaConf.to_container(slurm.hydra.launcher, resolve=True)
    assert launcher["_target_"].endswith("SlurmLauncher")
    assert (launcher["gpus_per_node"], launcher["tasks_per_node"], launcher["nodes"]) == (4, 4, 2)
    assert par.hydra.launcher._target_.endswith("JoblibLauncher") and par.hydra.launcher.n_jobs == 2
    assert "kdprune.report.callback.SweepSummary" in str(OmegaConf.to_container(opt.hydra.callbacks))


def test_every_group_with_a_none_option_is_decided_for_the_teacher_run():
    """The teacher stage switches groups off by loading their none.yaml: a new group with a none option must be put in
    PLAIN_RUN_OFF or PLAIN_RUN_KEEPS, and each listed group must have one (the loader would fail mid-run)."""
    from kdprune import CONF_DIR
    from kdprune.teacher_stage import PLAIN_RUN_KEEPS, PLAIN_RUN_OFF

    with_none = {p.parent.name for p in CONF_DIR.glob("*/none.yaml")}
    assert with_none == set(PLAIN_RUN_OFF) | set(PLAIN_RUN_KEEPS)
    assert not set(PLAIN_RUN_OFF) & set(PLAIN_RUN_KEEPS)


def test_the_teacher_run_takes_nothing_of_the_students_model(tmp_path):
    """The teacher stage's config is a plain run of the teacher: the student's model.cfg / model.pretrained /
    model.weights must not reach it (a yolo11s built and then started from the student's yolo11n tensors)."""
    from kdprune.teacher_stage import _teacher_cfg

    cfg = compose(["distill=kd", "teacher=yolo11s", "model.cfg=my-narrow.yaml", "model.pretrained=yolo11n.pt",
                   "teacher.init=yolo11s.pt"])
    t = _teacher_cfg(cfg, tmp_path / "teacher")
    assert t.model.pretrained is None and t.model.weights.endswith("yolo11s.pt") and t.model.cfg == cfg.teacher.cfg
    assert _teacher_cfg(compose(["distill=kd", "teacher=yolo11s", "model.pretrained=yolo11n.pt"]),
                        tmp_path / "teacher").model.weights is None
