"""The run's settings and final numbers in TensorBoard's HParams view: ``tensorboard --logdir <sweep dir>`` then lists
every job of a sweep as a row, with the overrides that made it and the mAP and bytes it reached."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import yaml
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig


def _scalar(v):
    """HParams takes bool / int / float / str; numbers given as text (overrides) become numbers, so the view sorts
    and plots them."""
    if isinstance(v, (bool, int, float)):
        return v
    try:
        parsed = yaml.safe_load(str(v))
    except yaml.YAMLError:
        parsed = None
    return parsed if isinstance(parsed, (bool, int, float)) else str(v)


def run_hparams(cfg: DictConfig, run_dir: Path) -> dict:
    """The settings that tell runs apart: a fixed set (so every job has the same columns) and the job's overrides."""
    prune = cfg.prune
    target = {k: v for k, v in (prune.get("target") or {}).items() if v is not None}
    params = {"model": cfg.model.weights or cfg.model.cfg, "teacher": cfg.teacher.name, "distill": cfg.distill.name,
              "loss": cfg.loss.name, "prune": prune.name, "prune.importance": prune.get("importance", ""),
              "prune.shape": prune.get("shape", ""), "prune.target": " ".join(f"{k}={v}" for k, v in target.items()),
              "quant": (cfg.get("quant") or {}).get("name", "none"), "epochs": cfg.trainer.max_epochs,
              "imgsz": cfg.data.imgsz, "seed": cfg.seed}
    ov = run_dir / ".hydra" / "overrides.yaml"
    for o in (yaml.safe_load(ov.read_text()) or []) if ov.is_file() else []:
        if "=" in o and not o.startswith("hydra"):
            k, v = o.split("=", 1)
            params[k.lstrip("+~")] = v
    return {k: _scalar(v) for k, v in params.items() if v is not None}


def log_hparams(trainer: L.Trainer, params: dict, metrics: dict) -> None:
    """One HParams entry per run, with its final metrics (None metrics are left out)."""
    metrics = {f"final/{k}": float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
    for lg in trainer.loggers:
        if isinstance(lg, TensorBoardLogger):
            lg.log_hyperparams(params, metrics)
            lg.finalize("success")
