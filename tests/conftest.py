"""Shared fixtures: tiny configs composed with Hydra, a cache dir per session, a tiny generated dataset."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONF = str(ROOT / "conf")

# `make test` runs the suite on every core (pytest-xdist, one file per worker). Most of a test's time is one thread
# (conversions, TensorFlow Lite Micro, Python around tiny models), so workers overlap it; one compute thread per
# worker keeps OpenMP threads from spin-waiting on each other's cores (10x slower). A worker's runs and the
# subprocesses it starts inherit it; a test that compares two runs makes both in the same worker.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)

# Tiny and fast: 64 px, a handful of generated images. Each test passes its own run_dir.
TINY = [
    "data.imgsz=64",
    "data.embedded.n_train=16",
    "data.embedded.n_val=8",
    "data.embedded.imgsz=64",
    "data.batch=8",
    "data.val_batch=8",
    "data.workers=0",
    "trainer.max_epochs=1",
    "data.augment.close_mosaic=0",
    "val.plot_every=1",
]


def run_cli(*args: str, module: str = "kdprune", timeout: int = 600, **env: str) -> subprocess.CompletedProcess:
    """``python -m MODULE ARGS`` from the repo root, as a user types it; ``env`` adds environment variables."""
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONUNBUFFERED": "1", **env}, timeout=timeout)


def run_main(*args: str, module: str = "kdprune", **env: str) -> subprocess.CompletedProcess:
    """``python -m MODULE ARGS`` in this process: the module's ``main()`` with ``sys.argv`` set, from the repo root,
    its exit code and what it printed (Python-level stdout/stderr). The same code path as ``run_cli`` without a new
    interpreter's ~8 s of imports: for the errors a run refuses before training (a run that trains, or a check of
    everything on the terminal, uses ``run_cli``). Hydra's logging set-up (``configure_log``) is left out: its
    ``dictConfig`` would close every handler of this process, pytest's own among them."""
    import contextlib
    import importlib
    import io

    cli = importlib.import_module(f"{module}.__main__")
    out, err, code = io.StringIO(), io.StringIO(), 0
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        mp.setattr(sys, "argv", [module, *args])
        if hasattr(cli, "_entered"):
            mp.setattr(cli, "_entered", False)
        mp.chdir(ROOT)
        for where in ("hydra.main", "hydra.core.utils", "hydra._internal.hydra"):
            mp.setattr(importlib.import_module(where), "configure_log", lambda *a, **k: None)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rv = cli.main()
                code = rv if isinstance(rv, int) else 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else int(e.code is not None)
    return subprocess.CompletedProcess([module, *args], code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="session", autouse=True)
def cache_dir(tmp_path_factory) -> Path:
    """One cache (embedded dataset) for the whole session, never the user's ~/.cache."""
    d = tmp_path_factory.mktemp("kdprune-cache")
    os.environ["KDPRUNE_CACHE"] = str(d)
    os.environ["YOLO_OFFLINE"] = "1"
    return d


def compose(overrides: list[str] | None = None, run_dir: Path | None = None, experiment: str | None = None):
    """The config ``python -m kdprune`` would build for these overrides (with run_dir set, no Hydra run)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import open_dict

    ov = list(overrides or [])
    if experiment:
        ov = [f"+experiment={experiment}", *ov]
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = hydra_compose("config", overrides=ov)
    with open_dict(cfg):
        cfg.run_dir = str(run_dir) if run_dir else "unused"
    return cfg


def val_args() -> dict:
    """The NMS settings every evaluation uses in the default config (``val.conf/iou/max_det``)."""
    from kdprune.yolo import val_settings

    return val_settings(compose().val)


@pytest.fixture(scope="session")
def trained(tmp_path_factory, cache_dir):
    """``(data.yaml, best.pt, summary)``: yolo11n trained to a real mAP on an easy dataset (tests/trained.py)."""
    from tests.trained import train

    return train(tmp_path_factory.mktemp("trained"))


@pytest.fixture(scope="session")
def pt(tmp_path_factory):
    """(converted QAT graph, its per-tensor TFLite file): tests/test_tflite.py's yolo11n, exported as target=neutron
    does; one conversion (~1 min) for test_tflite.py and test_target.py, which read it and never change it."""
    from kdprune.export import tflite as T
    from tests.test_tflite import IMGSZ, NAMES, _qat_graph

    conv = _qat_graph(per_channel=False)
    return conv, T.graph_to_tflite_int8(conv, tmp_path_factory.mktemp("pt") / "pt.tflite", IMGSZ, NAMES)


@pytest.fixture
def tiny_cfg(tmp_path):
    def make(*extra: str, run_dir: Path | None = None):
        return compose([*TINY, *extra], run_dir=run_dir or tmp_path / "run")

    return make
