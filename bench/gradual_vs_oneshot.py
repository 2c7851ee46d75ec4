"""Does gradual pruning beat cutting once? Every arm prunes yolo11n to the yolo11n_mcu budget (2,000,000 INT8 bytes)
in the same number of epochs, on the embedded dataset, over several seeds, beside the recipe-matched dense model.

    .venv/bin/python -m bench.gradual_vs_oneshot [--seeds 0 1 2] [--imgsz 160] [--arms today new oneshot ...]
        [--kd] [--data glyphs] [--finetune bench/runs/gradual/dense-kd0-160-s0/weights/best.pt]
        [--set trainer=gpu ...] [--jobs 4] [--tag TAG | --json NAME]

Arms (all: +experiment=yolo11n_mcu distill=none quant=none export=none, or --kd for the KD defaults):
- ``dense``: prune=none, the reference row (what compression costs is read against it);
- ``today``: gradual as before issue 13 (the default until then): cubic, 4 steps at epochs 2..10, Taylor from 4 fresh
  batches
  at each step, channels cut at once (prune.importance_epochs=0 prune.fade_epochs=0), optimizer moments carried;
- ``new``: Taylor averaged over the training steps (time constant 1 epoch), each step's channels faded to zero over the
  epoch before their removal (prune.importance_epochs=1 prune.fade_epochs=1);
- ``oneshot``: everything at once at epoch 10 (the best one-shot epoch measured in issue 3), cut at once;
- ``oneshot_fade``: one-shot at epoch 10 with the accumulated scores and the fade;
- ``accumulate_only`` / ``fade_only``: ``new`` with one of its two ingredients (the other as ``today``);
- ``late``: gradual around the one-shot epoch, 4 equal steps at epochs 7, 8, 9, 10, cut at once (the conf/prune/
  gradual.yaml schedule since issue 13); ``late_fade``: the same steps with the accumulated scores and the fade (the
  default since issue 13's 256-px runs).
- ``narrow``: no pruning: yolo11n with its width multiple cut until the INT8 estimate fits the budget (0.200),
  trained from scratch the same epochs: does pruning a wider model beat training the narrow one at equal bytes?
- ``mcu`` / ``mcu_dense`` / ``mcu_narrow``: the whole default run (QAT and the INT8 exports on; ``--kd`` for the KD
  default), the same run with ``prune=none``, and with the narrow model instead of pruning; their score is the
  **TFLite INT8 file's** mAP50-95, so ``mcu`` against ``mcu_dense`` reads what compression costs in the deployed file
  (issue 13's target: within 0.5 point). ``mcu`` cuts at once (the default until issue 13's 256-px runs);
  ``mcu_fade`` is it with the fade and the accumulated scores (the default since); ``mcu_oneshot`` one cut at
  epoch 10 in the whole run.
``--data glyphs`` runs the arms on the second generated dataset (conf/data/glyphs.yaml); ``--finetune BEST_PT`` runs
the fine-tuning case (FINETUNE_ARMS: 10 epochs from a trained dense model).
Final mAP50-95 is the re-validated best.pt (chosen after the last pruning step). Each step's cliff (val mAP50-95 of the
EMA just before and just after the removal) comes from summary.json. Runs are resumable: a finished run dir is read
back, not re-run, and an interrupted one resumes from its ``checkpoints/last.ckpt``. ``--jobs N`` runs N arms at once (a
GPU machine with many cores); ``--set`` appends Hydra overrides to every arm (e.g. ``trainer=gpu``). Writes
bench/results/gradual_vs_oneshot/<data>-<imgsz>-kd<0|1>[-ft]-<the arm, sweep or --tag>-s<seeds>.json (e.g.
``shapes-256-kd1-mcu_fade-s0_1.json``; or ``--json NAME``) after every finished run, so an interrupted sweep leaves what
it measured, and prints a markdown table at the end. ``python -m bench.pair`` pairs arms across those files.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.common import RESULTS, ROOT, git_rev, machine, narrow_yolo11n_yaml, result_name, run_kdprune

# The fine-tuning case (--finetune DENSE_BEST_PT): 10 epochs from a trained dense model; pruning can start at once.
FINETUNE_EPOCHS = 10
FINETUNE_ARMS = {
    "dense": ["prune=none"],
    "today": ["prune.shape=cubic", "prune.start_epoch=0", "prune.end_epoch=6", "prune.importance_epochs=0",
              "prune.fade_epochs=0"],
    "oneshot": ["prune.shape=oneshot", "prune.start_epoch=0", "prune.importance_epochs=0", "prune.fade_epochs=0"],
    "linear": ["prune.start_epoch=1", "prune.end_epoch=4", "prune.shape=linear", "prune.importance_epochs=0",
             "prune.fade_epochs=0"],
    # where cutting a trained model costs most (cliffs 0.035-0.054 above): accumulated Taylor + a one-epoch fade before
    # each of 4 equal steps at epochs 2..5, so every removal takes channels already at zero
    "new": ["prune.start_epoch=2", "prune.end_epoch=5", "prune.shape=linear", "prune.importance_epochs=1.0",
            "prune.fade_epochs=1"],
}
CUBIC = ["prune.shape=cubic", "prune.start_epoch=2", "prune.end_epoch=10", "prune.steps=4"]  # the pre-13 default
ARMS = {
    "dense": ["prune=none"],
    "today": CUBIC + ["prune.importance_epochs=0", "prune.fade_epochs=0"],
    "new": CUBIC + ["prune.importance_epochs=1.0", "prune.fade_epochs=1"],
    "oneshot": ["prune.shape=oneshot", "prune.start_epoch=10", "prune.importance_epochs=0", "prune.fade_epochs=0"],
    "oneshot_fade": ["prune.shape=oneshot", "prune.start_epoch=10", "prune.importance_epochs=1.0",
                     "prune.fade_epochs=1"],
    "accumulate_only": CUBIC + ["prune.importance_epochs=1.0", "prune.fade_epochs=0"],  # ablations of "new"
    "fade_only": CUBIC + ["prune.importance_epochs=0", "prune.fade_epochs=1"],
    # gradual around the one-shot epoch: equal steps at epochs 7..10 (the same mean epoch of removal as one-shot@10
    # minus 1.5), so the comparison is between cutting gently and cutting once, not between cutting early and late
    "late": ["prune.start_epoch=7", "prune.end_epoch=10", "prune.shape=linear", "prune.importance_epochs=0",
             "prune.fade_epochs=0"],
    # the default since issue 13's 256-px KD runs (late linear steps, accumulated scores, a one-epoch fade) at the
    # reduced scale, where "new" (the same on the cubic steps) had cost 0.008
    "late_fade": ["prune.start_epoch=7", "prune.end_epoch=10", "prune.shape=linear", "prune.importance_epochs=1.0",
                  "prune.fade_epochs=1"],
}
# the whole pipeline (QAT, exports): scored on the TFLite INT8 file rather than on best.pt
# (the dense reference is not meant to fit the budget: its file is scored, not failed for its size)
FULL_ARMS = {"mcu": ["prune.importance_epochs=0", "prune.fade_epochs=0"],  # cut at once: the default before the fade
             "mcu_dense": ["prune=none", "export.max_bytes=null"], "mcu_narrow": ["prune=none"],
             # accumulated Taylor, each step's channels faded over the epoch before: the default since issue 13's
             # 256-px KD runs
             "mcu_fade": ["prune.importance_epochs=1.0", "prune.fade_epochs=1"],
             # one cut at epoch 10 in the whole run (the one-shot arm, scored on the file like the others)
             "mcu_oneshot": ["prune.shape=oneshot", "prune.start_epoch=10", "prune.importance_epochs=0",
                             "prune.fade_epochs=0"]}
ARMS.update(FULL_ARMS)
# no pruning at all: yolo11n with its width multiple cut until it fits the budget, trained from scratch (the model
# cfg is filled in by run_arm); does pruning a wider model beat training the narrow one at equal bytes?
ARMS["narrow"] = ["prune=none"]
NARROW_ARMS = ("narrow", "mcu_narrow")


def run_arm(arm: str, seed: int, imgsz: int, kd: bool, out: Path, data: str = "shapes",
            finetune: str | None = None, extra_overrides: tuple[str, ...] = ()) -> dict:
    tag = ("" if data == "shapes" else f"{data}-") + ("ft-" if finetune else "")
    run_dir = out / f"{tag}{arm}-kd{int(kd)}-{imgsz}-s{seed}"
    extra = [f"model.weights={finetune}", f"trainer.max_epochs={FINETUNE_EPOCHS}"] if finetune else []
    if arm in NARROW_ARMS and not (run_dir / "summary.json").is_file():
        extra.append(f"model.cfg={narrow_yolo11n_yaml(2_000_000)[0]}")
    off = [] if arm in FULL_ARMS else ["quant=none", "export=none"]
    args = ["+experiment=yolo11n_mcu", *off, f"data={data}", f"data.imgsz={imgsz}",
            f"seed={seed}", *([] if kd else ["distill=none"]), *(FINETUNE_ARMS if finetune else ARMS)[arm],
            *extra, *extra_overrides, "val.plot_every=0"]
    s = run_kdprune(args, run_dir, f"{arm} seed {seed}")
    steps = (s.get("pruning") or {}).get("steps", [])
    tflite = next((st for st in s.get("stages", []) if st["stage"] == "TFLite INT8"), None)
    if arm in FULL_ARMS and tflite is None:
        raise SystemExit(f"{run_dir}: no TFLite INT8 row in summary.json")
    extra_fields = {"best_pt_mAP50-95": s["mAP50-95"], "tflite_bytes": tflite["bytes"]} if tflite else {}
    return {"seed": seed, "mAP50-95": tflite["mAP50-95"] if arm in FULL_ARMS else s["mAP50-95"], **extra_fields,
            "mAP50": s["mAP50"], "params": s["params"], "int8_bytes_est": s["int8_bytes_est"],
            "wall_time_s": s["wall_time_s"], "cliffs": [st.get("cliff") for st in steps],
            "step_epochs": [st["epoch"] for st in steps]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--imgsz", type=int, default=160, help="reduced scale for the seeds (default run: 256)")
    ap.add_argument("--arms", nargs="+", default=None, choices=sorted(set(ARMS) | set(FINETUNE_ARMS)))
    ap.add_argument("--data", default="shapes", choices=["shapes", "glyphs"], help="conf/data group option")
    ap.add_argument("--finetune", metavar="BEST_PT", help=f"the fine-tuning case: {FINETUNE_EPOCHS} epochs from "
                    "this trained dense checkpoint, pruning from epoch 0 (arms: " + ", ".join(FINETUNE_ARMS) + ")")
    ap.add_argument("--kd", action="store_true", help="the yolo11n_mcu KD defaults (teacher trained once, cached)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "runs" / "gradual"))
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="Hydra overrides added to every arm")
    ap.add_argument("--jobs", type=int, default=1, help="arms run at once")
    ap.add_argument("--tag", help="the file name's arm part (default: the arm, or sweep for several)")
    ap.add_argument("--json", help="bench/results/gradual_vs_oneshot/NAME.json to write instead of the systematic name")
    args = ap.parse_args()
    out = Path(args.out)
    arms = args.arms or list(FINETUNE_ARMS if args.finetune else ARMS)
    if bad := [a for a in arms if a not in (FINETUNE_ARMS if args.finetune else ARMS)]:
        raise SystemExit(f"arms {bad} are not defined {'with' if args.finetune else 'without'} --finetune")
    name = args.json or result_name(args.data, str(args.imgsz), f"kd{int(args.kd)}", *(["ft"] if args.finetune else []),
                                    arms=arms, seeds=args.seeds, label=args.tag)
    jobs = [(seed, arm) for seed in args.seeds for arm in arms]  # seed-major: a partial run still compares every arm
    done: dict[tuple[int, str], dict] = {}
    lock = threading.Lock()

    def one(job: tuple[int, str]) -> None:
        seed, arm = job
        r = run_arm(arm, seed, args.imgsz, args.kd, out, args.data, args.finetune, tuple(args.set))
        with lock:
            done[job] = r
            write(done, quiet=True)

    def write(done: dict, quiet: bool) -> None:
        results: dict[str, list[dict]] = {}
        for seed, arm in jobs:
            if (seed, arm) in done:
                results.setdefault(arm, []).append(done[(seed, arm)])
        rows = []
        dense = results.get("dense")
        ref = statistics.mean(r["mAP50-95"] for r in dense) if dense else None
        full_dense = results.get("mcu_dense")  # the full arms read against their own dense (a file against a file)
        ref_full = statistics.mean(r["mAP50-95"] for r in full_dense) if full_dense else None
        kd = "on" if args.kd else "off"
        lines = [f"\n{machine()}, commit {git_rev()}, data {args.data}, imgsz {args.imgsz}, KD {kd}, "
                 f"seeds {args.seeds}" + (f", overrides {args.set}" if args.set else "")
                 + (f", fine-tuned {FINETUNE_EPOCHS} epochs from {args.finetune}" if args.finetune else ""),
                 "| arm | mAP50-95 per seed | mean ± sd | vs dense | worst cliff per seed | params |",
                 "|---|---|---|---|---|---|"]
        for arm, rs in results.items():
            m = [r["mAP50-95"] for r in rs]
            mean, sd = statistics.mean(m), (statistics.stdev(m) if len(m) > 1 else 0.0)
            cliffs = [max((c for c in r["cliffs"] if c is not None), default=None) for r in rs]
            rows.append({"arm": arm, "mean": mean, "sd": sd, "seeds": m, "runs": rs})
            r0 = ref_full if arm in FULL_ARMS else ref
            vs = f"{mean - r0:+.4f}" if r0 is not None and arm not in ("dense", "mcu_dense") else "—"
            lines.append(f"| {arm} | {' / '.join(f'{x:.4f}' for x in m)} | {mean:.4f} ± {sd:.4f} | {vs} | "
                         f"{' / '.join('—' if c is None else f'{c:.4f}' for c in cliffs)} | {rs[0]['params']:,} |")
        (RESULTS / "gradual_vs_oneshot" / f"{name}.json").write_text(json.dumps(
            {"machine": machine(), "commit": git_rev(), "data": args.data, "imgsz": args.imgsz, "kd": args.kd,
             "finetune": args.finetune, "overrides": args.set, "seeds": args.seeds, "complete": len(done) == len(jobs),
             "arms": rows}, indent=2))
        if not quiet:
            print("\n".join(lines))

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(one, j) for j in jobs]
        try:
            for f in futures:
                f.result()  # re-raises a failed run
        except BaseException:
            pool.shutdown(cancel_futures=True)  # the queued arms do not start; the running ones finish
            raise
    write(done, quiet=False)

if __name__ == "__main__":
    main()
