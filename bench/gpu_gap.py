"""Why did ``trainer=gpu`` score 0.2710 where the CPU scored 0.3204 (issue 40)? Paired runs of one recipe, all at once
on one GPU machine, each arm one suspect:

- ``cpu``: the CPU in fp32 (the anchor, on the same machine and code);
- ``gpu32``: the GPU in fp32 (``trainer.precision=32-true``): what the GPU changes apart from precision;
- ``gpu16``: ``16-mixed`` (``trainer=gpu``'s default, the run that scored 0.2710);
- ``gpubf16``: ``bf16-mixed`` (no loss scaling);
- ``gpu32w0``: fp32 with ``data.workers=0``: the dataloader's worker processes (their augmentation RNG streams).

The recipe is the one the gap was measured on: dense yolo11n, 25 epochs at 256 px, no pruning, KD, QAT or export
(``+experiment=yolo11n_mcu`` with those off and ``device=generic``). Runs start together (the GPU arms share the card;
each process gets ``--threads`` CPU threads), and each result is printed and appended to ``OUT/gpu_gap.jsonl`` the
moment its run finishes, so a call cut short by its time limit still returns what finished. At ``--deadline`` seconds
the remaining runs are stopped and their last validated mAP50-95 is recorded as partial.

    python -m bench.gpu_gap --out $OUT [--arms cpu gpu32 gpu16 gpubf16 gpu32w0] [--seeds 0 1] [--deadline 540]
    python -m bench.gpu_gap --out /tmp/g --arms cpu --seeds 0 --smoke   # the plumbing, on a CPU, in a minute

Writes ``bench/results/gpu/gap-<card>.json`` and a copy beside the JSON lines (the card is in every record).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from bench.common import RESULTS, ROOT, git_rev, machine, run_env

RECIPE = ["+experiment=yolo11n_mcu", "prune=none", "distill=none", "quant=none", "export=none", "device=generic",
          "data.imgsz=256", "model.fused_act_layers=0", "prune.keep_stem=true", "val.plot_every=0"]
ARMS = {
    "cpu": ["trainer=cpu"],
    "gpu32": ["trainer=gpu", "trainer.precision=32-true"],
    "gpu16": ["trainer=gpu", "trainer.precision=16-mixed"],
    "gpubf16": ["trainer=gpu", "trainer.precision=bf16-mixed"],
    "gpu32w0": ["trainer=gpu", "trainer.precision=32-true", "data.workers=0"],
}
SMOKE = ["trainer.max_epochs=2", "data.imgsz=64", "data.embedded.n_train=16", "data.embedded.n_val=8",
         "data.embedded.imgsz=64"]


def last_val_map(run_dir: Path) -> float | None:
    """The last validated mAP50-95 of a run that did not finish (TensorBoard's scalars)."""
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:
        return None
    for ev in sorted(run_dir.glob("tensorboard/**/events.out.tfevents.*")):
        acc = EventAccumulator(str(ev))
        acc.Reload()
        if "val/mAP50-95" in acc.Tags().get("scalars", []):
            return acc.Scalars("val/mAP50-95")[-1].value
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="run dirs and gpu_gap.jsonl go here")
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--threads", type=int, default=2, help="CPU threads per run (the cpu arm gets 3x)")
    ap.add_argument("--deadline", type=float, default=540.0, help="seconds before unfinished runs are stopped")
    ap.add_argument("--smoke", action="store_true", help="a tiny run per arm: checks the plumbing, measures nothing")
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    who = machine()
    print(f"gpu_gap: {who}, commit {git_rev()}", flush=True)
    procs = {}
    t0 = time.time()
    for arm in a.arms:
        for seed in a.seeds:
            run_dir = out / f"{arm}-s{seed}"
            threads = a.threads * (3 if arm == "cpu" else 1)
            args = [*RECIPE, *ARMS[arm], f"seed={seed}", f"hydra.run.dir={run_dir}", *(SMOKE if a.smoke else [])]
            log = open(out / f"{arm}-s{seed}.log", "w")
            env = run_env(OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
            procs[(arm, seed)] = (subprocess.Popen([sys.executable, "-m", "kdprune", *args], cwd=ROOT, env=env,
                                                   stdout=log, stderr=subprocess.STDOUT), run_dir)
    results = {}
    while procs:
        time.sleep(2)
        over = time.time() - t0 > a.deadline
        for key, (p, run_dir) in list(procs.items()):
            if p.poll() is None and not over:
                continue
            if p.poll() is None:
                p.terminate()  # kdprune stops at the end of the batch (SIGTERM), saving last.ckpt
                p.wait(60)
            summary = run_dir / "summary.json"
            rec = {"arm": key[0], "seed": key[1], "seconds": round(time.time() - t0, 1), "machine": who,
                   "returncode": p.returncode}
            if summary.is_file():
                s = json.loads(summary.read_text())
                rec.update({"mAP50-95": s["mAP50-95"], "mAP50": s.get("mAP50"), "finished": True})
            else:
                rec.update({"mAP50-95": last_val_map(run_dir), "finished": False})
            results[f"{key[0]}/s{key[1]}"] = rec
            with open(out / "gpu_gap.jsonl", "a") as f:
                f.write(json.dumps(rec) + "\n")
            print(json.dumps(rec), flush=True)
            del procs[key]
    card = who.split(", ")[1].replace(" ", "_") if ", " in who else "unknown"
    text = json.dumps({"machine": who, "commit": git_rev(), "recipe": RECIPE, "runs": results}, indent=1)
    for d in [out] if a.smoke else [out, RESULTS / "gpu"]:  # a smoke run measures nothing: not a result
        d.mkdir(parents=True, exist_ok=True)
        (d / f"gap-{card}.json").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
