"""The teacher stage: load the teacher from ``teacher.weights``, or train it on the run's data and cache it.

With no ``teacher.weights`` (a teacher already trained on these classes), kdprune trains one as a first stage of the
run, with the same data, image size, augmentation and optimizer: fine-tuned from ``teacher.init`` (any ultralytics
detection checkpoint, e.g. COCO's yolo11s.pt: the head is rebuilt for the data's classes and every tensor of matching
shape transferred, as ultralytics' trainer does), or from scratch (``teacher.cfg``). Its ``best.pt`` is cached under
``<cache_dir>/teachers/`` keyed by the data's fingerprint, the teacher's recipe and the init file's content. Later
runs and sweep jobs load it instead of training again; concurrent jobs wait on a file lock rather than training twice.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from kdprune import CONF_DIR
from kdprune.callbacks import last_checkpoint
from kdprune.data import data_fingerprint
from kdprune.distill import Teacher
from kdprune.errors import UserError
from kdprune.recipe import training_optim
from kdprune.yolo import build_model, check_checkpoint, dfl_mismatch, load_teacher, teacher_mismatch

log = logging.getLogger("kdprune")
# The teacher trains as a plain run: these groups switch to their own `none` option (conf/<group>/none.yaml). Every
# group with a `none` option is in one of the two lists (tests/test_config.py checks it), so whoever adds a group
# decides whether a teacher's run keeps it.
PLAIN_RUN_OFF = ("teacher", "prune", "distill", "quant", "export")
PLAIN_RUN_KEEPS = ("logger",)  # the teacher's curves go to the run's TensorBoard too
RECIPE_VERSION = 1  # bump when the way kdprune trains a teacher changes, so stale cached teachers are not reused


def _teacher_cfg(cfg: DictConfig, run_dir: Path) -> DictConfig:
    """The run's config turned into a plain training run of the teacher: no pruning, distillation or quantization,
    the default loss, one device (under DDP the teacher is trained before the workers start, see ``obtain_teacher``)."""
    t = cfg.copy()
    with open_dict(t):
        t.model = {"name": cfg.teacher.name, "cfg": cfg.teacher.cfg, "weights": _init(cfg), "pretrained": None}
        for group in PLAIN_RUN_OFF:
            t[group] = OmegaConf.load(CONF_DIR / group / "none.yaml")
        t.loss = {**OmegaConf.load(CONF_DIR / "loss" / "default.yaml"),
                  **{k: cfg.loss[k] for k in ("box", "cls", "dfl")}}
        t.trainer.max_epochs = _epochs(cfg)
        t.trainer.devices = 1
        for k in ("strategy", "num_nodes"):
            t.trainer.pop(k, None)
        t.seed = int(cfg.teacher.seed)
        t.reference = None  # the student's dense reference is no row of the teacher's report
        # resuming an interrupted run (ckpt_path=last) resumes its teacher stage too, if that was interrupted
        t.ckpt_path = "last" if cfg.ckpt_path == "last" and last_checkpoint(run_dir).is_file() else None
        t.run_dir = str(run_dir)
    return t


def _init(cfg: DictConfig) -> str | None:
    """The checkpoint the teacher stage fine-tunes from (``teacher.init``), or None: from scratch."""
    init = cfg.teacher.get("init")
    return str(Path(str(init)).expanduser()) if init else None


def _epochs(cfg: DictConfig) -> int:
    """The teacher stage's epochs: ``teacher.init_epochs`` fine-tuning ``teacher.init``, else ``teacher.epochs``."""
    return int(cfg.teacher.init_epochs if _init(cfg) else cfg.teacher.epochs)


def _file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_teacher(cfg: DictConfig) -> None:
    """What the teacher stage needs from the config, checked before any work: a loadable detection ``teacher.init``."""
    if cfg.distill.name != "none" and not cfg.teacher.weights and (init := _init(cfg)):
        check_checkpoint(init, "teacher.init")


def _check_box_distillation(cfg: DictConfig, student) -> None:
    """``distill.ld`` needs the teacher the stage will train to have the student's DFL bins: its architecture (the
    init file's, or ``teacher.cfg`` built empty, in a second) is compared before it trains."""
    if float(cfg.distill.ld) <= 0:
        return
    init = _init(cfg)
    arch = load_teacher(init) if init else build_model(str(cfg.teacher.cfg), None, dict(student.names), None)
    if (why := dfl_mismatch(student, arch)) is not None:
        raise UserError(f"teacher={cfg.teacher.name}: {why}")


def teacher_key(cfg: DictConfig, data: dict) -> str:
    """Cache key: the data's fingerprint and everything that shapes the trained teacher (the init file by content:
    a retrained yolo11s.pt at the same path is another teacher)."""
    init = _init(cfg)
    recipe = {
        "version": RECIPE_VERSION,
        "data": data_fingerprint(data),
        "cfg": None if init else cfg.teacher.cfg,  # with an init, the architecture is the init file's
        "cfg_text": Path(cfg.teacher.cfg).read_text() if not init and Path(str(cfg.teacher.cfg)).is_file() else None,
        "epochs": _epochs(cfg),
        "imgsz": int(cfg.data.imgsz),
        "batch": int(cfg.data.batch),
        "seed": int(cfg.teacher.seed),
        "augment": OmegaConf.to_container(cfg.data.augment, resolve=True),
        # the values the teacher trains with (an init file is the teacher's architecture: it transfers whole)
        "optim": training_optim(cfg, transferred=float(bool(init)))[0],
        "loss": {k: float(cfg.loss[k]) for k in ("box", "cls", "dfl")},
        **({"init": _file_digest(init)} if init else {}),  # absent from-scratch: existing cache keys stay valid
    }
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
    start = f"{Path(init).stem}-ft" if init else Path(str(cfg.teacher.cfg)).stem
    return f"{start}-e{_epochs(cfg)}-{digest}"


def _train_into_cache(cfg: DictConfig, data: dict, run_dir: Path, train_fn: Callable) -> Path:
    root = Path(cfg.cache_dir).expanduser() / "teachers"
    key = teacher_key(cfg, data)
    final = root / key
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a concurrent sweep job trains it; we wait and reuse
        if (final / "best.pt").is_file():
            log.info(f"kdprune: teacher from the cache: {final}")
            return final
        what = f"fine-tuning {_init(cfg)}" if _init(cfg) else f"training {cfg.teacher.cfg} from scratch"
        log.info(f"kdprune: stage 1/2: the teacher: {what}, {_epochs(cfg)} epochs; cached as {final} for "
                 "later runs")
        summary = train_fn(_teacher_cfg(cfg, run_dir / "teacher"))
        tmp = root / f".{key}.tmp{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        shutil.copy2(summary["weights"]["best"], tmp / "best.pt")
        meta = {k: summary.get(k) for k in ("model", "imgsz", "epochs", "mAP50", "mAP50-95", "params", "gflops",
                                            "wall_time_s", "environment")}  # what it was trained with
        meta["init"], meta["recipe"] = _init(cfg), summary.get("recipe")
        (tmp / "meta.json").write_text(json.dumps({"key": key, **meta}, indent=2))
        os.replace(tmp, final)  # atomic: an interrupted training leaves nothing in the cache
        log.info("kdprune: stage 2/2: training the student")
        return final


def obtain_teacher(cfg: DictConfig, data: dict, student, run_dir: Path, train_fn: Callable) -> Teacher | None:
    """The frozen teacher for this run, or None when ``distill=none`` (no teacher is loaded at all).

    Raises UserError when distillation is asked for without a teacher, or the teacher cannot teach this student
    (other classes, strides, box encoding).
    """
    if cfg.distill.name == "none":
        if cfg.teacher.name != "none" or cfg.teacher.weights:
            log.info("kdprune: distill=none: the teacher is not used (set distill=kd to distil from it)")
        return None
    if cfg.teacher.name == "none" and not cfg.teacher.weights:
        raise UserError(f"distill={cfg.distill.name} needs a teacher: teacher=yolo11s (trained here and cached), or "
                        "teacher.weights=/path/to/teacher.pt trained on this data.")
    if cfg.teacher.weights:
        source, path, meta = "weights", Path(cfg.teacher.weights).expanduser(), {}
    else:
        if not (cfg.teacher.cfg or _init(cfg)) or _epochs(cfg) < 1:
            raise UserError(f"teacher={cfg.teacher.name}: without teacher.weights, kdprune trains the teacher; give "
                            f"teacher.cfg (e.g. yolo11s.yaml) and teacher.epochs >= 1, or teacher.init (e.g. "
                            "yolo11s.pt) and teacher.init_epochs >= 1.")
        _check_box_distillation(cfg, student)  # before the teacher trains for many minutes
        d = _train_into_cache(cfg, data, run_dir, train_fn)
        source, path = "cache", d / "best.pt"
        meta = json.loads((d / "meta.json").read_text())
    model = load_teacher(path)
    if (why := teacher_mismatch(student, model, need_dfl=float(cfg.distill.ld) > 0)) is not None:
        raise UserError(f"teacher {path}: {why}. Use a teacher trained on this dataset "
                        f"(or drop teacher.weights to let kdprune train one).")
    info = {"source": source, "weights": str(path), "model": meta.get("model") or str(path), "init": meta.get("init"),
            "recipe": meta.get("recipe"),
            "mAP50-95": meta.get("mAP50-95"), "mAP50": meta.get("mAP50")}
    return Teacher(model, info)
