"""Write checkpoints in ultralytics' own format, so plain ``ultralytics.YOLO(path)`` loads them."""

from __future__ import annotations

import io
import os
from copy import deepcopy
from datetime import datetime
from pathlib import Path

import torch
from ultralytics import __version__ as ULTRALYTICS_VERSION

from kdprune.yolo.prunable import merge_split_blocks


def save_ultralytics_checkpoint(path: str | Path, model: torch.nn.Module, *, epoch: int, train_args: dict,
                                metrics: dict | None = None, fitness: float | None = None, updates: int = 0,
                                extra: dict | None = None) -> Path:
    """Save ``model`` (the EMA, as ultralytics does) as an fp16 ultralytics checkpoint, atomically.

    Only ultralytics classes are pickled: the file loads without kdprune on the import path. Split C2f/C3k2 blocks
    (the prunable rewrite) are written back as ultralytics' own blocks.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    snapshot = deepcopy(model)
    merge_split_blocks(snapshot)
    snapshot = snapshot.half()
    if hasattr(snapshot, "criterion"):
        snapshot.criterion = None  # training-only state, rebuilt on demand by ultralytics
    for p in snapshot.parameters():
        p.requires_grad_(False)
    ckpt = {
        "epoch": epoch,
        "best_fitness": fitness,
        "model": None,
        "ema": snapshot,
        "updates": updates,
        "train_args": dict(train_args),
        "train_metrics": dict(metrics or {}),
        "date": datetime.now().astimezone().isoformat(),
        "version": ULTRALYTICS_VERSION,
        **(extra or {}),
    }
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, path)
    return path


def load_ultralytics_checkpoint(path: str | Path, device: str = "cpu") -> tuple[torch.nn.Module, dict]:
    """``(model, checkpoint dict)`` of an ultralytics checkpoint (ours or ultralytics'), as fp32 in eval mode."""
    from ultralytics.nn.tasks import load_checkpoint

    model, ckpt = load_checkpoint(str(path), device=device)
    return model.float().eval(), ckpt if isinstance(ckpt, dict) else {}
