"""Starting from pretrained checkpoints, as users do: ``teacher.init`` (any detection checkpoint, fine-tuned by the
teacher stage and cached by content), ``model.weights`` with another class count through pruning, KD, QAT and export,
and the fine-tuning recipe (kdprune/recipe.py)."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from omegaconf import OmegaConf
from ultralytics.nn.tasks import yaml_model_load

import kdprune.build as kb
from kdprune.data import resolve_data
from kdprune.recipe import FINETUNE_SHARE, training_optim
from kdprune.teacher_stage import teacher_key
from kdprune.train import run
from kdprune.yolo import build_model, hyp_namespace, save_ultralytics_checkpoint
from tests.conftest import TINY, compose
from tests.test_errors import assert_user_error, kdprune

pytestmark = pytest.mark.slow  # trains, converts or exports (make test-fast leaves it out)

COCO_LIKE = {i: f"coco{i}" for i in range(80)}
# a fine-tuning recipe that differs from the from-scratch values (the default's are equal), so a test sees which applied
FT = [*TINY, "finetune.lr0=0.001", "finetune.warmup_epochs=1.0"]


def _pretrained(path, yaml: str, seed: int):
    """An 80-class checkpoint standing in for COCO's yolo11n.pt / yolo11s.pt (random weights, ultralytics' format)."""
    torch.manual_seed(seed)
    model = build_model(yaml, None, COCO_LIKE, hyp_namespace())
    return save_ultralytics_checkpoint(path, model, epoch=0, train_args={"model": yaml})


def _data_names() -> dict:
    cfg = compose(TINY)
    return dict(resolve_data(cfg.data.yaml, cfg.cache_dir, OmegaConf.to_container(cfg.data.embedded), False)["names"])


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten().float(), b.flatten().float(), dim=0))


@pytest.fixture(scope="module")
def ft_run(tmp_path_factory):
    """yolo11n from an 80-class checkpoint, a yolov8n teacher fine-tuned from another, pruned with KD, and QAT (its
    graph scored; the exports of a run from a checkpoint are test_quant_train.py's, whose run starts from one too)."""
    d = tmp_path_factory.mktemp("ft")
    student = _pretrained(d / "yolo11n80.pt", "yolo11n.yaml", 0)
    init = _pretrained(d / "yolov8n80.pt", "yolov8n.yaml", 1)
    overrides = [*FT, f"model.weights={student}", "teacher=yolo11s", f"teacher.init={init}", "teacher.init_epochs=1",
                 "teacher.seed=2", "distill=kd", "trainer.max_epochs=3", "prune=gradual", "prune.fade_epochs=0",
                 "prune.start_epoch=0", "prune.end_epoch=0", "prune.steps=1", "prune.target.ratio=0.3",
                 "quant=int8_qat", "quant.start_epoch=1", "quant.freeze_bn_epoch=2", "quant.freeze_observer_epoch=2",
                 "quant.ptq_images=8", "export=int8", "export.formats=[]",
                 "logger=none", "val.plot_every=0"]
    run_dir = d / "run"
    made = []

    class Recorded(kb.DetectionModule):  # what the module declared in __init__ (test_the_module_declares_its_state)
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self.declared = None
            self.declared = set(vars(self))
            made.append(self)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(kb, "DetectionModule", Recorded)
        s = run(compose(overrides, run_dir=run_dir))
    return d, run_dir, s, made[-1]  # (the teacher stage's run made the first module)


def test_the_module_declares_its_state_in_init(ft_run):
    """DetectionModule's state is declared in __init__ (issue 18): nothing outside it (callbacks, train.py) adds an
    attribute during a run that prunes, distils and enters QAT; its transitions are methods."""
    module = ft_run[3]
    added = {a for a in set(vars(module)) - module.declared if not a.startswith("_")}
    assert not added, sorted(added)


def test_teacher_init_is_fine_tuned_for_the_datas_classes_and_cached(ft_run):
    d, run_dir, s, _ = ft_run
    t = s["teacher"]
    assert t["source"] == "cache" and t["init"] == str(d / "yolov8n80.pt")
    assert json.loads((run_dir / "teacher" / "summary.json").read_text())["recipe"]["recipe"] == "finetune"
    ckpt = torch.load(t["weights"], map_location="cpu", weights_only=False)
    teacher = ckpt["ema"]
    assert int(teacher.nc) == 8 and dict(teacher.names) == _data_names()
    # the init's architecture (yolov8n), not teacher.cfg's (yolo11s) from scratch, with its weights transferred
    init = torch.load(d / "yolov8n80.pt", map_location="cpu", weights_only=False)["ema"].state_dict()
    sd = teacher.state_dict()
    assert set(sd) == set(init)
    stem = "model.0.conv.weight"
    assert _cos(sd[stem], init[stem]) > 0.9  # an independent random init would be ~0
    assert sd["model.22.cv3.0.2.weight"].shape[0] == 8 and init["model.22.cv3.0.2.weight"].shape[0] == 80
    assert "yolov8n80-ft-e1-" in t["weights"]


def test_a_student_from_an_80_class_checkpoint_goes_through_pruning_kd_and_qat(ft_run):
    d, run_dir, s, _ = ft_run
    best = torch.load(run_dir / "weights" / "best.pt", map_location="cpu", weights_only=False)["ema"]
    assert int(best.nc) == 8 and dict(best.names) == _data_names()
    assert s["pruning"]["steps"] and s["params"] < 2_000_000  # pruned
    assert s["model"] == str(d / "yolo11n80.pt")
    rows = {r["stage"]: r for r in s["stages"]}
    assert rows["QAT fake-quant"]["mAP50-95"] is not None and rows["PTQ baseline"]["mAP50-95"] is not None
    # the fine-tuning recipe reached the optimizer
    assert s["recipe"]["recipe"] == "finetune" and s["recipe"]["values"]["lr0"]["value"] == 0.001
    assert s["optimizer"]["lr0"] == pytest.approx(0.001)


def test_recipe_sources(tmp_path):
    # by default the fine-tuning values are the from-scratch ones (measured), and say where they came from
    default, src = training_optim(compose(TINY), transferred=1.0, given=set())
    assert (default["lr0"], default["warmup_epochs"]) == (0.003, 3.0) and src["recipe"] == "finetune"
    assert src["values"]["lr0"]["from"].startswith("recipe finetune")
    scratch, src = training_optim(compose(FT), transferred=0.0, given=set())
    assert scratch["lr0"] == 0.003 and src["recipe"] == "scratch"
    assert src["values"]["lr0"]["from"] == "optim (from scratch)"
    ft, src = training_optim(compose(FT), transferred=1.0, given=set())
    assert (ft["lr0"], ft["warmup_epochs"]) == (0.001, 1.0) and src["recipe"] == "finetune"
    assert src["values"]["warmup_epochs"]["from"].startswith("recipe finetune")
    # set on the command line (even to the from-scratch value): it wins
    cli, src = training_optim(compose([*FT, "optim.lr0=0.003"]), transferred=1.0, given={"optim.lr0"})
    assert cli["lr0"] == 0.003 and cli["warmup_epochs"] == 1.0 and src["values"]["lr0"]["from"] == "command line"
    # set by an experiment (differs from config.yaml's value): it wins too
    exp, src = training_optim(compose([*FT, "optim.lr0=0.002"]), transferred=1.0, given=set())
    assert exp["lr0"] == 0.002 and src["values"]["lr0"]["from"] == "config"
    forced, _ = training_optim(compose([*FT, "recipe=finetune"]), transferred=0.0, given=set())
    assert forced["lr0"] == 0.001
    off, _ = training_optim(compose([*FT, "recipe=scratch"]), transferred=1.0, given=set())
    assert off["lr0"] == 0.003
    mine, _ = training_optim(compose([*FT, "finetune.lr0=0.0005"]), transferred=1.0, given=set())
    assert mine["lr0"] == 0.0005
    # auto fine-tunes by the share of the model that starts trained (FINETUNE_SHARE), not by a checkpoint being given
    few, src = training_optim(compose(FT), transferred=0.07, given=set())
    assert few["lr0"] == 0.003 and src["recipe"] == "scratch" and src["transferred"] == 0.07
    most, src = training_optim(compose(FT), transferred=FINETUNE_SHARE, given=set())
    assert most["lr0"] == 0.001 and src["recipe"] == "finetune"


def test_model_pretrained_transfers_tensors_of_equal_shape_and_the_share_picks_the_recipe(tmp_path):
    """``model.pretrained``: model.cfg built and started from a checkpoint's tensors of equal name and shape
    (ultralytics' ``pretrained=``), the share that moved reported and deciding recipe=auto."""
    src = _pretrained(tmp_path / "yolo11n80.pt", "yolo11n.yaml", 0)
    sd = torch.load(src, map_location="cpu", weights_only=False)["ema"].float().state_dict()
    # the checkpoint's own architecture: all but the 80 class rows move, so it is fine-tuned
    _, hyp, model, recipe = kb.build_student(compose([*FT, f"model.pretrained={src}"]))
    assert recipe["recipe"] == "finetune" and 0.9 < recipe["transferred"] < 1.0 and hyp.lr0 == 0.001
    assert torch.equal(model.state_dict()["model.0.conv.weight"], sd["model.0.conv.weight"])
    assert int(model.model[-1].nc) == 8 and model.args is hyp
    # yolo11n (width 0.25) cut to 0.20 by hand (the first user's attempt): few shapes match, so from scratch
    y = {k: v for k, v in yaml_model_load("yolo11n.yaml").items() if k not in ("scales", "scale", "yaml_file")}
    y.update(depth_multiple=0.5, width_multiple=0.20, max_channels=1024)
    (tmp_path / "narrow.yaml").write_text(yaml.safe_dump(y))
    cfg = compose([*FT, f"model.cfg={tmp_path / 'narrow.yaml'}", f"model.pretrained={src}"])
    _, hyp, model, recipe = kb.build_student(cfg)
    assert recipe["recipe"] == "scratch" and 0.0 < recipe["transferred"] < FINETUNE_SHARE and hyp.lr0 == 0.003
    moved = [k for k, v in model.state_dict().items() if k in sd and v.shape == sd[k].shape and v.is_floating_point()
             and v.numel() > 1 and torch.equal(v, sd[k])]
    narrower = [k for k, v in model.state_dict().items() if k in sd and v.shape != sd[k].shape]
    assert moved and narrower  # the layers of equal width moved, the narrower ones start fresh


def test_model_weights_and_pretrained_together_is_a_user_error(tmp_path):
    src = _pretrained(tmp_path / "yolo11n80.pt", "yolo11n.yaml", 0)
    p = kdprune(f"model.weights={src}", f"model.pretrained={src}", run_dir=tmp_path / "run", timeout=120)
    assert_user_error(p, "model.weights and model.pretrained", run_dir=tmp_path / "run")
    p = kdprune("model.pretrained=yolo11n.pt", run_dir=tmp_path / "run", timeout=120)
    assert_user_error(p, "model.pretrained=yolo11n.pt", "never downloads", "model.pretrained=null",
                      run_dir=tmp_path / "run")


def test_the_teacher_cache_key_follows_the_init_files_content(tmp_path):
    init = _pretrained(tmp_path / "yolov8n80.pt", "yolov8n.yaml", 1)
    base = [*TINY, "distill=kd", "teacher=yolo11s"]
    cfg = compose(base)
    data = resolve_data(cfg.data.yaml, cfg.cache_dir, OmegaConf.to_container(cfg.data.embedded), False)
    scratch = teacher_key(cfg, data)
    assert scratch.startswith("yolo11s-e20-")
    k1 = teacher_key(compose([*base, f"teacher.init={init}"]), data)
    assert k1.startswith("yolov8n80-ft-e10-") and k1 != scratch
    _pretrained(init, "yolov8n.yaml", 2)  # the same path, retrained
    k2 = teacher_key(compose([*base, f"teacher.init={init}"]), data)
    assert k2 != k1 and k2.startswith("yolov8n80-ft-e10-")
    # the fine-tuning recipe is part of the key: another lr is another teacher
    assert teacher_key(compose([*base, f"teacher.init={init}", "finetune.lr0=0.0005"]), data) != k2


def test_missing_teacher_init_names_where_to_put_it(tmp_path):
    p = kdprune("distill=kd", "teacher=yolo11s", "teacher.init=yolo11s.pt", run_dir=tmp_path / "run", timeout=120)
    assert_user_error(p, "teacher.init=yolo11s.pt", "never downloads", "teacher.init=null", run_dir=tmp_path / "run")


@pytest.mark.parametrize("bad,needle", [("recipe=pretrained", "recipe=pretrained"),
                                        ("+finetune.momentum_x=0.9", "finetune.momentum_x"),
                                        ("+finetune.grad_clip=1.0", "finetune.grad_clip"),  # read once, not per model
                                        ("+finetune.nbs=64", "finetune.nbs")])  # interpolated: follows data.batch
def test_bad_recipe_options(tmp_path, bad, needle):
    p = kdprune(bad, run_dir=tmp_path / "run", timeout=120)
    assert_user_error(p, needle, run_dir=tmp_path / "run")
