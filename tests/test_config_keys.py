"""Every key of every option file has a reader: a key that nothing reads is a bug (a user sets it and nothing
happens). Each leaf key is matched to its consumer:

- under a ``_target_``: Hydra passes it to that class, whose signature must take it;
- ``trainer.*``: Lightning's ``Trainer`` arguments;
- ``data.augment.*``, ``optim.*``, the loss gains: ultralytics' hyperparameters (``hyp_from_cfg`` passes them on),
  but for the two optim keys kdprune reads itself; ``finetune.*``: optim values of the fine-tuning recipe, the same;
- ``distill.schedule.*``: ``kd_scale_at``'s arguments; ``distill.<term>`` / ``distill.t_<term>``: a KD term of the
  registry (``kdprune.losses.kd.KD_TERMS``); ``data.embedded.*``: the dataset generator's;
- ``prune.target.*``: the budget kinds; ``target.rules.*``: the rules of kdprune/export/target.py; other ``target.*``
  keys: interpolated by another group's file (``${target.granularity}``);
- anything else: a run that selects the file must read it, recorded (``tests/keyreads.py``) while the run checks its
  config, builds the data, the student, the teacher, the pruning phase, the module and the trainer, up to the first
  training step (``READS``: one run per option file, stopped at ``Trainer.fit``). A key read only after training
  (stages, exports, report, deploy kit) is listed in ``AFTER_FIT`` with its reader, and the source must read it as
  ``<parent>.<key>``, ``["<key>"]`` or ``get("<key>"``; a listed key that the run reads before training fails too,
  so the list stays exact.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import lightning as L
import pytest
from hydra.utils import get_class
from omegaconf import OmegaConf

from kdprune import CONF_DIR
from kdprune.distill import kd_scale_at
from kdprune.losses import KD_TERMS
from kdprune.pruning import MEASURES

PKG = CONF_DIR.parent  # the kdprune package (its configs ship inside it)
SOURCE = "\n".join(p.read_text() for p in PKG.rglob("*.py"))
SKIP_DIRS = {"hydra", "hparams_search", "experiment"}  # Hydra's own, sweeps, overrides


def _leaves(node, path=()):
    if isinstance(node, dict):
        if "_target_" in node:
            for k in node:
                if k != "_target_":
                    yield path + (k,), node["_target_"]
            return
        for k, v in node.items():
            if k == "defaults":
                continue
            yield from _leaves(v, path + (k,))
    else:
        yield path, None


def _option_keys():
    for f in sorted(CONF_DIR.rglob("*.yaml")):
        rel = f.relative_to(CONF_DIR)
        if rel.parts[0] in SKIP_DIRS:
            continue
        group = rel.parts[:-1]  # () for config.yaml
        node = OmegaConf.to_container(OmegaConf.load(f), resolve=False)
        for path, target in _leaves(node):
            yield str(rel), group + path, target


def _hyp_keys() -> set[str]:
    from ultralytics.cfg import DEFAULT_CFG_DICT

    return set(DEFAULT_CFG_DICT)


def _read_in_source(path: tuple[str, ...]) -> bool:
    key, parent = path[-1], path[-2] if len(path) > 1 else None
    if key == "name":
        return bool(re.search(rf"\b{parent}\.name\b|\b{parent}\.get\(\"name\"", SOURCE))
    pats = [rf"\[\"{key}\"\]", rf"get\(\"{key}\"", rf"\bcfg\.{key}\b"]
    if parent is not None:
        pats.append(rf"\b{parent}\.{key}\b")
    else:
        pats.append(rf"\bcfg\.get\(\"{key}\"|\bcfg\.{key}\b")
    return any(re.search(p, SOURCE) for p in pats)


CASES = list(_option_keys())

# Keys read outside the recorded window (the entry point, or after training), with their reader: each is checked in
# the source, and checked not to be read before training (a stale entry fails).
_STAGES = "the stages after training (export/stages.py, export/device.py, part.py's verdict)"
AFTER_FIT: dict[str, str] = {
    "task": "kdprune/__main__.py: which task the entry point runs (train or the sensitivity scan), before run()",
    **{f"device.{k}": _STAGES for k in ("name", "part", "model_flash", "model_sram")},
    **{f"export.{k}": _STAGES for k in ("max_bytes", "max_arena_bytes", "tflm_images", "threads")},
    "quant.ptq_images": "the PTQ baseline's calibration images, after training (export/formats.py)",
}
# Keys read only on a path the file's plain composition does not take: more compositions of that group.
VARIANTS = {"model": [["model.fused_act_layers=3"]], "teacher": [["teacher.init={teacher_pt}"]]}
RUN_BASE = ["data.imgsz=64", "data.embedded.n_train=8", "data.embedded.n_val=4", "data.embedded.imgsz=64",
            "data.batch=4", "data.val_batch=4", "data.workers=0", "logger=none"]  # default epochs: nothing trains


class _Stop(Exception):
    """Raised at ``Trainer.fit``: the run has read what it reads before training."""


def _run_reads(overrides: list[str], run_dir: Path) -> set[str]:
    from kdprune.errors import UserError
    from kdprune.train import run
    from tests.conftest import compose
    from tests.keyreads import recording

    def stop(*args, **kwargs):
        raise _Stop

    fit, L.Trainer.fit = L.Trainer.fit, stop
    try:
        with recording() as read:
            try:
                run(compose(overrides, run_dir=run_dir))
            except _Stop:
                pass
            except UserError as e:  # the composition must reach training, or its keys were not all read
                raise AssertionError(f"{overrides}: {e}") from None
    finally:
        L.Trainer.fit = fit
    return read


@pytest.fixture(scope="module")
def teacher_pt(tmp_path_factory) -> Path:
    """An untrained yolo11s for the embedded set's classes, saved as ultralytics does (``distill=kd``'s teacher)."""
    from kdprune.data.scene import CLASS_NAMES
    from kdprune.yolo import build_model, hyp_namespace, save_ultralytics_checkpoint

    model = build_model("yolo11s.yaml", None, dict(enumerate(CLASS_NAMES)), hyp_namespace(imgsz=64))
    return save_ultralytics_checkpoint(tmp_path_factory.mktemp("teacher") / "t.pt", model, epoch=0, train_args={})


@pytest.fixture(scope="module")
def reads(tmp_path_factory, teacher_pt):
    """Option file -> the full keys a run that selects it reads before training (one run each, ~1-3 s)."""
    tmp = tmp_path_factory.mktemp("reads")
    base = [*RUN_BASE, f"cache_dir={tmp / 'cache'}"]
    out: dict[str, set[str]] = {}
    for i, file in enumerate(sorted({f for f, _, _ in CASES})):
        parts = Path(file).with_suffix("").parts
        group, option = "/".join(parts[:-1]), parts[-1]
        extra = [] if not group else [f"{group}={option}"]
        if group == "distill" and option != "none":  # a teacher to distil from, given (no teacher training)
            extra += ["teacher=yolo11s", f"teacher.weights={teacher_pt}"]
        if group == "teacher" and option != "none":  # the teacher stage trains it: read up to its first step
            extra += ["distill=kd"]
            if option.startswith("yolo26"):  # no DFL bins: a YOLO26 student, no box distillation (else refused)
                extra += ["model=yolo26n", "distill.ld=0"]
        if group == "device" and option != "generic":  # a part names its NPU, and the run must target it
            extra += [f"target={OmegaConf.load(CONF_DIR / file).target}"]
        if group == "prune" and option != "none":  # the file leaves the target to the user (or an experiment)
            extra += ["prune.target.int8_bytes=2000000"]
        if group == "trainer" and option != "cpu":  # GPU / multi-process trainers: their keys are Lightning's
            continue
        out[file] = _run_reads([*base, *extra], tmp / f"run{i}")
        if option != "none":
            for j, more in enumerate(VARIANTS.get(group, [])):
                more = [m.format(teacher_pt=teacher_pt) for m in more]
                out[file] |= _run_reads([*base, *extra, *more], tmp / f"run{i}_{j}")
    return out


@pytest.mark.parametrize("file,path,target", CASES, ids=[f"{f}:{'.'.join(p)}" for f, p, _ in CASES])
def test_every_option_key_has_a_reader(file, path, target, request):
    key = path[-1]
    if target is not None:
        params = inspect.signature(get_class(target).__init__).parameters
        assert key in params or any(p.kind == p.VAR_KEYWORD for p in params.values()), f"{target} takes no {key}"
    elif path[0] == "trainer":
        assert key in inspect.signature(L.Trainer.__init__).parameters, f"Lightning's Trainer takes no {key}"
    elif (path[:2] == ("data", "augment") or (path[0] in ("optim", "finetune") and key not in ("grad_clip", "ema"))
          or (path[0] == "loss" and key in ("box", "cls", "dfl"))):
        assert key in _hyp_keys(), f"ultralytics has no hyperparameter {key}"
    elif path[0] == "distill" and len(path) == 2 and (key in KD_TERMS or key.removeprefix("t_") in KD_TERMS):
        pass  # a KD term's weight or temperature: read through the registry (kd_settings), by the term's name
    elif path[:2] == ("distill", "schedule"):
        assert key in inspect.signature(kd_scale_at).parameters
    elif path[:2] == ("data", "embedded"):
        from kdprune.data.synth import generate

        assert key in inspect.signature(generate).parameters
    elif path[:2] == ("prune", "target"):
        assert key == "ratio" or key in MEASURES
    elif path[:2] == ("target", "rules"):
        from kdprune.export.target import RULES

        assert path[2] in RULES, f"{file}: no rule {path[2]} in kdprune/export/target.py"
    elif path[0] == "target" and key != "name":  # a target's settings reach the groups by interpolation
        conf = "\n".join(f.read_text() for f in CONF_DIR.rglob("*.yaml") if f.parent.name != "target")
        assert f"${{target.{key}}}" in conf, f"{file}: no config interpolates target.{key}"
    else:
        full, read = ".".join(path), request.getfixturevalue("reads")[file]
        where = AFTER_FIT.get(full)
        if where is not None:
            assert full not in read, f"{file}: {full} is read before training: take it off AFTER_FIT"
            assert _read_in_source(path), f"{file}: nothing in kdprune/ reads {full} ({where})"
        else:
            assert full in read, f"{file}: a run with it never reads {full} (and AFTER_FIT does not list it)"


def test_the_key_walk_sees_every_option_file():
    files = {f for f, _, _ in CASES}
    assert {"config.yaml", "prune/gradual.yaml", "quant/int8_qat.yaml", "export/int8.yaml", "distill/kd.yaml",
            "callbacks/default.yaml", "trainer/cpu.yaml", "data/shapes.yaml"} <= files
    assert len(CASES) > 100
    assert not _read_in_source(("export", "no_such_key"))  # the source check can say no
    assert Path(__file__).is_file()


def test_nms_settings_have_no_default_in_code():
    """val.conf / val.iou / val.max_det reach every evaluation: no evaluator has a default of its own to fall back
    on, so a call site that did not pass the configured values would fail, not silently use 0.001 / 0.7 / 300."""
    from kdprune.export.scoring import evaluate_runner
    from kdprune.sensitivity.calibrate import val_metrics
    from kdprune.yolo import DetectionEvaluator

    for fn in (DetectionEvaluator.__init__, evaluate_runner, val_metrics):
        params = inspect.signature(fn).parameters
        for k in ("conf", "iou", "max_det"):
            assert params[k].default is inspect.Parameter.empty, (fn.__qualname__, k)
