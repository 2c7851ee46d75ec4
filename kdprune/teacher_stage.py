"""The teacher stage: load the teacher from ``teacher.weights``, or train it on the run's data and cache it.

Offline users have no pretrained teacher, so with no weights kdprune trains one (``teacher.cfg``, ``teacher.epochs``)
as a first stage of the run, with the same data, image size, augmentation and optimizer, and caches its ``best.pt``
under ``<cache_dir>/teachers/`` keyed by the data's fingerprint and the teacher's recipe. Later runs and sweep jobs
load it instead of training again; concurrent jobs wait on a file lock rather than training twice.
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
from kdprune.yolo import load_teacher, teacher_mismatch

log = logging.getLogger("kdprune")
RECIPE_VERSION = 1  # bump when the way kdprune trains a teacher changes, so stale cached teachers are not reused


def _teacher_cfg(cfg: DictConfig, run_dir: Path) -> DictConfig:
    """The run's config turned into a plain training run of the teacher: no pruning, distillation or quantization,
    the default loss, one device (under DDP the teacher is trained before the workers start, see ``obtain_teacher``)."""
    t = cfg.copy()
    with open_dict(t):
        t.model = {"name": cfg.teacher.name, "cfg": cfg.teacher.cfg, "weights": None}
        for group in ("teacher", "prune", "distill", "quant", "export"):  # each group's own 'none' option
            t[group] = OmegaConf.load(CONF_DIR / group / "none.yaml")
        t.loss = {**OmegaConf.load(CONF_DIR / "loss" / "default.yaml"),
                  **{k: cfg.loss[k] for k in ("box", "cls", "dfl")}}
        t.trainer.max_epochs = int(cfg.teacher.epochs)
        t.trainer.devices = 1
        for k in ("strategy", "num_nodes"):
            t.trainer.pop(k, None)
        t.seed = int(cfg.teacher.seed)
        t.reference = None  # the student's dense reference is no row of the teacher's report
        # resuming an interrupted run (ckpt_path=last) resumes its teacher stage too, if that was interrupted
        t.ckpt_path = "last" if cfg.ckpt_path == "last" and last_checkpoint(run_dir).is_file() else None
        t.run_dir = str(run_dir)
    return t


def teacher_key(cfg: DictConfig, data: dict) -> str:
    """Cache key: the data's fingerprint and everything that shapes the trained teacher."""
    recipe = {
        "version": RECIPE_VERSION,
        "data": data_fingerprint(data),
        "cfg": cfg.teacher.cfg,
        "cfg_text": Path(cfg.teacher.cfg).read_text() if Path(str(cfg.teacher.cfg)).is_file() else None,
        "epochs": int(cfg.teacher.epochs),
        "imgsz": int(cfg.data.imgsz),
        "batch": int(cfg.data.batch),
        "seed": int(cfg.teacher.seed),
        "augment": OmegaConf.to_container(cfg.data.augment, resolve=True),
        "optim": OmegaConf.to_container(cfg.optim, resolve=True),
        "loss": {k: float(cfg.loss[k]) for k in ("box", "cls", "dfl")},
    }
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
    return f"{Path(str(cfg.teacher.cfg)).stem}-e{int(cfg.teacher.epochs)}-{digest}"


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
        log.info(f"kdprune: stage 1/2: training the teacher ({cfg.teacher.cfg}, {cfg.teacher.epochs} epochs); "
                 f"cached as {final} for later runs")
        summary = train_fn(_teacher_cfg(cfg, run_dir / "teacher"))
        tmp = root / f".{key}.tmp{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        shutil.copy2(summary["weights"]["best"], tmp / "best.pt")
        meta = {k: summary.get(k) for k in ("model", "imgsz", "epochs", "mAP50", "mAP50-95", "params", "gflops",
                                            "wall_time_s")}
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
        if not cfg.teacher.cfg or int(cfg.teacher.epochs) < 1:
            raise UserError(f"teacher={cfg.teacher.name}: without teacher.weights, kdprune trains the teacher; give "
                            f"teacher.cfg (e.g. yolo11s.yaml) and teacher.epochs >= 1.")
        d = _train_into_cache(cfg, data, run_dir, train_fn)
        source, path = "cache", d / "best.pt"
        meta = json.loads((d / "meta.json").read_text())
    model = load_teacher(path)
    if (why := teacher_mismatch(student, model, need_dfl=float(cfg.distill.ld) > 0)) is not None:
        raise UserError(f"teacher {path}: {why}. Use a teacher trained on this dataset "
                        f"(or drop teacher.weights to let kdprune train one).")
    info = {"source": source, "weights": str(path), "model": meta.get("model") or str(path),
            "mAP50-95": meta.get("mAP50-95"), "mAP50": meta.get("mAP50")}
    return Teacher(model, info)
