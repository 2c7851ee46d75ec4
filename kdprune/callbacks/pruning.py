"""The pruning phase: ``GradualPruning`` removes channels at the start of scheduled epochs, to a ratio or a budget."""

from __future__ import annotations

from contextlib import nullcontext

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from kdprune.callbacks.plots import _tb, channels_chart
from kdprune.data import prepare_batch
from kdprune.errors import UserError
from kdprune.pruning import (
    IMPORTANCES,
    MEASURES,
    ChannelFade,
    PruneSchedule,
    TaylorEMA,
    YoloPruner,
    epoch_index,
    load_layer_ratios,
    model_costs,
    needs_gradients,
    ratios_path,
)
from kdprune.quant import per_channel
from kdprune.yolo import evaluate_model
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


def _check_fade(schedule: PruneSchedule, fade: int, importance_epochs: float, gradients: bool) -> str | None:
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


class GradualPruning(L.Callback):
    """Prunes ``pl_module.model`` (and its EMA) at the start of each scheduled epoch.

    Step ``k`` prunes to ``ratio * schedule.fraction(k)`` of the initial channels. With a budget, ``ratio`` is solved
    before training and solved again at the last step on the trained weights, so the final model meets the budget
    whatever the importance scores did in between. Under DDP, rank 0 decides and broadcasts; every rank then applies
    the same removals, so models stay identical.
    """

    def __init__(self, pruner: YoloPruner, schedule: PruneSchedule, *, ratio: float, budget: dict[str, int] | None,
                 imgsz: int, bn_sparsity: float, taylor_batches: int, fade_epochs: int, importance_epochs: float,
                 costs_before: dict | None = None):
        self.pruner, self.schedule, self.ratio, self.budget, self.imgsz = pruner, schedule, ratio, budget, imgsz
        self.bn_sparsity, self.taylor_batches = bn_sparsity, taylor_batches
        self.fade_epochs, self.importance_epochs = fade_epochs, importance_epochs
        # Taylor scores averaged over the training steps (importance_epochs > 0), else from taylor_batches at a step
        accumulate = needs_gradients(pruner.importance_name) and importance_epochs > 0
        self.taylor: TaylorEMA | None = TaylorEMA() if accumulate else None
        self.costs_before = costs_before or {}
        self.steps_done = 0
        self.steps_log: list[dict] = []
        self.plan: dict | None = None  # the next step's channels, chosen when its fade began
        self.fade: ChannelFade | None = None
        self.batches_per_epoch = 1

    # ---- config -----------------------------------------------------------------------------------------------------
    @staticmethod
    def check_config(cfg: DictConfig, max_epochs: int) -> tuple[PruneSchedule, dict, dict | None]:
        """Everything about ``prune.*`` that needs no model (run first, before data or models are built): the
        schedule, the target and the per-layer ratios file. Raises one-line ``UserError``s."""
        schedule = PruneSchedule(epoch_index(cfg.start_epoch, max_epochs), epoch_index(cfg.end_epoch, max_epochs),
                                 int(cfg.steps), str(cfg.shape))
        if (msg := schedule.validate(max_epochs)) is not None:
            raise UserError(msg)
        check_pruner_options(cfg.importance, cfg, "prune.importance")
        if float(cfg.bn_sparsity) < 0:
            raise UserError(f"prune.bn_sparsity={cfg.bn_sparsity}: must be >= 0.")
        if (msg := _check_fade(schedule, int(cfg.fade_epochs), float(cfg.importance_epochs),
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

    @classmethod
    def from_config(cls, cfg: DictConfig, model: torch.nn.Module, *, imgsz: int, max_epochs: int) -> GradualPruning:
        """Validate ``prune.*`` (one-line ``UserError``s, before any training) and build the callback for ``model``."""
        schedule, target, layer_ratios = cls.check_config(cfg, max_epochs)
        try:
            pruner = YoloPruner(model, importance=cfg.importance, global_ranking=bool(cfg.global_ranking),
                                round_to=int(cfg.round_to), keep_stem=bool(cfg.keep_stem), attention=cfg.attention,
                                layer_ratios=layer_ratios,
                                per_channel=per_channel(cfg.get("granularity", "per_channel")))
        except ValueError as e:
            where = "prune" if layer_ratios is None else f"prune.prune_ratios={cfg.prune_ratios}"
            raise UserError(f"{where}: {e}.") from None
        costs = model_costs(model, imgsz, pruner.per_channel)
        budget, ratio = None, 1.0
        if "ratio" in target:
            if "arena_bytes" in target:
                raise UserError("prune.target.arena_bytes goes with a budget (e.g. prune.target.int8_bytes) or alone, "
                                "not with prune.target.ratio.")
            ratio = target["ratio"]
        elif target:
            budget = {k: int(v) for k, v in target.items()}
            ratio = cls._solve(pruner, model, budget, imgsz, int(cfg.round_to))
        return cls(pruner, schedule, ratio=float(ratio), budget=budget, imgsz=imgsz,
                   bn_sparsity=float(cfg.bn_sparsity), taylor_batches=int(cfg.taylor_batches),
                   fade_epochs=int(cfg.fade_epochs), importance_epochs=float(cfg.importance_epochs),
                   costs_before=costs)

    @staticmethod
    def _solve(pruner: YoloPruner, model, budget: dict[str, int], imgsz: int, round_to: int) -> float:
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

    # ---- the phase -------------------------------------------------------------------------------------------------
    # Step k (1-based) removes channels at the start of epoch epochs[k-1]. With fade_epochs = F > 0 its channels are
    # chosen F epochs earlier and faded to zero over those epochs' batches, so the removal itself loses nothing.
    def on_train_start(self, trainer: L.Trainer, pl_module) -> None:
        nb = max(int(trainer.num_training_batches), 1)
        self.batches_per_epoch = nb
        if self.taylor is not None:  # time constant in optimizer steps
            self.taylor.set_time_constant(self.importance_epochs * nb / max(pl_module.accumulate_nominal, 1))
            self.pruner.use_accumulated(self.taylor)

    def _decisions_left(self) -> bool:
        return self.steps_done + (self.plan is not None) < self.schedule.steps

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module, optimizer) -> None:
        if self.taylor is not None and self._decisions_left():
            self.taylor.update(pl_module.model)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if self.fade is not None:  # after the optimizer step and the EMA update of this batch
            self.fade.step(*self._models(pl_module))

    @staticmethod
    def _models(pl_module) -> list:
        return [pl_module.model] + ([pl_module.ema.ema] if pl_module.ema is not None else [])

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module) -> None:
        epochs, e = self.schedule.epochs(), trainer.current_epoch
        while self.steps_done < len(epochs) and epochs[self.steps_done] <= e:
            self._step(trainer, pl_module)
        k = self.steps_done  # the next step's index in epochs
        if self.fade_epochs and k < len(epochs) and self.plan is None and e >= epochs[k] - self.fade_epochs:
            self.plan = self._decide(trainer, pl_module, k + 1)
            self.fade = ChannelFade(self.pruner.bn_targets(pl_module.model, self.plan),
                                    steps=(epochs[k] - e) * self.batches_per_epoch)
            pl_module.print(f"kdprune: pruning step {k + 1}/{self.schedule.steps}: fading "
                            f"{sum(len(v) for v in self.plan.values())} channels to zero until epoch {epochs[k]}")
        pl_module.set_bn_sparsity(self.bn_sparsity if e <= self.schedule.end_epoch else 0.0)

    def _decide(self, trainer: L.Trainer, pl_module, k: int) -> dict:
        """Rank 0 chooses step ``k``'s channels (re-solving the budget at the last step, on the trained weights);
        every rank gets the same plan."""
        model = pl_module.model
        if k == 1:  # the dense student as it was before any channel was chosen (and faded)
            from kdprune.callbacks.weights import UltralyticsCheckpoint

            for cb in trainer.callbacks:
                if isinstance(cb, UltralyticsCheckpoint):
                    cb.save_pre_prune(trainer, pl_module)
        if (self.taylor is None or not self.taylor.updates) and needs_gradients(self.pruner.importance_name):
            self._gradients(trainer, pl_module)  # no accumulated scores yet (a step at epoch 0): fresh batches
        plan, ratio = None, self.ratio
        if trainer.is_global_zero:
            if k == self.schedule.steps and self.budget is not None:  # meet the budget on the trained weights
                ratio = self.ratio = self._solve(self.pruner, model, self.budget, self.imgsz, self.pruner.round_to)
            plan = self.pruner.plan(model, ratio, fraction=self.schedule.fraction(k))
        plan, self.ratio = trainer.strategy.broadcast((plan, self.ratio), src=0)
        model.zero_grad(set_to_none=True)
        return plan

    def _step(self, trainer: L.Trainer, pl_module) -> None:
        k = self.steps_done + 1
        plan = self.plan if self.plan is not None else self._decide(trainer, pl_module, k)
        if self.fade is not None:
            while not self.fade.complete:  # (only if the epoch had fewer batches than planned)
                self.fade.step(*self._models(pl_module))
        before = (pl_module.val_metrics or {}).get("mAP50-95")  # the last validation: after the fade, if any
        if before is None and trainer.is_global_zero:  # a step at epoch 0 (a fine-tuned checkpoint): measure it
            before = self._val_map(trainer, pl_module)
        index_map = pl_module.apply_pruning(self.pruner, plan)
        if self.taylor is not None:
            self.taylor.reindex(index_map, prefix="model.")
        self.plan, self.fade, self.steps_done = None, None, k
        self._report(trainer, pl_module, k, before, sum(len(v) for v in plan.values()))

    def _gradients(self, trainer: L.Trainer, pl_module) -> None:
        """First-order Taylor needs ``.grad``: accumulate it over a few training batches (no optimizer step)."""
        model = pl_module.model
        model.zero_grad(set_to_none=True)
        ddp = trainer.strategy.model
        with ddp.no_sync() if hasattr(ddp, "no_sync") else nullcontext():  # local gradients, no all-reduce
            for i, batch in enumerate(trainer.datamodule.train_dataloader()):
                if i >= self.taylor_batches:
                    break
                batch = prepare_batch(batch, pl_module.device)
                loss, _, _ = pl_module.criterion(model(batch["img"]), batch)
                loss.sum().backward()

    @staticmethod
    def _val_map(trainer: L.Trainer, pl_module) -> float:
        return evaluate_model(pl_module.eval_model, trainer.datamodule.val_dataloader(shard=False), pl_module.data,
                              pl_module.device, **pl_module.val_args)["mAP50-95"]

    def _report(self, trainer: L.Trainer, pl_module, k: int, before: float | None, removed: int) -> None:
        """The step's sizes, and its cliff: val mAP50-95 of the EMA model just before the removal (the last
        validation) and just after it (measured here, on rank 0)."""
        costs = model_costs(pl_module.model, self.imgsz, self.pruner.per_channel)
        after = self._val_map(trainer, pl_module) if trainer.is_global_zero else None
        kept, initial = (sum(c) for c in zip(*self.pruner.channels(pl_module.model).values()))
        entry = {"step": k, "epoch": trainer.current_epoch, "channels_removed": removed,
                 "ratio": round(1 - kept / initial, 4),  # realised: share of the prunable channels gone so far
                 "ratio_planned": round(self.ratio * self.schedule.fraction(k), 4), **costs,
                 "mAP50-95_before": before, "mAP50-95_after": after,
                 "cliff": round(before - after, 4) if before is not None and after is not None else None}
        self.steps_log.append(entry)
        cliff = f", val mAP50-95 {before:.4f} -> {after:.4f}" if entry["cliff"] is not None else ""
        pl_module.print(f"kdprune: pruning step {k}/{self.schedule.steps} at epoch {trainer.current_epoch}: "
                        f"{removed} channels removed ({entry['ratio']:.1%} of the prunable ones so far), params "
                        f"{costs['params']:,}, INT8 ~{costs['int8_bytes']:,} B, arena ~{costs['arena_bytes']:,} B, "
                        f"{costs['macs'] / 1e9:.3f} GMACs{cliff}")
        if trainer.is_global_zero and (tb := _tb(trainer)) is not None:
            step = trainer.global_step
            if entry["cliff"] is not None:
                tb.add_scalar("prune/cliff", entry["cliff"], step)
            tb.add_scalar("prune/ratio", entry["ratio"], step)
            tb.add_scalar("prune/params", costs["params"], step)
            tb.add_scalar("prune/GMACs", costs["macs"] / 1e9, step)
            tb.add_scalar("prune/int8_bytes_est", costs["int8_bytes"], step)
            tb.add_scalar("prune/arena_bytes_est", costs["arena_bytes"], step)
            tb.add_image("prune/channels", channels_chart(self.layer_channels(pl_module.model), f"after step {k}"),
                         step, dataformats="HWC")

    def layer_channels(self, model) -> dict[str, tuple[int, int]]:
        """``'i Type'`` -> (channels kept, original) over the prunable convs of each top-level layer."""
        return {f"{i} {getattr(model.model[i], 'origin', type(model.model[i])).__name__}": c
                for i, c in self.pruner.channels(model).items()}

    def summary(self, model) -> dict:
        return {
            "target": {"ratio": self.ratio} if self.budget is None else dict(self.budget),
            "ratio": round(self.ratio, 4),
            "schedule": {"shape": self.schedule.shape, "epochs": self.schedule.epochs()},
            "importance": self.pruner.importance_name,
            "global_ranking": self.pruner.global_ranking,
            "round_to": self.pruner.round_to,
            "before": self.costs_before,
            "after": model_costs(model, self.imgsz, self.pruner.per_channel),
            "steps": self.steps_log,
            "channels": {k: list(v) for k, v in self.layer_channels(model).items()},
        }

    # ---- resume -----------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"steps_done": self.steps_done, "ratio": self.ratio, "log": self.steps_log, "plan": self.plan,
                "fade": self.fade.state_dict() if self.fade is not None else None,
                "taylor": self.taylor.state_dict() if self.taylor is not None else None}

    def load_state_dict(self, state_dict: dict) -> None:
        self.steps_done = state_dict["steps_done"]
        self.ratio = state_dict["ratio"]
        self.steps_log = state_dict.get("log", [])
        self.plan = state_dict.get("plan")
        self.fade = ChannelFade.from_state(state_dict["fade"]) if state_dict.get("fade") else None
        if self.taylor is not None and state_dict.get("taylor"):
            self.taylor.load_state_dict(state_dict["taylor"])
