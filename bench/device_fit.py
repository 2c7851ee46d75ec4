"""Fitting the MCX N947 (flash *and* SRAM): every RAM lever against the unconstrained default, on the device file.

Every arm is the whole ``+experiment=yolo11n_mcu`` run (KD, gradual pruning to the flash budget, QAT, exports), scored
on its TFLite INT8 file with the MCU's kernels, with TensorFlow Lite Micro's measured arena:

- ``relu_192``: the default (192 px, ReLU in layers 0-2, the stem prunable, 2,000,000 B of flash and 384 KiB of arena
  from device=mcxn947; recorded as ``mcxn947`` before the arms were named by their levers);
- ``padfree_192``: the default plus pad-free downsampling (the first two stride-2 convs as 4x4 kernels: the same
  function, and the converter writes no PAD copy of the image and of the stem's output);
- ``padfree_224``: the default's levers at 224 px (reachable only pad-free; the arena budget cuts the stride <= 8
  layers);
- ``unconstrained``: the former default (256 px, SiLU everywhere, the flash budget alone: device=generic);
- ``channels_192`` / ``channels_160``: resolution + high-resolution channels (SiLU; the arena budget prunes the
  stride <= 8 layers further, ``prune.keep_stem=false``);
- ``resolution_128``: resolution alone (SiLU, the flash budget's pruning only: 128 px fits as it is);
- ``fused_256``, ``channels_256``: the other levers alone at 256 px: the pruner's pre-check says whether any pruning
  reaches the arena (a one-line exit 2 naming the smallest reachable arena, before training) and that is recorded.

Every arm is a config file, bench/conf/arm/device_fit/<arm>.yaml, over ``+experiment=yolo11n_mcu``, and sets each lever
it does not study to off, so it stays what it measured when the default moves. One arm by hand, or several as a Hydra
multirun: ``python -m kdprune [-m] +experiment=yolo11n_mcu hydra.searchpath=[file://$PWD/bench/conf]
+arm=device_fit/relu_192[,device_fit/unconstrained] [seed=0,1,2]``.

    .venv/bin/python -m bench.device_fit --arms relu_192 unconstrained --seeds 0 1 2 [--data shapes glyphs]
        [--teacher path/to/best.pt]
    .venv/bin/python -m bench.device_fit --table     # the estimated arena per input size and lever (no training)

``--teacher`` gives every arm the same teacher (a yolo11s of the teacher stage's recipe), so arms differ only in their
levers; without it each resolution trains and caches its own. Runs live in bench/runs/device_fit/ and resume
(bench.common.run_kdprune); results merge into bench/results/device_fit/mcxn947.json.
"""

from __future__ import annotations

import argparse
import json
import sys

from bench.common import RESULTS, ROOT, arm_args, arm_names, git_rev, machine, run_kdprune, seed_mean

OUT = RESULTS / "device_fit" / "mcxn947.json"
RUNS = ROOT / "bench" / "runs" / "device_fit"
ARMS = arm_names("device_fit")  # bench/conf/arm/device_fit/<arm>.yaml, each over +experiment=yolo11n_mcu


def precheck(args: list[str]) -> str | None:
    """The run's one-line user error if no pruning reaches its budgets (the run would stop there, before the teacher
    and training), else None: the same check, in this process, on the student the run would build."""
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    from kdprune.build import build_student
    from kdprune.errors import UserError
    from kdprune.pruning import PruningPhase
    from kdprune.yolo import split_blocks

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[a for a in args if not a.startswith(("hydra.run", "teacher.weights"))])
    with open_dict(cfg):
        cfg.run_dir = "unused"
    _, _, model, _ = build_student(cfg)
    split_blocks(model)
    try:
        PruningPhase.from_config(cfg.prune, model, imgsz=cfg.data.imgsz, max_epochs=cfg.trainer.max_epochs)
    except UserError as e:
        return str(e)
    return None


def run_arm(arm: str, data: str, seed: int, teacher: str | None) -> dict:
    args = ["+experiment=yolo11n_mcu", *arm_args("device_fit", arm), f"data={data}", f"seed={seed}", "val.plot_every=0"]
    if teacher:
        args.append(f"teacher.weights={teacher}")
    if (why := precheck(args)) is not None:
        return {"unreachable": why}
    run_dir = RUNS / f"{arm}-{data}-s{seed}"
    try:
        s = run_kdprune(args, run_dir, f"{arm} {data} seed {seed}")
    except SystemExit as e:  # a file that does not fit the part fails the run (exit 2) after writing its summary
        if not (run_dir / "summary.json").is_file():
            raise
        print(e, flush=True)
        s = json.loads((run_dir / "summary.json").read_text())
    row = next(r for r in s["stages"] if r["stage"] == "TFLite INT8")
    part = row.get("part") or {}
    return {"mAP50-95": row["mAP50-95"], "mAP50": row["mAP50"], "bytes": row["bytes"], "arena": row["arena_bytes"],
            "fits_mcxn947": None if not part else part["fits"], "best_pt": s["mAP50-95"], "imgsz": s["imgsz"],
            "vela_sram": next((n["sram_bytes"] for n in row.get("npu") or []), None),
            "u55_ms": next((n["inference_ms"] for n in row.get("npu") or []), None),
            "small_objects": (s.get("small_objects") or {}).get("share"), "wall_s": s["wall_time_s"]}


def table(sizes=(128, 160, 192, 224, 256), layers=(0, 3), pads=(0, 2)) -> list[dict]:
    """No training: per input size, fused-activation layers and pad-free downsampling convs, the estimated arena of
    the dense student, and what the default's pruning (flash budget + the part's arena budget, keep_stem=false) needs
    or cannot reach."""
    from kdprune.pruning.budget import arena_bytes
    from kdprune.yolo import build_model, fused_activation, hyp_namespace, pad_free_downsample, split_blocks

    rows = []
    for px in sizes:
        for n in layers:
            for pad in pads:
                args = ["+experiment=yolo11n_mcu", f"data.imgsz={px}", f"model.fused_act_layers={n}",
                        f"model.pad_free_downsample={pad}", "prune.keep_stem=false"]
                model = build_model("yolo11n.yaml", None, {i: str(i) for i in range(8)}, hyp_namespace(imgsz=px))
                fused_activation(model, n)
                pad_free_downsample(model, pad)
                split_blocks(model)
                why = precheck(args)
                rows.append({"imgsz": px, "fused_act_layers": n, "pad_free_downsample": pad,
                             "dense_arena_est": arena_bytes(model.eval(), px), "fits_by_pruning": why is None,
                             "why": why})
                print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arms", nargs="+", default=["relu_192", "unconstrained"], choices=list(ARMS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--data", nargs="+", default=["shapes"])
    ap.add_argument("--teacher", default=None, help="one teacher checkpoint for every arm")
    ap.add_argument("--table", action="store_true", help="only the arena table (no training, ~2 min)")
    a = ap.parse_args(argv)
    res = json.loads(OUT.read_text()) if OUT.is_file() else {"runs": {}}
    if a.table:
        res["table"] = table()
        OUT.write_text(json.dumps(res, indent=1) + "\n")
        return 0
    res.update(machine=machine(), commit=git_rev(), teacher=a.teacher)
    for data in a.data:
        for seed in a.seeds:
            for arm in a.arms:
                key = f"{arm}/{data}/s{seed}"
                res["runs"][key] = r = run_arm(arm, data, seed, a.teacher)
                OUT.write_text(json.dumps(res, indent=1) + "\n")
                print(key, json.dumps(r), flush=True)
    for data in a.data:
        for arm in a.arms:
            if (line := seed_mean(res["runs"], f"{arm}/{data}/")) is not None:
                print(f"{data} {arm}: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
