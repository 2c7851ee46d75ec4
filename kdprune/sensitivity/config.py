"""``sensitivity.*`` validated at the edge: every value a user can get wrong is one ``UserError`` line, before any
model is built."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from kdprune.data.checks import check_imgsz
from kdprune.errors import UserError
from kdprune.pruning import check_pruner_options
from kdprune.recipe import check_recipe


def check_config(cfg: DictConfig) -> dict:
    """``sensitivity.*`` (and the ``prune.*`` it borrows) validated into plain values; ``UserError`` otherwise."""
    s = cfg.get("sensitivity")
    if s is None:
        raise UserError("no sensitivity settings: run it as python -m kdprune +experiment=sensitivity ...")
    ratios = list(s.ratios) if OmegaConf.is_list(s.ratios) else []
    if not ratios or any(isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 < r < 1 for r in ratios):
        raise UserError(f"sensitivity.ratios={s.ratios}: give a list of ratios in (0, 1), e.g. [0.25,0.5,0.75].")
    if isinstance(s.bn_batches, bool) or not isinstance(s.bn_batches, int) or s.bn_batches < 0:
        raise UserError(f"sensitivity.bn_batches={s.bn_batches}: must be an integer >= 0 (0: no recalibration).")
    vb = s.get("val_batches")
    if vb is not None and (isinstance(vb, bool) or not isinstance(vb, int) or vb < 1):
        raise UserError(f"sensitivity.val_batches={vb}: must be an integer >= 1, or null for the whole val set.")
    step = s.grid_step
    if isinstance(step, bool) or not isinstance(step, (int, float)) or not 0 < step <= max(ratios):
        raise UserError(f"sensitivity.grid_step={s.grid_step}: must be in (0, {max(ratios)}].")
    budget = s.target_int8_bytes
    if budget is None:
        raise UserError("sensitivity.target_int8_bytes is not set: give the INT8 budget in bytes the ratios must meet, "
                        "e.g. sensitivity.target_int8_bytes=2000000 (or prune.target.int8_bytes=...).")
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or budget <= 0:
        raise UserError(f"sensitivity.target_int8_bytes={budget}: must be a positive number of bytes.")
    p = cfg.prune
    if "round_to" not in p:
        raise UserError(f"prune={p.get('name')}: the scan borrows prune.round_to / keep_stem / attention; use "
                        "prune=gradual (as +experiment=sensitivity does).")
    check_pruner_options(s.importance, p, "sensitivity.importance")
    check_imgsz(cfg.data.imgsz)
    check_recipe(cfg)  # the scan builds its model through the same hyperparameters as training
    return {"ratios": sorted({float(r) for r in ratios}), "bn_batches": int(s.bn_batches), "val_batches": vb,
            "importance": str(s.importance), "grid_step": float(step), "budget": int(budget),
            "round_to": int(p.round_to), "keep_stem": bool(p.keep_stem), "attention": str(p.attention)}
