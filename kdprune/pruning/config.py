"""``prune.*`` read and checked before any training: the schedule, the target (a ratio or budgets), the per-layer
ratios file, and the ratio that meets the budgets on a model. One-line ``UserError``s for what a user set wrong."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from kdprune.errors import UserError
from kdprune.pruning.budget import MEASURES
from kdprune.pruning.importance import IMPORTANCES, needs_gradients
from kdprune.pruning.pruner import YoloPruner
from kdprune.pruning.ratios import load_layer_ratios, ratios_path
from kdprune.pruning.schedule import PruneSchedule, epoch_index
from kdprune.yolo.structure import ATTENTION_MODES

BUDGETS = tuple(MEASURES)  # params, macs, int8_bytes, arena_bytes


def check_pruner_options(importance: str, prune: DictConfig, importance_key: str) -> None:
    """The pruner's own options (the criterion, ``prune.round_to``, ``prune.attention``), for training and for the
    sensitivity scan alike; one-line ``UserError``s."""
    IMPORTANCES.lookup(importance, importance_key)
    if prune.attention not in ATTENTION_MODES:
        raise UserError(f"prune.attention={prune.attention}: choose one of {', '.join(ATTENTION_MODES)}.")
    if int(prune.round_to) < 1:
        raise UserError(f"prune.round_to={prune.round_to}: must be >= 1 (8 suits most NPUs).")


def check_fade(schedule: PruneSchedule, fade: int, importance_epochs: float, gradients: bool) -> str | None:
    """What is wrong with ``prune.fade_epochs`` / ``prune.importance_epochs`` for this schedule, or None."""
    if importance_epochs < 0:
        return f"prune.importance_epochs={importance_epochs}: must be >= 0 (0: score taylor_batches at each step)"
    if fade < 0:
        return f"prune.fade_epochs={fade}: must be >= 0 (0: remove channels at once)"
    if not fade:
        return None
    epochs = schedule.epochs()
    scored = 1 if gradients and importance_epochs > 0 else 0  # accumulated scores need an epoch of steps first
    if epochs[0] - fade < scored:
        return (f"prune.fade_epochs={fade}: the first step (epoch {epochs[0]}) leaves no room to "
                f"{'score channels for an epoch and ' if scored else ''}fade them before it; set "
                f"prune.start_epoch >= {fade + scored} or a shorter fade")
    gaps = [b - a for a, b in zip(epochs, epochs[1:])]
    if gaps and fade > min(gaps):
        return (f"prune.fade_epochs={fade} is longer than the pruning window between steps (epochs {epochs}: "
                f"{min(gaps)} apart); set prune.fade_epochs <= {min(gaps)} or fewer prune.steps")
    return None


def check_prune_config(cfg: DictConfig, max_epochs: int) -> tuple[PruneSchedule, dict, dict | None]:
    """Everything about ``prune.*`` that needs no model (run first, before data or models are built): the
    schedule, the target and the per-layer ratios file. Raises one-line ``UserError``s."""
    schedule = PruneSchedule(epoch_index(cfg.start_epoch, max_epochs), epoch_index(cfg.end_epoch, max_epochs),
                             int(cfg.steps), str(cfg.shape))
    if (msg := schedule.validate(max_epochs)) is not None:
        raise UserError(msg)
    check_pruner_options(cfg.importance, cfg, "prune.importance")
    if float(cfg.bn_sparsity) < 0:
        raise UserError(f"prune.bn_sparsity={cfg.bn_sparsity}: must be >= 0.")
    if (msg := check_fade(schedule, int(cfg.fade_epochs), float(cfg.importance_epochs),
                           needs_gradients(cfg.importance))) is not None:
        raise UserError(msg)
    target = {k: v for k, v in OmegaConf.to_container(cfg.target, resolve=True).items() if v is not None}
    unknown = set(target) - {"ratio", *BUDGETS}
    main = [k for k in target if k != "arena_bytes"]
    if unknown or len(main) > 1:
        raise UserError(f"prune.target: set one of ratio, {', '.join(b for b in BUDGETS if b != 'arena_bytes')} "
                        f"(and/or arena_bytes, a RAM budget) (got {', '.join(target)}).")
    if not target and cfg.prune_ratios is None:
        raise UserError("prune: no target. Set prune.target.ratio, a budget (prune.target.params / macs / "
                        "int8_bytes / arena_bytes), or per-layer ratios with prune.prune_ratios=<yaml>.")
    layer_ratios = None
    if cfg.prune_ratios is not None:
        if "ratio" in target:
            raise UserError("prune.prune_ratios sets the ratios per layer: use it with a budget (which scales "
                            "them) or alone, not with prune.target.ratio.")
        if not target and cfg.global_ranking:  # global ranking would read the file's ratio 1.0 as "prune it all"
            raise UserError("prune.prune_ratios without a target applies the ratios per layer, which "
                            "prune.global_ranking=true ignores: set prune.global_ranking=false, or add a budget "
                            "(prune.target.int8_bytes=...) for global ranking within the listed layers.")
        path = ratios_path(str(cfg.prune_ratios))
        try:
            layer_ratios = load_layer_ratios(path)
        except ValueError as e:
            raise UserError(f"prune.prune_ratios={cfg.prune_ratios}: {e}.") from None
    for kind, value in target.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"prune.target.{kind}={value}: must be a number.")
        if kind == "ratio" and not 0 <= value < 1:
            raise UserError(f"prune.target.ratio={value}: must be in [0, 1).")
        if kind != "ratio" and value <= 0:
            raise UserError(f"prune.target.{kind}={value}: must be a positive number.")
    return schedule, target, layer_ratios


def solve_budget(pruner: YoloPruner, model, budget: dict[str, int], imgsz: int, round_to: int) -> float:
    """The ratio (and unit weights) meeting every budget: the flash/params/MACs one by one ratio, then the arena
    (RAM) one by pruning the high-resolution layers further."""
    ratio = 0.0
    for kind, value in sorted(budget.items(), key=lambda kv: kv[0] == "arena_bytes"):  # the arena fit last
        try:
            if kind != "arena_bytes":
                ratio, _ = pruner.solve(model, kind, value, imgsz)
                continue
            if len(budget) == 1:
                pruner.weights = dict(pruner.base_weights)
            ratio, _ = pruner.fit_arena(model, ratio, value, imgsz)
        except ValueError as e:
            minimum = e.args[0]
            which = "the high-resolution layers (stride <= 8)" if kind == "arena_bytes" else "every prunable layer"
            raise UserError(f"prune.target.{kind}={value:,}: unreachable; with {which} at round_to={round_to} "
                            f"channels the model still costs {minimum:,}. Raise the budget, "
                            + ("lower data.imgsz, set model.fused_act_layers=3 and model.pad_free_downsample=2, "
                               if kind == "arena_bytes" else "lower prune.round_to, ")
                            + ("set prune.keep_stem=false, " if pruner.keep_stem else "")
                            + "or pick a smaller model.") from None
    return ratio
