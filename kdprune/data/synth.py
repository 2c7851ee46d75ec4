"""The embedded datasets written in Ultralytics YOLO format (images, labels, data.yaml) and cached by their
parameters: ``ensure_dataset`` generates a dataset once, into a temporary sibling renamed into place, with a pool of
workers (every image is a pure function of its seed, split and index: ``kdprune.data.scene``, which says what the
"shapes" and "glyphs" datasets hold)."""

from __future__ import annotations

import hashlib
import inspect
import json
import multiprocessing
import os
import shutil
import signal
import sys
import time
import uuid
import warnings
from pathlib import Path

import cv2

from kdprune.data.scene import KINDS, SPLITS, make_image

_STALE_TMP_S = 3600.0


def _write_one(task: tuple[str, int, str, int, int, str]) -> None:
    root, seed, split, index, imgsz, kind = task
    img, text = make_image(seed, split, index, imgsz, kind)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    stem = f"{split}_{index:05d}"
    Path(root, "images", split, stem + ".jpg").write_bytes(buf.tobytes())
    Path(root, "labels", split, stem + ".txt").write_text(text)


def _init_worker() -> None:
    cv2.setNumThreads(1)
    # A forked worker inherits its parent's SIGTERM handler; under submitit that handler ignores SIGTERM, and the
    # pool's shutdown then waits forever on workers that will not stop.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _write_yaml(root: Path, dataset_dir: Path, params: dict, kind: str) -> Path:
    spec = KINDS[kind]
    names = "".join(f"  {i}: {n}\n" for i, n in enumerate(spec.names))
    text = (
        f"# kdprune synthetic dataset {spec.version}: {json.dumps(params, sort_keys=True)}\n"
        f"path: {json.dumps(str(dataset_dir.resolve()))}\n"
        "train: images/train\nval: images/val\n"
        f"nc: {len(spec.names)}\nnames:\n{names}"
    )
    path = root / "data.yaml"
    path.write_text(text)
    return path


def _generate(root: Path, dataset_dir: Path, n_train: int, n_val: int, imgsz: int, seed: int, kind: str,
              workers: int | None):
    if n_train < 1 or n_val < 1 or imgsz < 32:
        raise ValueError(f"need n_train >= 1, n_val >= 1, imgsz >= 32; got {n_train}, {n_val}, {imgsz}")
    if kind not in KINDS:
        raise ValueError(f"unknown dataset kind {kind!r}; choose one of {', '.join(KINDS)}")
    for split in SPLITS:
        for sub in ("images", "labels"):
            (root / sub / split).mkdir(parents=True, exist_ok=True)
    tasks = [(str(root), seed, "train", i, imgsz, kind) for i in range(n_train)]
    tasks += [(str(root), seed, "val", i, imgsz, kind) for i in range(n_val)]
    workers = min(2, os.cpu_count() or 1) if workers is None else workers
    if workers <= 1:
        threads = cv2.getNumThreads()
        cv2.setNumThreads(1)
        try:
            for t in tasks:
                _write_one(t)
        finally:
            cv2.setNumThreads(threads)
    else:
        # fork where there is fork (as torch's DataLoader does): spawned workers would re-import kdprune.data,
        # torch and lightning (seconds each) for a job of ~10 ms per image; workers only touch numpy and cv2.
        # Not after a TFLite export in this process (a sweep's next job): litert-torch loads JAX, whose threads make
        # fork unsafe.
        fork = "fork" in multiprocessing.get_all_start_methods() and "jax" not in sys.modules
        method = "fork" if fork else "spawn"
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*fork.*", category=DeprecationWarning)
            pool = multiprocessing.get_context(method).Pool(workers, initializer=_init_worker)
        try:
            for _ in pool.imap_unordered(_write_one, tasks, chunksize=8):
                pass
            pool.close()  # workers finish and exit on their own
        finally:
            pool.terminate()
            pool.join()
    params = dict(n_train=n_train, n_val=n_val, imgsz=imgsz, seed=seed)
    return _write_yaml(root, dataset_dir, params, kind)


def generate(root: str | Path, *, n_train: int = 480, n_val: int = 120, imgsz: int = 320, seed: int = 0,
             kind: str = "shapes", workers: int | None = None) -> Path:
    """Write images/{train,val}/*.jpg, labels/{train,val}/*.txt and data.yaml under root; return the data.yaml path.

    ``workers``: processes to use (default ``min(2, cpu_count)``; 0 or 1 runs inline). The bytes written do not
    depend on it. Existing files of the same names are overwritten; other files are left alone."""
    root = Path(root)
    return _generate(root, root, int(n_train), int(n_val), int(imgsz), int(seed), str(kind), workers)


def _cache_params(kwargs: dict) -> dict:
    sig = inspect.signature(generate)
    params = {k: p.default for k, p in sig.parameters.items() if p.kind is p.KEYWORD_ONLY and k != "workers"}
    unknown = set(kwargs) - set(params) - {"workers"}
    if unknown:
        raise TypeError(f"ensure_dataset() got unexpected keyword arguments: {sorted(unknown)}")
    params.update({k: (str(v) if k == "kind" else int(v)) for k, v in kwargs.items() if k != "workers"})
    if params["kind"] not in KINDS:
        raise ValueError(f"unknown dataset kind {params['kind']!r}; choose one of {', '.join(KINDS)}")
    return params


def ensure_dataset(cache_dir: str | Path, **kwargs) -> Path:
    """Return data.yaml of the cached dataset for these kwargs (those of ``generate``); generate it once if missing.

    The folder is ``{cache_dir}/{kind's version}-{hash of the kwargs, kind and workers excluded}``. It is generated
    into a temporary sibling folder that is renamed into place at the end, so an interrupted run or two concurrent
    processes never leave a half-written dataset behind."""
    cache_dir = Path(cache_dir).expanduser().resolve()
    params = _cache_params(kwargs)
    kind = params.pop("kind")  # in the folder's version prefix (the shapes folders keep their names)
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]
    final = cache_dir / f"{KINDS[kind].version}-{digest}"
    if (final / "data.yaml").is_file():
        return final / "data.yaml"
    cache_dir.mkdir(parents=True, exist_ok=True)
    for stale in cache_dir.glob(f".{final.name}.tmp-*"):  # left by a killed run
        try:
            if time.time() - stale.stat().st_mtime > _STALE_TMP_S:
                shutil.rmtree(stale, ignore_errors=True)
        except OSError:
            pass
    tmp = cache_dir / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        _generate(tmp, final, kind=kind, workers=kwargs.get("workers"), **params)
        try:
            os.rename(tmp, final)  # atomic; fails if another process got there first
        except OSError:
            if not (final / "data.yaml").is_file():
                raise RuntimeError(f"cannot create {final}: it exists without data.yaml; delete it and retry")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final / "data.yaml"
