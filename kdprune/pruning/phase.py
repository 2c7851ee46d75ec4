"""The pruning phase: which channels go at which epoch, their fade, the accumulated scores, and the log of each step.

A plain object, not a callback: ``kdprune.compression.Compression`` owns it (with the QAT phase and the removals
made so far), the module holds that, and one thin callback steps it. Every method takes the ``DetectionModule``: the
phase decides, the module's ``Compression.prune`` removes (model, EMA, adapters, optimizer state).
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from kdprune.errors import UserError
from kdprune.pruning.accumulate import TaylorEMA
from kdprune.pruning.budget import model_costs
from kdprune.pruning.config import check_prune_config, solve_budget
from kdprune.pruning.fade import ChannelFade
from kdprune.pruning.importance import needs_gradients
from kdprune.pruning.pruner import YoloPruner
from kdprune.pruning.schedule import PruneSchedule
from kdprune.yolo import evaluate_model


class PruningPhase:
    """Prunes the student (and its EMA) at the start of each scheduled epoch.

    Step ``k`` prunes to ``ratio * schedule.fraction(k)`` of the initial channels. With a budget, ``ratio`` is solved
    before training and solved again at the last step on the trained weights, so the final model meets the budget
    whatever the importance scores did in between. Under DDP, rank 0 decides and broadcasts; every rank then applies
    the same removals, so models stay identical.

    Step k (1-based) removes channels at the start of epoch ``epochs[k-1]``. With ``fade_epochs`` = F > 0 its channels
    are chosen F epochs earlier and faded to zero over those epochs' batches, so the removal itself loses nothing.
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

    @classmethod
    def from_config(cls, cfg: DictConfig, model: torch.nn.Module, *, imgsz: int, max_epochs: int) -> PruningPhase:
        """Validate ``prune.*`` (one-line ``UserError``s, before any training) and build the phase for ``model``."""
        from kdprune.quant import per_channel

        schedule, target, layer_ratios = check_prune_config(cfg, max_epochs)
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
            ratio = solve_budget(pruner, model, budget, imgsz, int(cfg.round_to))
        return cls(pruner, schedule, ratio=float(ratio), budget=budget, imgsz=imgsz,
                   bn_sparsity=float(cfg.bn_sparsity), taylor_batches=int(cfg.taylor_batches),
                   fade_epochs=int(cfg.fade_epochs), importance_epochs=float(cfg.importance_epochs),
                   costs_before=costs)

    # ---- stepped by the Compression callback ---------------------------------------------------------------------
    def start(self, module, batches_per_epoch: int) -> None:
        self.batches_per_epoch = batches_per_epoch
        if self.taylor is not None:  # time constant in optimizer steps
            self.taylor.set_time_constant(self.importance_epochs * batches_per_epoch
                                          / max(module.accumulate_nominal, 1))
            self.pruner.use_accumulated(self.taylor)

    def _decisions_left(self) -> bool:
        return self.steps_done + (self.plan is not None) < self.schedule.steps

    def observe(self, model: torch.nn.Module) -> None:
        """Before each optimizer step: the gradients into the accumulated Taylor scores, while decisions are left."""
        if self.taylor is not None and self._decisions_left():
            self.taylor.update(model)

    def batch_end(self, models: list) -> None:
        """After the optimizer step and the EMA update of a batch: the fade's next step."""
        if self.fade is not None:
            self.fade.step(*models)

    def first_decision_due(self, epoch: int) -> bool:
        """Whether the first step's channels are chosen at the start of ``epoch`` (the dense student's last moment:
        ``pre_prune.pt``)."""
        if self.steps_done or self.plan is not None:
            return False
        first = self.schedule.epochs()[0]
        return epoch >= first - (self.fade_epochs or 0)

    def epoch_start(self, module, epoch: int) -> list[dict]:
        """The steps due at ``epoch`` (removals, then the next fade's choice); returns the removals' log entries."""
        epochs, done = self.schedule.epochs(), []
        while self.steps_done < len(epochs) and epochs[self.steps_done] <= epoch:
            done.append(self._step(module, epoch))
        k = self.steps_done  # the next step's index in epochs
        if self.fade_epochs and k < len(epochs) and self.plan is None and epoch >= epochs[k] - self.fade_epochs:
            self.plan = self._decide(module)
            self.fade = ChannelFade(self.pruner.bn_targets(module.model, self.plan),
                                    steps=(epochs[k] - epoch) * self.batches_per_epoch)
            module.print(f"kdprune: pruning step {k + 1}/{self.schedule.steps}: fading "
                         f"{sum(len(v) for v in self.plan.values())} channels to zero until epoch {epochs[k]}")
        module.set_bn_sparsity(self.bn_sparsity if epoch <= self.schedule.end_epoch else 0.0)
        return done

    # ---- decisions -----------------------------------------------------------------------------------------------
    def _decide(self, module) -> dict:
        """Rank 0 chooses the next step's channels (re-solving the budget at the last step, on the trained weights);
        every rank gets the same plan."""
        k, trainer, model = self.steps_done + 1, module.trainer, module.model
        if (self.taylor is None or not self.taylor.updates) and needs_gradients(self.pruner.importance_name):
            module.accumulate_gradients(self.taylor_batches)  # no accumulated scores yet (a step at epoch 0)
        plan, ratio = None, self.ratio
        if trainer.is_global_zero:
            if k == self.schedule.steps and self.budget is not None:  # meet the budget on the trained weights
                ratio = self.ratio = solve_budget(self.pruner, model, self.budget, self.imgsz, self.pruner.round_to)
            plan = self.pruner.plan(model, ratio, fraction=self.schedule.fraction(k))
        plan, self.ratio = trainer.strategy.broadcast((plan, self.ratio), src=0)
        model.zero_grad(set_to_none=True)
        return plan

    def _step(self, module, epoch: int) -> dict:
        k = self.steps_done + 1
        plan = self.plan if self.plan is not None else self._decide(module)
        if self.fade is not None:
            while not self.fade.complete:  # (only if the epoch had fewer batches than planned)
                self.fade.step(*module.compression.models(module))
        before = (module.val_metrics or {}).get("mAP50-95")  # the last validation: after the fade, if any
        if before is None and module.trainer.is_global_zero:  # a step at epoch 0 (a fine-tuned checkpoint)
            before = self._val_map(module)
        index_map = module.compression.prune(module, self.pruner, plan)
        if self.taylor is not None:
            self.taylor.reindex(index_map, prefix="model.")
        self.plan, self.fade, self.steps_done = None, None, k
        return self._log(module, k, epoch, before, sum(len(v) for v in plan.values()))

    @staticmethod
    def _val_map(module) -> float:
        return evaluate_model(module.eval_model, module.trainer.datamodule.val_dataloader(shard=False), module.data,
                              module.device, **module.val_args)["mAP50-95"]

    def _log(self, module, k: int, epoch: int, before: float | None, removed: int) -> dict:
        """The step's sizes, and its cliff: val mAP50-95 of the EMA model just before the removal (the last
        validation) and just after it (measured here, on rank 0)."""
        costs = model_costs(module.model, self.imgsz, self.pruner.per_channel)
        after = self._val_map(module) if module.trainer.is_global_zero else None
        kept, initial = (sum(c) for c in zip(*self.pruner.channels(module.model).values()))
        entry = {"step": k, "epoch": epoch, "channels_removed": removed,
                 "ratio": round(1 - kept / initial, 4),  # realised: share of the prunable channels gone so far
                 "ratio_planned": round(self.ratio * self.schedule.fraction(k), 4), **costs,
                 "mAP50-95_before": before, "mAP50-95_after": after,
                 "cliff": round(before - after, 4) if before is not None and after is not None else None}
        self.steps_log.append(entry)
        cliff = f", val mAP50-95 {before:.4f} -> {after:.4f}" if entry["cliff"] is not None else ""
        module.print(f"kdprune: pruning step {k}/{self.schedule.steps} at epoch {epoch}: "
                     f"{removed} channels removed ({entry['ratio']:.1%} of the prunable ones so far), params "
                     f"{costs['params']:,}, INT8 ~{costs['int8_bytes']:,} B, arena ~{costs['arena_bytes']:,} B, "
                     f"{costs['macs'] / 1e9:.3f} GMACs{cliff}")
        return entry

    # ---- what the run reports ----------------------------------------------------------------------------------
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

    # ---- resume ------------------------------------------------------------------------------------------------
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
