"""The pruning phase: ``GradualPruning`` removes channels at the start of scheduled epochs, to a ratio or a budget."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from kdprune.callbacks.plots import _tb, channels_chart
from kdprune.errors import UserError
from kdprune.pruning import (
    IMPORTANCES,
    MEASURES,
    PruneSchedule,
    YoloPruner,
    load_layer_ratios,
    model_costs,
    needs_gradients,
)
from kdprune.yolo.structure import ATTENTION_MODES

BUDGETS = tuple(MEASURES)  # params, macs, int8_bytes
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def _resolve_ratios_path(path: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_file() and (CONF_DIR / "prune_ratios" / f"{path}.yaml").is_file():
        return CONF_DIR / "prune_ratios" / f"{path}.yaml"  # a shipped example by name, e.g. prune_ratios=yolo11n
    return p


class GradualPruning(L.Callback):
    """Prunes ``pl_module.model`` (and its EMA) at the start of each scheduled epoch.

    Step ``k`` prunes to ``ratio * schedule.fraction(k)`` of the initial channels. With a budget, ``ratio`` is solved
    before training and solved again at the last step on the trained weights, so the final model meets the budget
    whatever the importance scores did in between. Under DDP, rank 0 decides and broadcasts; every rank then applies
    the same removals, so models stay identical.
    """

    def __init__(self, pruner: YoloPruner, schedule: PruneSchedule, *, ratio: float, budget: tuple[str, int] | None,
                 imgsz: int, bn_sparsity: float = 0.0, taylor_batches: int = 4, costs_before: dict | None = None):
        self.pruner, self.schedule, self.ratio, self.budget, self.imgsz = pruner, schedule, ratio, budget, imgsz
        self.bn_sparsity, self.taylor_batches = bn_sparsity, taylor_batches
        self.costs_before = costs_before or {}
        self.steps_done = 0
        self.steps_log: list[dict] = []

    # ---- config -----------------------------------------------------------------------------------------------------
    @classmethod
    def from_config(cls, cfg: DictConfig, model: torch.nn.Module, *, imgsz: int, max_epochs: int) -> "GradualPruning":
        """Validate ``prune.*`` (one-line ``UserError``s, before any training) and build the callback for ``model``."""
        schedule = PruneSchedule(int(cfg.start_epoch), int(cfg.end_epoch), int(cfg.steps), str(cfg.schedule))
        if (msg := schedule.validate(max_epochs)) is not None:
            raise UserError(msg)
        if cfg.importance not in IMPORTANCES:
            raise UserError(f"prune.importance={cfg.importance}: choose one of {', '.join(IMPORTANCES)}.")
        if cfg.attention not in ATTENTION_MODES:
            raise UserError(f"prune.attention={cfg.attention}: choose one of {', '.join(ATTENTION_MODES)}.")
        if int(cfg.round_to) < 1:
            raise UserError(f"prune.round_to={cfg.round_to}: must be >= 1 (8 suits most NPUs).")
        if float(cfg.bn_sparsity) < 0:
            raise UserError(f"prune.bn_sparsity={cfg.bn_sparsity}: must be >= 0.")
        target = {k: v for k, v in OmegaConf.to_container(cfg.target).items() if v is not None}
        unknown = set(target) - {"ratio", *BUDGETS}
        if unknown or len(target) > 1:
            raise UserError(f"prune.target: set exactly one of ratio, {', '.join(BUDGETS)} (got {', '.join(target)}).")
        if not target and cfg.prune_ratios is None:
            raise UserError("prune: no target. Set prune.target.ratio, a budget (prune.target.params / macs / "
                            "int8_bytes), or per-layer ratios with prune.prune_ratios=<yaml>.")
        layer_ratios = None
        if cfg.prune_ratios is not None:
            if "ratio" in target:
                raise UserError("prune.prune_ratios sets the ratios per layer: use it with a budget (which scales "
                                "them) or alone, not with prune.target.ratio.")
            if not target and cfg.global_ranking:  # global ranking would read the file's ratio 1.0 as "prune it all"
                raise UserError("prune.prune_ratios without a target applies the ratios per layer, which "
                                "prune.global_ranking=true ignores: set prune.global_ranking=false, or add a budget "
                                "(prune.target.int8_bytes=...) for global ranking within the listed layers.")
            path = _resolve_ratios_path(str(cfg.prune_ratios))
            try:
                layer_ratios = load_layer_ratios(path)
            except ValueError as e:
                raise UserError(f"prune.prune_ratios={cfg.prune_ratios}: {e}.") from None
        try:
            pruner = YoloPruner(model, importance=cfg.importance, global_ranking=bool(cfg.global_ranking),
                                round_to=int(cfg.round_to), keep_stem=bool(cfg.keep_stem), attention=cfg.attention,
                                layer_ratios=layer_ratios)
        except ValueError as e:
            where = "prune" if layer_ratios is None else f"prune.prune_ratios={cfg.prune_ratios}"
            raise UserError(f"{where}: {e}.") from None
        costs = model_costs(model, imgsz)
        budget, ratio = None, 1.0
        if "ratio" in target:
            ratio = target["ratio"]
            if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio < 1:
                raise UserError(f"prune.target.ratio={ratio}: must be in [0, 1).")
        elif target:
            kind, value = next(iter(target.items()))
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise UserError(f"prune.target.{kind}={value}: must be a positive number.")
            budget = (kind, int(value))
            ratio = cls._solve(pruner, model, budget, imgsz, int(cfg.round_to))
        return cls(pruner, schedule, ratio=float(ratio), budget=budget, imgsz=imgsz,
                   bn_sparsity=float(cfg.bn_sparsity), taylor_batches=int(cfg.taylor_batches), costs_before=costs)

    @staticmethod
    def _solve(pruner: YoloPruner, model, budget: tuple[str, int], imgsz: int, round_to: int) -> float:
        kind, value = budget
        try:
            ratio, _ = pruner.solve(model, kind, value, imgsz)
        except ValueError as e:
            minimum = e.args[0]
            raise UserError(f"prune.target.{kind}={value:,}: unreachable; with every prunable layer at "
                            f"round_to={round_to} channels the model still costs {minimum:,}. Raise the budget, lower "
                            "prune.round_to, set prune.keep_stem=false, or pick a smaller model.") from None
        return ratio

    # ---- the phase -------------------------------------------------------------------------------------------------
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module) -> None:
        epochs = self.schedule.epochs()
        while self.steps_done < len(epochs) and epochs[self.steps_done] <= trainer.current_epoch:
            self._step(trainer, pl_module)
        in_phase = trainer.current_epoch <= self.schedule.end_epoch
        pl_module.bn_l1 = self.bn_sparsity if in_phase else 0.0

    def _step(self, trainer: L.Trainer, pl_module) -> None:
        k = self.steps_done + 1
        model = pl_module.model
        if k == 1:
            from kdprune.callbacks.checkpoint import UltralyticsCheckpoint

            for cb in trainer.callbacks:
                if isinstance(cb, UltralyticsCheckpoint):
                    cb.save_pre_prune(trainer, pl_module)
        if needs_gradients(self.pruner.importance_name):
            self._gradients(trainer, pl_module)
        plan, ratio = None, self.ratio
        if trainer.is_global_zero:
            if k == self.schedule.steps and self.budget is not None:  # meet the budget on the trained weights
                ratio = self.ratio = self._solve(self.pruner, model, self.budget, self.imgsz, self.pruner.round_to)
            plan = self.pruner.plan(model, ratio * self.schedule.fraction(k))
        plan, self.ratio = trainer.strategy.broadcast((plan, self.ratio), src=0)
        distiller = getattr(pl_module, "distiller", None)
        adapters = distiller.adapters if distiller is not None else None
        records = self.pruner.apply(model, plan, follow=adapters.prune_inputs if adapters is not None else None)
        if pl_module.ema is not None:
            self.pruner.apply(pl_module.ema.ema, plan)
        pl_module.pruning_history.extend(records)
        model.zero_grad(set_to_none=True)
        pl_module.on_pruned()
        self.steps_done = k
        self._report(trainer, pl_module, k)

    def _gradients(self, trainer: L.Trainer, pl_module) -> None:
        """First-order Taylor needs ``.grad``: accumulate it over a few training batches (no optimizer step)."""
        model = pl_module.model
        model.zero_grad(set_to_none=True)
        ddp = trainer.strategy.model
        with ddp.no_sync() if hasattr(ddp, "no_sync") else nullcontext():  # local gradients, no all-reduce
            for i, batch in enumerate(trainer.datamodule.train_dataloader()):
                if i >= self.taylor_batches:
                    break
                batch = pl_module.transfer_batch_to_device(batch, pl_module.device, 0)
                img = batch["img"].float() / 255
                loss, _, _ = pl_module.criterion(model(img), batch)
                loss.sum().backward()

    def _report(self, trainer: L.Trainer, pl_module, k: int) -> None:
        costs = model_costs(pl_module.model, self.imgsz)
        entry = {"step": k, "epoch": trainer.current_epoch, "ratio": round(self.ratio * self.schedule.fraction(k), 4),
                 **costs}
        self.steps_log.append(entry)
        pl_module.print(f"kdprune: pruning step {k}/{self.schedule.steps} at epoch {trainer.current_epoch}: params "
                        f"{costs['params']:,}, INT8 ~{costs['int8_bytes']:,} B, {costs['macs'] / 1e9:.3f} GMACs")
        if trainer.is_global_zero and (tb := _tb(trainer)) is not None:
            step = trainer.global_step
            tb.add_scalar("prune/ratio", entry["ratio"], step)
            tb.add_scalar("prune/params", costs["params"], step)
            tb.add_scalar("prune/GMACs", costs["macs"] / 1e9, step)
            tb.add_scalar("prune/int8_bytes_est", costs["int8_bytes"], step)
            tb.add_image("prune/channels", channels_chart(self.layer_channels(pl_module.model), f"after step {k}"),
                         step, dataformats="HWC")

    def layer_channels(self, model) -> dict[str, tuple[int, int]]:
        """``'i Type'`` -> (channels kept, original) over the prunable convs of each top-level layer."""
        return {f"{i} {getattr(model.model[i], 'origin', type(model.model[i])).__name__}": c
                for i, c in self.pruner.channels(model).items()}

    def summary(self, model) -> dict:
        return {
            "target": {"ratio": self.ratio} if self.budget is None else {self.budget[0]: self.budget[1]},
            "ratio": round(self.ratio, 4),
            "schedule": {"shape": self.schedule.shape, "epochs": self.schedule.epochs()},
            "importance": self.pruner.importance_name,
            "global_ranking": self.pruner.global_ranking,
            "round_to": self.pruner.round_to,
            "before": self.costs_before,
            "after": model_costs(model, self.imgsz),
            "steps": self.steps_log,
            "channels": {k: list(v) for k, v in self.layer_channels(model).items()},
        }

    # ---- resume -----------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"steps_done": self.steps_done, "ratio": self.ratio, "log": self.steps_log}

    def load_state_dict(self, state_dict: dict) -> None:
        self.steps_done = state_dict["steps_done"]
        self.ratio = state_dict["ratio"]
        self.steps_log = state_dict.get("log", [])
