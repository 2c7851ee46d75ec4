"""Pictures in TensorBoard: val images with predicted boxes, per-class AP bars, model size."""

from __future__ import annotations

import cv2
import lightning as L
import numpy as np

from kdprune.yolo import model_stats, nms_for_plot

_COLORS = [(56, 56, 255), (151, 157, 255), (31, 112, 255), (29, 178, 255), (49, 210, 207), (10, 249, 72),
           (23, 204, 146), (134, 219, 61), (52, 147, 26), (187, 212, 0), (168, 153, 44), (255, 194, 0)]


def draw_grid(images: np.ndarray, dets: list[np.ndarray], names: dict[int, str], cols: int = 4,
              max_n: int = 16) -> np.ndarray:
    """Tile up to ``max_n`` CHW float [0,1] RGB images with their ``[x1,y1,x2,y2,conf,cls]`` boxes into one HWC uint8.

    Drawn with cv2's Hershey font on purpose: ultralytics' ``plot_images`` fetches a TrueType font from the network.
    """
    n = min(len(images), max_n)
    h, w = images.shape[2:]
    rows = -(-n // cols)
    grid = np.full((rows * h, cols * w, 3), 255, np.uint8)
    for i in range(n):
        im = np.ascontiguousarray((images[i].transpose(1, 2, 0) * 255).clip(0, 255).astype(np.uint8))
        for x1, y1, x2, y2, conf, c in dets[i]:
            col = _COLORS[int(c) % len(_COLORS)]
            cv2.rectangle(im, (int(x1), int(y1)), (int(x2), int(y2)), col, 1)
            cv2.putText(im, f"{names.get(int(c), int(c))} {conf:.2f}", (int(x1), max(int(y1) - 2, 8)),
                        cv2.FONT_HERSHEY_SIMPLEX, 0.3, col, 1, cv2.LINE_AA)
        r, c = divmod(i, cols)
        grid[r * h:(r + 1) * h, c * w:(c + 1) * w] = im
    return grid


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _to_array(fig) -> np.ndarray:
    """A matplotlib figure as an HWC uint8 RGB array (the figure is closed)."""
    fig.tight_layout()
    fig.canvas.draw()
    img = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    _pyplot().close(fig)
    return img


def bar_chart(values: dict[str, float], title: str) -> np.ndarray:
    """A horizontal bar chart (matplotlib, Agg) as an HWC uint8 RGB array."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 0.35 * len(values) + 1.2), dpi=100)
    ax.barh(list(values), list(values.values()), color="#3b7dd8")
    ax.set_xlim(0, 1)
    ax.invert_yaxis()
    ax.set_title(title)
    for y, v in enumerate(values.values()):
        ax.text(min(v + 0.01, 0.9), y, f"{v:.3f}", va="center", fontsize=8)
    return _to_array(fig)


def channels_chart(channels: dict[str, tuple[int, int]], title: str) -> np.ndarray:
    """Per layer, channels kept (dark) over the original width (light), as an HWC uint8 RGB array."""
    plt = _pyplot()
    names = list(channels)
    kept = [c[0] for c in channels.values()]
    orig = [c[1] for c in channels.values()]
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(names) + 1.2), dpi=100)
    ax.barh(names, orig, color="#c8d6ec", label="original")
    ax.barh(names, kept, color="#3b7dd8", label="kept")
    ax.invert_yaxis()
    ax.set_xlabel("output channels (prunable convs)")
    ax.set_title(f"Channels per layer, {title}: {sum(kept):,} of {sum(orig):,} kept")
    for y, (k, o) in enumerate(zip(kept, orig)):
        ax.text(o, y, f" {k}/{o}", va="center", fontsize=7)
    ax.set_xlim(0, max(orig, default=1) * 1.18)
    ax.legend(loc="upper right", fontsize=8)
    return _to_array(fig)


def save_channels_png(path, channels: dict[str, tuple[int, int]]) -> None:
    """The per-layer channel chart of the final model as a PNG (for the run dir)."""
    cv2.imwrite(str(path), cv2.cvtColor(channels_chart(channels, "final model"), cv2.COLOR_RGB2BGR))


def _tb(trainer: L.Trainer):
    """The TensorBoard SummaryWriter of the run, if a TensorBoard logger is attached."""
    for lg in trainer.loggers:
        exp = getattr(lg, "experiment", None)
        if hasattr(exp, "add_image"):
            return exp
    return None


class DetectionPlots(L.Callback):
    """Logs model params/GFLOPs at fit start and a grid of val predictions every ``every`` epochs (and the last)."""

    def __init__(self, imgsz: int, conf: float):
        self.imgsz, self.conf = imgsz, conf

    def on_fit_start(self, trainer, pl_module) -> None:
        stats = model_stats(pl_module.model, self.imgsz)
        if trainer.is_global_zero and (tb := _tb(trainer)) is not None:
            tb.add_scalar("model/params", stats["params"], trainer.global_step)
            tb.add_scalar("model/GFLOPs", stats["gflops"], trainer.global_step)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or pl_module.plot_batch is None:
            return
        if (tb := _tb(trainer)) is None:
            return
        batch, out = pl_module.plot_batch
        grid = draw_grid(batch["img"].float().cpu().numpy(), nms_for_plot(out, self.conf), pl_module.names)
        tb.add_image("val/predictions", grid, trainer.current_epoch, dataformats="HWC")


def log_per_class_ap(trainer: L.Trainer, per_class: dict[str, dict], step: int) -> None:
    """Per-class AP50-95 as scalars and as one bar-chart image."""
    if (tb := _tb(trainer)) is None or not per_class:
        return
    for name, ap in per_class.items():
        tb.add_scalar(f"per_class_AP50-95/{name}", ap["AP50-95"], step)
    tb.add_image("val/per_class_AP50-95", bar_chart({k: v["AP50-95"] for k, v in per_class.items()},
                                                    "AP50-95 per class (best.pt)"), step, dataformats="HWC")
    tb.flush()
