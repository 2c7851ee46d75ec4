"""Which importance criterion and ranking to default to: one-shot prune a trained dense model to the default budget
with each, and compare val mAP right after the cut (no recovery). Also times the graph build and one prune step.

    .venv/bin/python -m bench.prune_importance --weights outputs/<dense run>/weights/best.pt [--seeds 3]

The anchor is ``random`` importance (the control): a criterion that does not beat it is not worth its cost.
Prints a markdown table for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from copy import deepcopy
from pathlib import Path

import torch

from bench.common import default_cfg, default_data_yaml, git_rev, machine


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", required=True, help="a trained dense ultralytics checkpoint (kdprune's best.pt)")
    ap.add_argument("--budget", type=int, default=None, help="INT8 bytes (default: the yolo11n_mcu budget)")
    ap.add_argument("--seeds", type=int, default=3, help="repeats for the random control")
    ap.add_argument("--taylor-batches", type=int, default=4)
    args = ap.parse_args()

    from omegaconf import OmegaConf

    from kdprune.build import hyp_from_cfg
    from kdprune.data import YOLODataModule, resolve_data
    from kdprune.pruning import YoloPruner, build_graph, int8_bytes
    from kdprune.yolo import build_model, evaluate_checkpoint, save_ultralytics_checkpoint, split_blocks, val_settings

    cfg = default_cfg()
    budget = args.budget or int(cfg.prune.target.int8_bytes)
    data = resolve_data(str(default_data_yaml()), cfg.cache_dir, OmegaConf.to_container(cfg.data.embedded), False)
    hyp = hyp_from_cfg(cfg, data)
    dense = build_model(None, args.weights, data["names"], hyp)
    split_blocks(dense)
    dm = YOLODataModule(data, hyp, batch=cfg.data.batch, val_batch=cfg.data.val_batch, workers=cfg.data.workers,
                        seed=0, stride=32)
    dm.setup("fit")
    val = dm.val_dataloader()

    def evaluate(model) -> dict:
        with tempfile.TemporaryDirectory() as d:
            p = save_ultralytics_checkpoint(Path(d) / "m.pt", model, epoch=0, train_args=vars(hyp))
            return evaluate_checkpoint(p, val, data, **val_settings(cfg.val))

    def gradients(model) -> None:
        model.train()
        crit = model.init_criterion()
        model.zero_grad()
        for i, batch in enumerate(dm.train_dataloader()):
            if i >= args.taylor_batches:
                break
            crit(model(batch["img"].float() / 255), batch)[0].sum().backward()

    base = evaluate(dense)
    t = time.perf_counter()
    build_graph(dense)
    t_graph = time.perf_counter() - t
    print(f"dense: mAP50-95 {base['mAP50-95']:.4f}, INT8 ~{int8_bytes(dense):,} B; graph build {t_graph:.2f} s")

    rows = []
    for ranking in (False, True):
        for name in ("l1", "l2", "taylor", "bn_scale", "random"):
            maps, sizes, t_step = [], [], []
            for seed in range(args.seeds if name == "random" else 1):
                torch.manual_seed(seed)
                m = deepcopy(dense)
                if name == "taylor":
                    gradients(m)
                pruner = YoloPruner(m, importance=name, global_ranking=ranking)
                ratio, _ = pruner.solve(m, "int8_bytes", budget, cfg.data.imgsz)
                t = time.perf_counter()
                pruner.apply(m, pruner.plan(m, ratio))
                t_step.append(time.perf_counter() - t)
                m.zero_grad(set_to_none=True)
                maps.append(evaluate(m)["mAP50-95"])
                sizes.append(int8_bytes(m))
            mean = statistics.mean(maps)
            sd = statistics.stdev(maps) if len(maps) > 1 else 0.0
            rows.append((name, "global" if ranking else "per-layer", mean, sd, len(maps), max(sizes),
                         statistics.mean(t_step)))
            print(rows[-1], flush=True)

    print(f"\n{time.strftime('%Y-%m-%d')} · commit {git_rev()} · {machine()}")
    print(f"weights {args.weights}: dense mAP50-95 {base['mAP50-95']:.4f}; budget {budget:,} INT8 bytes (est.)\n")
    print("| importance | ranking | mAP50-95 after the cut | runs | INT8 bytes (est.) | prune step |")
    print("|---|---|---|---|---|---|")
    for name, rk, mean, sd, n, size, ts in rows:
        spread = f" ± {sd:.4f}" if n > 1 else ""
        print(f"| {name} | {rk} | {mean:.4f}{spread} | {n} | {size:,} | {ts:.2f} s |")


if __name__ == "__main__":
    main()
