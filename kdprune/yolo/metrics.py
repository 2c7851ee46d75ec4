"""Validation metrics through ultralytics' own DetectionValidator pieces (NMS, matching, mAP).

We drive the validator's per-batch methods from Lightning's validation loop instead of its ``__call__`` (which owns
its own loop, device handling and AutoBackend), so the numbers are ultralytics' numbers by construction.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
from ultralytics.models.yolo.detect import DetectionValidator

from kdprune.data import prepare_batch

METRIC_KEYS = {
    "metrics/precision(B)": "precision",
    "metrics/recall(B)": "recall",
    "metrics/mAP50(B)": "mAP50",
    "metrics/mAP50-95(B)": "mAP50-95",
    "fitness": "fitness",
}


VAL_KEYS = ("conf", "iou", "max_det")


def val_settings(val) -> dict:
    """The NMS settings of every evaluation (``conf``, ``iou``, ``max_det``) from the ``val`` config (conf/config.yaml:
    ultralytics' validation defaults)."""
    return {k: val[k] for k in VAL_KEYS}


class DetectionEvaluator:
    """Accumulates predictions over a val pass and returns ultralytics' detection metrics, with the NMS settings
    ``conf``/``iou``/``max_det`` (``val_settings``)."""

    def __init__(self, names: dict[int, str], *, conf: float, iou: float, max_det: int, distributed: bool = True):
        self.names, self.distributed = dict(names), distributed
        self.validator = DetectionValidator(
            args=dict(task="detect", conf=conf, iou=iou, max_det=max_det, plots=False, save_json=False,
                      save_txt=False, verbose=False, split="val")
        )
        self.validator.training = True  # skip its standalone-only checks; we own the loop

    def reset(self, model: torch.nn.Module, device: torch.device, data: dict) -> None:
        """Start a pass for ``model`` (its names and, for end-to-end heads such as YOLO26, its NMS-free output)."""
        v = self.validator
        v.device, v.data = device, data
        v.init_metrics(model)

    def update(self, preds, batch: dict) -> list[dict]:
        """NMS on raw model output and match against the batch's labels. Returns the NMS'd predictions."""
        out = self.validator.postprocess(preds)
        self.validator.update_metrics(out, batch)
        return out

    def compute(self) -> dict:
        """Metrics over everything seen since ``reset`` (gathered across DDP ranks), plus per-class AP."""
        v = self.validator
        if self.distributed and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, v.metrics.stats)
            v.metrics.stats = {k: [x for g in gathered for x in g[k]] for k in v.metrics.stats}
        stats = v.get_stats()
        result = {short: float(stats.get(k, 0.0)) for k, short in METRIC_KEYS.items()}
        box = v.metrics.box
        per_class = {}
        for i, c in enumerate(box.ap_class_index):
            per_class[self.names[int(c)]] = {"AP50": float(box.all_ap[i, 0]), "AP50-95": float(box.all_ap[i].mean())}
        result["per_class"] = per_class
        result["images"] = int(v.seen)
        return result


def nms_for_plot(out: list[dict], conf: float = 0.25) -> list[np.ndarray]:
    """Per-image ``[x1, y1, x2, y2, conf, cls]`` arrays above ``conf`` from the evaluator's NMS output."""
    res = []
    for o in out:
        keep = o["conf"] >= conf
        res.append(torch.cat([o["bboxes"][keep], o["conf"][keep, None], o["cls"][keep, None]], 1).cpu().numpy())
    return res


@torch.no_grad()
def evaluate_checkpoint(weights, loader, data: dict, device="cpu", **val) -> dict:
    """Metrics of a saved ultralytics checkpoint on ``loader`` (fp32, as ultralytics' validator runs it on CPU), in
    this process alone: under DDP it runs on rank 0 after training, over the whole val set."""
    from ultralytics.nn.tasks import load_checkpoint

    model, _ = load_checkpoint(str(weights), device=device)
    return evaluate_model(model, loader, data, device, **val)


@torch.no_grad()
def evaluate_model(model: torch.nn.Module, loader, data: dict, device="cpu", **val) -> dict:
    """Metrics of ``model`` (put in eval mode; its mode is restored) on ``loader``, in this process alone; ``val``:
    the NMS settings (``val_settings``)."""
    was_training = model.training
    model.eval()
    ev = DetectionEvaluator(model.names, distributed=False, **val)
    ev.reset(model, torch.device(device), data)
    for batch in loader:
        batch = prepare_batch(batch, device)
        ev.update(model(batch["img"]), batch)
    model.train(was_training)
    return ev.compute()
