"""Shared by the bench scripts: the embedded dataset as the default run sees it, run metadata, and where results go.

Every script runs from the repo root as ``python -m bench.<name>`` (bench/ is a package: no ``sys.path`` edits). What a
script measured is data under ``RESULTS``: ``bench/results/<topic>/<name>.json``, the name made of the settings that
tell one file of a topic from another (e.g. ``gradual_vs_oneshot/shapes-256-kd1-mcu_fade-s0_1.json``: data, imgsz, KD,
arms, seeds); bench/RESULTS.md reads them. Run dirs go to ``bench/runs/`` (not tracked)."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"  # <topic>/<name>.json, tracked
# A bench's compared variants that are whole runs are config files, bench/conf/arm/<topic>/<arm>.yaml, over an
# experiment: the same run from the command line, or all of them as a Hydra multirun, e.g.
#   python -m kdprune -m +experiment=yolo11n_mcu hydra.searchpath=[file://$PWD/bench/conf] \
#       +arm=device_fit/relu_192,device_fit/unconstrained seed=0,1,2
BENCH_CONF = ROOT / "bench" / "conf"


def arm_names(topic: str) -> list[str]:
    """The arms of a bench topic: the files of bench/conf/arm/<topic>/."""
    return sorted(p.stem for p in (BENCH_CONF / "arm" / topic).glob("*.yaml"))


def arm_args(topic: str, arm: str) -> list[str]:
    """The overrides that select one arm: bench/conf on Hydra's search path, and the arm's file."""
    return [f"hydra.searchpath=[file://{BENCH_CONF}]", f"+arm={topic}/{arm}"]
# Importing ultralytics sets OMP_NUM_THREADS=1 in os.environ when it is unset: a bench script that imports it (directly
# or through kdprune) and then starts runs would hand each run one thread (measured: a 256-px default run 33 % slower
# on the 2-core machine). Runs get the environment the script started with (bench.common is imported first).
_START_ENV = dict(os.environ)


def result_name(*settings: str, arms: list[str], seeds: list[int], label: str | None = None) -> str:
    """The systematic name of a sweep's result file: its settings, the arm (``sweep`` for several, or ``label``), the
    seeds: ``result_name("shapes", "256", "kd1", arms=["mcu_fade"], seeds=[0, 1])`` is
    ``"shapes-256-kd1-mcu_fade-s0_1"``."""
    return "-".join([*settings, label or (arms[0] if len(arms) == 1 else "sweep"), "s" + "_".join(map(str, seeds))])


def run_env(**extra: str) -> dict:
    """The environment for a run started by a bench script: the one the script started with, plus ``extra``."""
    return {**_START_ENV, **extra}


def default_cfg():
    """The config of ``python -m kdprune +experiment=yolo11n_mcu`` (no Hydra run dir)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=["+experiment=yolo11n_mcu"])


def default_hyp() -> dict:
    """kdprune's default training hyperparameters as ultralytics ``train()`` arguments (the anchor's settings)."""
    from omegaconf import OmegaConf

    cfg = default_cfg()
    optim = {k: v for k, v in OmegaConf.to_container(cfg.optim, resolve=True).items() if k not in ("grad_clip", "ema")}
    return dict(epochs=cfg.trainer.max_epochs, imgsz=cfg.data.imgsz, batch=cfg.data.batch, workers=cfg.data.workers,
                **optim, **OmegaConf.to_container(cfg.data.augment), **{k: cfg.loss[k] for k in ("box", "cls", "dfl")})


def narrow_yolo11n_yaml(budget: int) -> tuple[Path, float]:
    """``(path, width)``: yolo11n's YAML at the widest width multiple (steps of 0.005) whose INT8 estimate (per-tensor,
    as the neutron target exports) fits ``budget`` bytes, written under bench/runs/: the narrow model a user gets by
    cutting the width by hand (``model.cfg=<path>``, optionally ``model.pretrained=yolo11n.pt``)."""
    import yaml
    from ultralytics.nn.tasks import DetectionModel, yaml_model_load

    from kdprune.data import resolve_data
    from kdprune.pruning import int8_bytes

    nc = len(resolve_data(str(default_data_yaml()), default_cfg().cache_dir, None, False)["names"])
    base = yaml_model_load("yolo11n.yaml")
    d, width, mc = base["scales"]["n"]
    while True:
        y = {k: v for k, v in base.items() if k not in ("scales", "scale", "yaml_file")}
        y.update(depth_multiple=d, width_multiple=round(width, 3), max_channels=mc)
        if int8_bytes(DetectionModel(y, nc=nc, verbose=False), per_channel=False) <= budget:
            break
        width -= 0.005
    path = ROOT / "bench" / "runs" / f"yolo11n-w{width:.3f}-{budget}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(y, sort_keys=False))
    return path, round(width, 3)


def default_data_yaml() -> Path:
    """The embedded dataset with the default config's parameters (generated once into the cache)."""
    from omegaconf import OmegaConf

    from kdprune.data.synth import ensure_dataset

    cfg = default_cfg()
    cache = Path(os.environ.get("KDPRUNE_CACHE", "~/.cache/kdprune")).expanduser()
    return ensure_dataset(cache / "datasets", **OmegaConf.to_container(cfg.data.embedded))


def machine() -> str:
    cpu = "unknown CPU"
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                   if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()} cores {cpu}, {gpu}, torch {torch.__version__}, {platform.python_version()}"


def run_kdprune(args: list[str], run_dir: Path, label: str) -> dict:
    """``python -m kdprune ARGS hydra.run.dir=RUN_DIR`` in a subprocess and its summary.json. A finished run dir is
    read back, not re-run; an interrupted one resumes from its ``checkpoints/last.ckpt`` (= uninterrupted,
    bench/RESULTS.md, issue 16). A failed run stops the bench with its stderr."""
    import json
    import sys
    import time

    summary = run_dir / "summary.json"
    if not summary.is_file():
        args = [*args, f"hydra.run.dir={run_dir}"]
        if (run_dir / "checkpoints" / "last.ckpt").is_file():
            args.append("ckpt_path=last")
            print(f"  {label}: resuming {run_dir}", flush=True)
        t0 = time.time()
        p = subprocess.run([sys.executable, "-m", "kdprune", *args], cwd=ROOT, env=run_env(), capture_output=True,
                           text=True)
        if p.returncode != 0:
            raise SystemExit(f"{label} failed ({p.returncode}):\n{p.stderr[-3000:]}")
        print(f"  {label}: {time.time() - t0:.0f} s", flush=True)
    return json.loads(summary.read_text())


def git_rev() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True).strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def seed_mean(runs: dict, prefix: str, metric: str = "mAP50-95") -> str | None:
    """``"mean ± sd over n seed(s)"`` of ``metric`` over the runs whose key starts with ``prefix`` (``arm/data/``),
    or None when none has it: the summary line every multi-seed bench prints."""
    import statistics

    vals = [r[metric] for k, r in runs.items() if k.startswith(prefix) and r.get(metric) is not None]
    if not vals:
        return None
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{statistics.fmean(vals):.4f} ± {sd:.4f} over {len(vals)} seed(s)"
