"""One runner interface for every artifact (PyTorch module, ONNX, TFLite in ``kdprune.export.tflite``).

A runner has ``output_names`` and ``runner(img) -> list[np.ndarray]``: ``img`` is one ``(1, 3, H, W)`` float32 image in
[0, 1]; the outputs are float32 NCHW in ``output_names`` order (``box0, cls0, box1, ...``), ready for
``kdprune.export.decode.decode``.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn


def _check_img(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img)
    if img.ndim != 4 or img.shape[:2] != (1, 3):
        raise ValueError(f"runner: expected one (1, 3, H, W) image, got shape {img.shape}")
    return np.ascontiguousarray(img, dtype=np.float32)


class OnnxRunner:
    """An ONNX model on onnxruntime's CPU execution provider (``threads``: intra-op threads, None = ORT's default)."""

    def __init__(self, path: str | Path, threads: int | None = None):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        if threads is not None:
            opts.intra_op_num_threads = int(threads)
            opts.inter_op_num_threads = 1
        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]

    def __call__(self, img: np.ndarray) -> list[np.ndarray]:
        outs = self.session.run(self.output_names, {self.input_name: _check_img(img)})
        return [np.asarray(o, dtype=np.float32) for o in outs]


class TorchRunner:
    """A ``RawHeadModel`` (or any module with ``output_names()``) in eval mode on CPU, without gradients, fed float32.

    Runs a private deep copy, so the caller's module keeps its device and train/eval mode.
    """

    def __init__(self, model: nn.Module):
        self.model = copy.deepcopy(model).cpu().eval()
        self.output_names = list(self.model.output_names())

    @torch.no_grad()
    def __call__(self, img: np.ndarray) -> list[np.ndarray]:
        outs = self.model(torch.from_numpy(_check_img(img)))
        return [o.numpy().astype(np.float32, copy=False) for o in outs]


MIN_LATENCY_RUNS = 20  # fewer timed runs give no stable median


def latency_ms(runner, imgsz: int | tuple[int, int], *, runs: int = 30, warmup: int = 5, seed: int = 0) -> dict:
    """Batch-1 wall-clock latency of ``runner`` on a random ``imgsz`` image: ``{"median", "p90", "mean", "min"}`` in
    milliseconds over ``runs`` timed calls (at least 20) after ``warmup`` untimed ones, plus ``"runs"``."""
    if runs < MIN_LATENCY_RUNS:
        raise ValueError(f"latency_ms: runs={runs}; take at least {MIN_LATENCY_RUNS} timed runs for a stable median")
    h, w = (imgsz, imgsz) if isinstance(imgsz, int) else imgsz
    img = np.random.default_rng(seed).random((1, 3, h, w), dtype=np.float32)
    for _ in range(warmup):
        runner(img)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        runner(img)
        times.append((time.perf_counter() - t0) * 1e3)
    t = np.asarray(times)
    return {"median": float(np.median(t)), "p90": float(np.percentile(t, 90)), "mean": float(t.mean()),
            "min": float(t.min()), "runs": len(times)}
