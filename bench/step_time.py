"""Wall time of one training step in the default run's busiest phase, for a change that touches the training loop.

The ``+experiment=yolo11n_mcu`` pipeline at a reduced scale (128 px, 320 generated images, batch 8: 40 steps an
epoch): KD from the teacher, the EMA, and the pruning phase with everything it does per batch (accumulated Taylor
scores before each optimizer step, the fade after each batch), so every per-step hook of the run is on. A callback
records the time from one batch's start to the next's (the step, every callback's batch hooks, and loading the next
batch; workers=0) over the fade epoch and the one before it; the median per epoch, without each epoch's first 3
batches, is the number. No exports, no QAT (its step is the QAT graph's, timed by ``bench.qat_graph``).

Compare two commits by running the script in each checkout, alternating, on a quiet machine:

    .venv/bin/python -m bench.step_time --out /tmp/new_1.json     # repeat in the other checkout, then here again

``--cache DIR`` shares the teacher (trained once, 1 epoch) and the dataset between checkouts.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import lightning as L

ARGS = ["+experiment=yolo11n_mcu", "seed=0", "data.imgsz=128", "data.embedded.imgsz=128", "data.embedded.n_train=320",
        "data.embedded.n_val=16", "data.batch=8", "data.val_batch=8", "data.workers=0", "trainer.max_epochs=3",
        "prune.start_epoch=2", "prune.end_epoch=2", "prune.steps=1", "prune.fade_epochs=1", "quant=none",
        "export=none", "teacher.epochs=1", "val.plot_every=0", "logger=none", "device=generic"]
SKIP = 3  # each epoch's first batches: allocator warm-up


class StepTimer(L.Callback):
    """Seconds between consecutive batch starts, per epoch (the last batch of an epoch has no next: not counted)."""

    def __init__(self):
        self.t: dict[int, list[float]] = {}
        self._last: tuple[int, float] | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        now, e = time.perf_counter(), trainer.current_epoch
        if self._last is not None and self._last[0] == e and batch_idx > SKIP:
            self.t.setdefault(e, []).append(now - self._last[1])
        self._last = (e, now)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._last = None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "kdprune_step_time_cache")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    import kdprune.build as build
    from kdprune.train import run

    timer = StepTimer()
    original = build.build_trainer

    def with_timer(cfg, *args, **kw):
        trainer, ckpt = original(cfg, *args, **kw)
        if cfg.prune.name != "none":  # the student's fit, not the teacher stage's
            trainer.callbacks.append(timer)
        return trainer, ckpt

    import kdprune.train

    kdprune.train.build_trainer = with_timer
    conf = Path(kdprune.train.__file__).resolve().parent.parent / "conf"
    with initialize_config_dir(str(conf), version_base="1.3"):
        cfg = compose("config", overrides=[*ARGS, f"cache_dir={a.cache}"])
    with tempfile.TemporaryDirectory() as tmp:
        with open_dict(cfg):
            cfg.run_dir = f"{tmp}/run"
        run(cfg)
    kdprune.train.build_trainer = original
    per_epoch = {e: round(1000 * statistics.median(v), 1) for e, v in sorted(timer.t.items()) if e < 2}
    out = {"ms_per_step_median": per_epoch, "batches": {e: len(v) for e, v in timer.t.items()},
           "args": ARGS, "checkout": str(Path(kdprune.train.__file__).resolve().parent.parent)}
    print(json.dumps(out))
    if a.out:
        a.out.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
