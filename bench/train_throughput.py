"""Training images/s: kdprune vs plain ultralytics on the same data, imgsz, batch and threads, in one run.

Each side trains yolo11n.yaml from scratch for a few epochs in its own subprocess on the embedded dataset with
kdprune's training hyperparameters (AdamW, an optimizer step every batch) and mosaic on throughout; images/s counts
training batches only (validation and start-up excluded) and takes the median over the epochs after the first.
Prints the ratio (target >= 0.9).

Both sides train with ``--threads`` torch threads (default: every core), read back during training and reported.
Left alone they would not match: ultralytics' CPU training sets ``min(8, cores - 1)`` threads (one on a 2-core
machine), and importing ultralytics sets ``OMP_NUM_THREADS=1`` for every child process of the script.

    .venv/bin/python -m bench.train_throughput [--epochs 3] [--imgsz 320] [--batch 16] [--threads N] [--bf16]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
THREADS: set[int] = set()  # torch threads seen during training, in a worker


def _kdprune(epochs: int, imgsz: int, batch: int, workers: int, threads: int,
             precision: str = "32-true") -> list[float]:
    import lightning as L
    import torch

    from kdprune.train import run
    from tests.conftest import compose

    rates: list[float] = []

    class Rate(L.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            rates.append(pl_module.clock.images_per_s())
            THREADS.add(torch.get_num_threads())

    import kdprune.train as kt

    trainer_cls = kt.L.Trainer
    kt.L.Trainer = lambda *a, callbacks=(), **k: trainer_cls(*a, callbacks=[*callbacks, Rate()], **k)
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        cfg = compose([f"trainer.max_epochs={epochs}", f"trainer.precision={precision}", f"data.imgsz={imgsz}",
                       f"data.batch={batch}",
                       f"data.workers={workers}", "data.augment.close_mosaic=0", "val.plot_every=0", "logger=none",
                       "~callbacks.progress_bar", "+trainer.enable_progress_bar=false"], run_dir=Path(d) / "run")
        torch.set_num_threads(threads)
        run(cfg)
    return rates


def _ultralytics(epochs: int, imgsz: int, batch: int, workers: int, threads: int) -> list[float]:
    import tempfile

    import torch
    from ultralytics import YOLO
    from ultralytics.utils import torch_utils

    torch_utils.NUM_THREADS = threads  # select_device() sets it for CPU training

    import kdprune  # noqa: F401  (offline settings)
    from bench.common import default_data_yaml, default_hyp

    rates: list[float] = []
    state = {}

    def start(tr):
        state["t"], state["n"] = time.perf_counter(), 0

    def batch_end(tr):
        state["n"] += tr.batch_size
        state["t_end"] = time.perf_counter()

    def epoch_end(tr):
        THREADS.add(torch.get_num_threads())
        n = min(state["n"], len(tr.train_loader.dataset))
        rates.append(n / (state["t_end"] - state["t"]))

    model = YOLO("yolo11n.yaml")
    model.add_callback("on_train_epoch_start", start)
    model.add_callback("on_train_batch_end", batch_end)
    model.add_callback("on_train_epoch_end", epoch_end)
    with tempfile.TemporaryDirectory() as d:
        # kdprune's training hyperparameters: the same optimizer (AdamW), and an optimizer step (with EMA update and
        # gradient clipping) every batch (nbs = batch) instead of ultralytics' every 64 images
        hyp = {**default_hyp(), "epochs": epochs, "imgsz": imgsz, "batch": batch, "workers": workers, "nbs": batch,
               "close_mosaic": 0}
        model.train(data=str(default_data_yaml()), device="cpu", project=d, name="run", plots=False, amp=False,
                    val=False, verbose=False, **hyp)
    return rates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--imgsz", type=int, default=320)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)  # internal: SIDE WORKERS
    ap.add_argument("--bf16", action="store_true", help="also kdprune with trainer.precision=bf16-mixed (workers 0)")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    if a.worker:
        side, workers = a.worker[0], int(a.worker[1])
        fn = {"kdprune": _kdprune, "ultralytics": _ultralytics,
              "kdprune_bf16": lambda *x: _kdprune(*x, precision="bf16-mixed")}[side]
        rates = fn(a.epochs, a.imgsz, a.batch, workers, a.threads)
        print("RATES " + json.dumps({"rates": rates, "threads": sorted(THREADS)}), flush=True)
        return

    from bench.common import default_data_yaml, git_rev, machine

    default_data_yaml()  # generate once, outside the timed runs
    # ultralytics' trainer forces workers=0 on CPU; kdprune is measured with 0 (same) and 2 workers.
    sides = [("ultralytics", 0), ("kdprune", 0), ("kdprune", 2), *([("kdprune_bf16", 0)] if a.bf16 else [])]
    result = {"imgsz": a.imgsz, "batch": a.batch, "epochs": a.epochs, "threads": a.threads, "machine": machine(),
              "commit": git_rev()}
    for side, workers in sides:
        p = subprocess.run([sys.executable, "-m", "bench.train_throughput", "--worker", side, str(workers),
                            "--epochs", str(a.epochs), "--imgsz", str(a.imgsz), "--batch", str(a.batch),
                            "--threads", str(a.threads)], cwd=ROOT, capture_output=True, text=True)
        line = next((ln for ln in p.stdout.splitlines() if ln.startswith("RATES ")), None)
        if line is None:
            raise SystemExit(f"{side} failed:\n{p.stderr[-3000:]}")
        got = json.loads(line[6:])
        rates = got["rates"]
        if got["threads"] != [a.threads]:  # an unequal comparison is no result
            raise SystemExit(f"{side} trained with {got['threads']} torch threads, not {a.threads}")
        result[f"{side}_workers{workers}"] = {"per_epoch": [round(r, 2) for r in rates],
                                              "images_per_s": round(statistics.median(rates[1:] or rates), 2)}
    base = result["ultralytics_workers0"]["images_per_s"]
    for k in [k for k in result if k.startswith("kdprune")]:
        result[k]["ratio_vs_ultralytics"] = round(result[k]["images_per_s"] / base, 3)
    print(json.dumps(result, indent=2))
    if a.out:
        a.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
