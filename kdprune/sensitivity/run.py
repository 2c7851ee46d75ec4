"""``run(cfg)`` for ``python -m kdprune +experiment=sensitivity model.weights=...``: scan, allocate, write.

Every prunable layer group is pruned alone at each of ``sensitivity.ratios``, BN is recalibrated on a few training
batches and val mAP is measured; the drops give per-layer ratios that meet ``sensitivity.target_int8_bytes`` with the
least predicted loss, written as a ``prune_ratios`` YAML that ``prune.prune_ratios=`` reads.
"""

from __future__ import annotations

import json
import time
from copy import deepcopy
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from omegaconf import DictConfig

from kdprune.errors import UserError
from kdprune.pruning import YoloPruner, int8_bytes
from kdprune.sensitivity.calibrate import recalibrate_bn, take, val_metrics
from kdprune.sensitivity.config import check_config
from kdprune.sensitivity.groups import to_layer_ratios, widths
from kdprune.sensitivity.measure import Scanner
from kdprune.sensitivity.outputs import layer_notes, write_csv, write_heatmap, write_ratios_yaml
from kdprune.sensitivity.solve import allocate, candidate_ratios, make_curve
from kdprune.yolo import split_blocks, val_settings


def _say(msg: str) -> None:
    rank_zero_info(msg)  # the console (Lightning's handler) and, through the root logger, the run's log file


def _device(cfg: DictConfig) -> torch.device:
    acc = str(cfg.trainer.get("accelerator", "cpu"))
    return torch.device("cuda" if acc in ("gpu", "cuda", "auto") and torch.cuda.is_available() else "cpu")


def _scanner(cfg: DictConfig, s: dict) -> tuple[Scanner, dict, int, int]:
    """The dense (split) model, its pruner and the cached batches as a ``Scanner``; the data; how many training batches
    recalibrate BN and how many val images are evaluated."""
    from kdprune.build import build_datamodule, build_student  # data, hyp and model exactly as training builds them

    L.seed_everything(cfg.seed, workers=True, verbose=False)  # the same BN batches on every run
    data, hyp, model, _ = build_student(cfg)
    if not cfg.model.weights:
        rank_zero_warn("kdprune: sensitivity of untrained weights (no model.weights) is noise: every layer looks "
                       "equally harmless. Give model.weights=<trained .pt> for ratios worth using.")
    device = _device(cfg)
    model.to(device)
    split_blocks(model)  # C2f/C3k2's chunk as two convs, as training prunes them
    try:
        # Local ranking: per-layer ratios are only honoured by it. Importance defaults to l2: gradient-free and one
        # pass, and what carries over to training is each layer's sensitivity to losing width (training then picks
        # the channels with its own criterion on fine-tuned weights), not which channels this scan removed.
        pruner = YoloPruner(model, importance=s["importance"], global_ranking=False, round_to=s["round_to"],
                            keep_stem=s["keep_stem"], attention=s["attention"])
    except ValueError as e:
        raise UserError(f"prune: {e}.") from None
    dm = build_datamodule(cfg, data, hyp, model)
    calib = take(dm.train_dataloader(), s["bn_batches"]) if s["bn_batches"] else []
    val = take(dm.val_dataloader(), s["val_batches"])
    scanner = Scanner(
        model, pruner,
        calibrate=lambda m: recalibrate_bn(m, calib, device),
        evaluate=lambda m: val_metrics(m, val, data, device, **val_settings(cfg.val)),
    )
    return scanner, data, len(calib), sum(len(b["img"]) for b in val)


def _applied_size(scanner: Scanner, layer_ratios: dict, s: dict) -> int:
    """INT8 bytes of the dense model pruned the way training reads the YAML: ``YoloPruner(layer_ratios=...)`` at
    ratio 1 (the ratios as written)."""
    model = deepcopy(scanner.dense)
    pruner = YoloPruner(model, importance="l2", round_to=s["round_to"], keep_stem=s["keep_stem"],
                        attention=s["attention"], layer_ratios=layer_ratios)
    pruner.apply(model, pruner.plan(model, 1.0))
    return int8_bytes(model)


def _check_reachable(scanner, ratios: list[float], budget: int) -> None:
    """Before the scan (fail in seconds, not minutes): a model with nothing to prune, or a budget no scanned ratio
    reaches, is a UserError; a dense model that already fits is a warning."""
    groups, dense = scanner.groups, scanner.dense_bytes
    if not groups:
        raise UserError("prune: no layer of this model can be pruned with these settings (try prune.round_to lower, "
                        "prune.keep_stem=false or prune.attention=ffn).")
    smallest = scanner.size({g.key: max(ratios) for g in groups})
    if smallest > budget:
        raise UserError(f"sensitivity.target_int8_bytes={budget:,}: unreachable; with every prunable layer at ratio "
                        f"{max(ratios):g} the model still costs {smallest:,} bytes (dense {dense:,}). Raise the "
                        "budget, add a larger ratio to sensitivity.ratios, or lower prune.round_to.")
    if dense <= budget:
        rank_zero_warn(f"kdprune: the dense model ({dense:,} INT8 bytes) already fits the budget ({budget:,}): the "
                       "ratios written are all 0.")


def _allocation(scanner, rows: list[dict], s: dict, budget: int):
    """``(alloc, curves, layer_ratios, size)``: the per-group ratios that meet the budget at the least summed drop,
    as per-layer ratios, and the bytes they apply as (checked against the allocation's own count)."""
    groups, dense = scanner.groups, scanner.dense_bytes
    grid, curves = candidate_ratios(s["grid_step"], s["ratios"]), []
    for g in groups:
        measured = [(scanner.fraction(g, r["ratio"]), r["drop_mAP50-95"], dense - r["int8_bytes"])
                    for r in rows if (r["layer"], r["branch"]) == g.key]
        curves.append(make_curve(g.key, [(r, scanner.fraction(g, r)) for r in grid], measured))
    try:
        alloc = allocate(curves, scanner.size, budget)
    except ValueError as e:  # checked before the scan; kept so a change there cannot turn this into a traceback
        raise UserError(f"sensitivity.target_int8_bytes={budget:,}: unreachable (smallest {e.args[0]:,} B).") from None
    layer_ratios = to_layer_ratios(groups, alloc.ratios, len(scanner.dense.model))
    size = _applied_size(scanner, layer_ratios, s)
    if size != alloc.size or size > budget:
        raise RuntimeError(f"the allocation measured {alloc.size:,} B but applies as {size:,} B (budget {budget:,})")
    return alloc, curves, layer_ratios, size


def _scan(scanner, ratios: list[float], run_dir: Path, label: str, how: str) -> tuple[dict, list[dict]]:
    """The dense baseline and one row per (layer group, ratio), one line each, into sensitivity.csv/.png."""
    groups, dense = scanner.groups, scanner.dense_bytes
    _say(f"kdprune: sensitivity of {len(groups)} layer groups at ratios {ratios} {how}")
    base = scanner.baseline()
    _say(f"kdprune: dense: mAP50-95 {base['mAP50-95']:.4f}  mAP50 {base['mAP50']:.4f}  INT8 ~{dense:,} B")

    def progress(k, g, rows):
        cells = "  ".join(f"{r['ratio']:g}: {r['drop_mAP50-95']:+.4f}" for r in rows)
        _say(f"kdprune: sensitivity {k + 1}/{len(groups)} {g.label:<16} mAP50-95 drop  {cells}")

    rows = scanner.scan(ratios, base, progress)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_csv(run_dir / "sensitivity.csv", rows)
    write_heatmap(run_dir / "sensitivity.png", rows, ratios,
                  f"mAP50-95 drop, one layer pruned at a time, BN recalibrated\ndense {base['mAP50-95']:.4f}: {label}")
    return base, rows


def run(cfg: DictConfig) -> dict:
    """Scan, allocate and write ``sensitivity.csv``, ``sensitivity.png``, ``prune_ratios.yaml``, ``summary.json``."""
    t0 = time.time()
    s = check_config(cfg)
    run_dir, budget = Path(cfg.run_dir), s["budget"]
    source = str(cfg.model.weights) if cfg.model.weights else f"untrained {cfg.model.cfg}"
    if cfg.prune.get("global_ranking"):
        rank_zero_warn("kdprune: prune.global_ranking=true ranks channels across layers and so ignores per-layer "
                       "ratios; train with the written YAML and prune.global_ranking=false.")
    scanner, data, n_calib, n_val = _scanner(cfg, s)
    groups, dense = scanner.groups, scanner.dense_bytes
    _check_reachable(scanner, s["ratios"], budget)

    base, rows = _scan(scanner, s["ratios"], run_dir, source if not cfg.model.weights else Path(source).name,
                       f"({source}; BN recalibrated on {n_calib} training batches before each val on {n_val} images)")

    # ---- the allocation ----
    alloc, curves, layer_ratios, size = _allocation(scanner, rows, s, budget)

    # One-shot check of the prediction (drops are measured one layer at a time and summed), and the uniform ratio
    # training would use at the same budget, measured the same way: before fine-tuning, which may change the order.
    combined = scanner.check(scanner.prune(alloc.ratios))
    uniform = scanner.uniform(budget, int(cfg.data.imgsz))
    for m in (combined, uniform):
        m["drop_mAP50-95"] = round(base["mAP50-95"] - m["mAP50-95"], 6)

    # ---- outputs ----
    yaml_path = run_dir / "prune_ratios.yaml"
    use = ("python -m kdprune +experiment=yolo11n_mcu " + (f"model.weights={cfg.model.weights} " if cfg.model.weights
                                                           else "") + f"prune.prune_ratios={yaml_path.resolve()}")
    keep = scanner.keep(alloc.ratios)
    drops = {c.key: c.drop[c.ratios.index(alloc.ratios[c.key])] for c in curves}
    write_ratios_yaml(yaml_path, layer_ratios, [
        "Per-layer pruning ratios from kdprune's sensitivity analysis (python -m kdprune +experiment=sensitivity).",
        f"source: {source}; data {data['yaml_file']}; imgsz {cfg.data.imgsz}; ratios scanned {s['ratios']}",
        f"budget: {budget:,} INT8 bytes (est.); these ratios applied alone give {size:,} (dense {dense:,})",
        f"predicted mAP50-95 drop {alloc.predicted_drop:.4f} (the sum of the per-layer drops); measured one-shot, "
        f"BN recalibrated, before fine-tuning: {combined['drop_mAP50-95']:.4f} (a uniform ratio {uniform['ratio']:.3f} "
        f"at the same budget: {uniform['drop_mAP50-95']:.4f}); dense {base['mAP50-95']:.4f}",
        f"use: {use}",
    ], layer_notes(groups, {g.key: widths(g, scanner.units, keep) for g in groups}, drops))
    summary = {
        "task": "sensitivity", "source": source, "data": data["yaml_file"], "imgsz": int(cfg.data.imgsz),
        "ratios": s["ratios"], "bn_batches": n_calib, "val_images": n_val, "importance": s["importance"],
        "round_to": s["round_to"],
        "dense": base,
        "budget_int8_bytes": budget,
        "int8_bytes": size,
        "params": combined["params"],
        "predicted_drop_mAP50-95": round(alloc.predicted_drop, 6),
        "one_shot": {"sensitivity": combined, "uniform": uniform},
        "allocation": {g.label: alloc.ratios[g.key] for g in groups},
        "size_evaluations": alloc.evaluations,
        "files": {k: str(run_dir / f) for k, f in (("csv", "sensitivity.csv"), ("heatmap", "sensitivity.png"),
                                                   ("prune_ratios", "prune_ratios.yaml"))},
        "command": use,
        "wall_time_s": round(time.time() - t0, 1),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    _say(f"kdprune: ratios for {budget:,} B: INT8 ~{size:,} B (dense {dense:,}); mAP50-95 drop predicted "
         f"{alloc.predicted_drop:.4f}, one-shot {combined['drop_mAP50-95']:.4f} (uniform ratio {uniform['ratio']:.3f}: "
         f"{uniform['drop_mAP50-95']:.4f}) ({summary['wall_time_s']:.0f}s) -> {yaml_path}")
    _say(f"kdprune: train with them: {use}")
    return summary
