"""Starting from pretrained checkpoints (issue 17): what a pretrained student and a pretrained teacher buy in the
deployed 2 MB file, against training from scratch and against cutting the pretrained model's width by hand.

    .venv/bin/python -m bench.finetune_start [--seeds 0 1] [--imgsz 256] [--arms scratch student both handcut]
        [--pretrain-epochs 25] [--pretrain-images 800] [--yolo11n-pt PT] [--yolo11s-pt PT] [--set KEY=VALUE ...]
        [--json NAME]

No weights can be downloaded here, so COCO's yolo11n.pt / yolo11s.pt have a stand-in: yolo11n and yolo11s trained by
kdprune on the second generated dataset (``data=glyphs``: 7 letter classes on procedural backgrounds, other content
than the embedded shapes), ``prune=none distill=none``, then fine-tuned on the embedded dataset (8 other classes), so
the head is rebuilt and every other tensor transferred, as with a COCO checkpoint. Arms, each the ``yolo11n_mcu``
default run (KD, gradual pruning to 2,000,000 INT8 bytes, QAT, exports) scored on its **TFLite INT8 file**:

- ``scratch`` (a): as today, student and teacher from scratch;
- ``student`` (b): ``model.weights=<pretrained yolo11n>``, the teacher from scratch (the cached one);
- ``both`` (c): ``model.weights=<pretrained yolo11n> teacher.init=<pretrained yolo11s>`` (the teacher fine-tuned);
- ``handcut``: what the first user tried: yolo11n with its width multiple cut until the INT8 estimate fits the budget,
  every tensor of matching shape transferred from the pretrained yolo11n (``model.cfg=<cut yaml>
  model.pretrained=<yolo11n>``, ultralytics' ``model.load``, which copies only equal shapes), trained the same epochs
  with QAT and the same exports, no pruning, no KD, at the former fine-tuning lr (0.001, one warm-up epoch);
- ``both_scratch_recipe``: ``both`` trained with the from-scratch values (``recipe=scratch``: lr0 0.003, 3 warm-up
  epochs, for the student and the teacher's fine-tune), the control that decides the ``finetune`` recipe;
- ``handcut_scratch_recipe``: ``handcut`` trained with the from-scratch values (``recipe=scratch``, what
  ``recipe=auto`` picks for it): at width 0.20 only ~7 % of the pretrained yolo11n's parameters have a shape that
  transfers, so the cut model is close to a from-scratch one; the better of the two is the anchor. (The runs recorded
  before ``model.pretrained`` existed, seeds 0 and 1, saved the cut model as a .pt for ``model.weights``: the same
  transferred tensors, the others drawn once instead of per seed.)
- ``handcut_kd``: ``handcut`` with what kdprune adds besides pruning: the teacher fine-tuned from the pretrained
  yolo11s (the ``both`` arm's, cached) distils into it (``recipe=auto``, from scratch for it). Against ``both`` it
  asks whether pruning a pretrained yolo11n earns its place over cutting its width by hand, KD on both sides;
- ``both_t5``: ``both`` with the teacher fine-tuned for 5 epochs instead of 10 (``teacher.init_epochs=5``).

Arms ``student`` and ``both`` run kdprune's defaults as they stand: the seeds recorded before 8faef70 (bench/RESULTS.md)
trained with the former fine-tuning recipe (lr0 0.001, one warm-up epoch), which ``both_scratch_recipe`` replaced.

The pretraining runs go to bench/runs/finetune/pretrain-*; arms to bench/runs/finetune/<arm>-<imgsz>-s<seed> (a finished
run is read back, not re-run). Writes bench/results/finetune_start/shapes-<imgsz>-<arm, or sweep>-s<seeds>.json (or
``--json NAME``) after each run and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.common import RESULTS, ROOT, git_rev, machine, narrow_yolo11n_yaml, result_name, run_env

OUT = ROOT / "bench" / "runs" / "finetune"
BUDGET = 2_000_000
# the fine-tuning recipe's values until 8faef70 (lr0 0.001, one warm-up epoch); since then they equal the from-scratch
# ones, so the handcut arm names them to keep its meaning
LOW_LR = ["finetune.lr0=0.001", "finetune.warmup_epochs=1.0"]


def kdprune(run_dir: Path, *args: str) -> dict:
    summary = run_dir / "summary.json"
    if not summary.is_file():
        t0 = time.time()
        p = subprocess.run([sys.executable, "-m", "kdprune", *args, f"hydra.run.dir={run_dir}", "val.plot_every=0"],
                           cwd=ROOT, env=run_env(), capture_output=True, text=True)
        if p.returncode != 0 and not (p.returncode == 2 and summary.is_file()):  # 2 + summary: a failed verdict
            raise SystemExit(f"{run_dir.name} failed ({p.returncode}):\n{p.stderr[-3000:]}")
        if p.returncode:
            print(f"  {run_dir.name}: {p.stderr.strip().splitlines()[-1][:400]}", flush=True)
        print(f"  {run_dir.name}: {time.time() - t0:.0f} s", flush=True)
    return json.loads(summary.read_text())


def pretrain(model: str, imgsz: int, epochs: int, images: int) -> Path:
    """The stand-in for a COCO checkpoint: ``model`` trained on the glyphs dataset."""
    run_dir = OUT / f"pretrain-{model}-{imgsz}-e{epochs}-n{images}"
    kdprune(run_dir, f"model={model}", "data=glyphs", f"data.embedded.n_train={images}", f"data.imgsz={imgsz}",
            f"trainer.max_epochs={epochs}", "prune=none", "distill=none", "quant=none", "export=none", "seed=0")
    return run_dir / "weights" / "best.pt"


def score(s: dict) -> dict:
    row = next(r for r in s["stages"] if r["stage"] == "TFLite INT8")
    teacher = s.get("teacher") or {}
    return {"tflite_mAP50-95": row["mAP50-95"], "tflite_bytes": row["bytes"], "best_pt_mAP50-95": s["mAP50-95"],
            "params": s["params"], "wall_time_s": s["wall_time_s"], "teacher_mAP50-95": teacher.get("mAP50-95"),
            "recipe": (s.get("recipe") or {}).get("recipe")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--imgsz", type=int, default=256)
    ap.add_argument("--arms", nargs="+", default=["scratch", "student", "both", "handcut"],
                    choices=["scratch", "student", "both", "handcut", "both_scratch_recipe", "both_t5",
                             "handcut_scratch_recipe", "handcut_kd"])
    ap.add_argument("--pretrain-epochs", type=int, default=25)
    ap.add_argument("--pretrain-images", type=int, default=800, help="glyphs training images for the stand-ins")
    ap.add_argument("--yolo11n-pt", help="an existing stand-in for yolo11n.pt instead of pretraining one")
    ap.add_argument("--yolo11s-pt", help="an existing stand-in for yolo11s.pt (e.g. the teacher kdprune trained and "
                    "cached for data=glyphs: a plain 20-epoch run of yolo11s.yaml) instead of pretraining one")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="Hydra overrides added to every arm")
    ap.add_argument("--json", help="bench/results/finetune_start/NAME.json to write (default: "
                    "shapes-<imgsz>-<the arm, or sweep>-s<seeds>)")
    args = ap.parse_args()
    name = args.json or result_name("shapes", str(args.imgsz), arms=args.arms, seeds=args.seeds)
    OUT.mkdir(parents=True, exist_ok=True)
    def stand_in(model: str, given: str | None) -> Path:
        return Path(given) if given else pretrain(model, args.imgsz, args.pretrain_epochs, args.pretrain_images)

    n = stand_in("yolo11n", args.yolo11n_pt)
    s = stand_in("yolo11s", args.yolo11s_pt) if any("both" in a or "kd" in a for a in args.arms) else None
    cut, width = narrow_yolo11n_yaml(BUDGET) if any(a.startswith("handcut") for a in args.arms) else (None, None)
    cut_start = [f"model.cfg={cut}", f"model.pretrained={n}", "prune=none"]
    handcut = [*cut_start, "distill=none", "teacher=none"]
    base = ["+experiment=yolo11n_mcu", f"data.imgsz={args.imgsz}", *args.set]
    arms = {"scratch": [], "student": [f"model.weights={n}"], "both": [f"model.weights={n}", f"teacher.init={s}"],
            "handcut": [*handcut, "recipe=finetune", *LOW_LR], "handcut_scratch_recipe": [*handcut, "recipe=scratch"],
            "handcut_kd": [*cut_start, f"teacher.init={s}"],
            "both_scratch_recipe": [f"model.weights={n}", f"teacher.init={s}", "recipe=scratch"],
            "both_t5": [f"model.weights={n}", f"teacher.init={s}", "teacher.init_epochs=5"]}
    results: dict[str, list[dict]] = {}
    for seed in args.seeds:
        for arm in args.arms:
            # a fine-tuned teacher per seed (handcut_kd: the both arm's)
            teacher_seed = [f"teacher.seed={seed}"] if arm.startswith("both") or arm == "handcut_kd" else []
            r = score(kdprune(OUT / f"{arm}-{args.imgsz}-s{seed}", *base, *arms[arm], f"seed={seed}", *teacher_seed))
            results.setdefault(arm, []).append(r)
            (RESULTS / "finetune_start" / f"{name}.json").write_text(json.dumps(
                {"machine": machine(), "commit": git_rev(), "imgsz": args.imgsz, "seeds": args.seeds,
                 "pretrained": {"yolo11n": str(n), "yolo11s": str(s) if s else None},
                 "handcut_width": width, "arms": results}, indent=2))
    lines = [f"\n{machine()}, commit {git_rev()}, imgsz {args.imgsz}, seeds {args.seeds}",
             "| arm | TFLite INT8 mAP50-95 per seed | mean | file bytes | params | wall time (s) |",
             "|---|---|---|---|---|---|"]
    for arm, rs in results.items():
        m = [r["tflite_mAP50-95"] for r in rs]
        lines.append(f"| {arm} | {' / '.join(f'{x:.4f}' for x in m)} | {statistics.mean(m):.4f} | "
                     f"{rs[0]['tflite_bytes']:,} | {rs[0]['params']:,} | "
                     f"{' / '.join(str(round(r['wall_time_s'])) for r in rs)} |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
