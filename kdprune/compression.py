"""What a run does to the student after it is built, in one place: the pruning phase (schedule, accumulated scores,
fade), the removals made so far, and the QAT phase (its schedule and the fake-quantized graph).

``DetectionModule`` owns one ``Compression``; one thin callback (``kdprune.callbacks.CompressionSteps``) steps it from
Lightning's hooks; ``phase_state`` is the whole of it in a checkpoint (beside the QAT graph's tensors), and
``load_phase_state`` is the one path by which a resumed run gets back to the same architecture, graph and phase (the
removals replayed, the QAT graph rebuilt and frozen as far as it was).
"""

from __future__ import annotations

from torch import nn

from kdprune.errors import UserError
from kdprune.pruning import replay
from kdprune.pruning.phase import PruningPhase
from kdprune.quant.phase import QATSchedule
from kdprune.yolo import SplitC2f


class Compression(nn.Module):
    """A submodule of the ``DetectionModule`` (``module.compression``) for one reason: the QAT graph (``qat``, its
    observers' ranges and BN statistics) is saved in the Lightning checkpoint's ``state_dict`` and follows the module
    to its device. The phases are plain attributes (not tensors; their state is ``state_dict``'s ``compression``
    entry of the checkpoint)."""

    def __init__(self, pruning: PruningPhase | None = None, quant: QATSchedule | None = None):
        super().__init__()
        self.pruning, self.quant = pruning, quant
        self.history: list = []  # torch-pruning history of every channel removed (replayed on resume)
        self.qat = None  # QATDetector once the QAT phase starts (it trains the model's tensors, fake-quantized)

    @staticmethod
    def models(module) -> list:
        """The student's float models a channel change applies to: the model and its EMA."""
        return [module.model] + ([module.ema.ema] if module.ema is not None else [])

    # ---- the changes ---------------------------------------------------------------------------------------------
    def prune(self, module, pruner, plan: dict) -> dict:
        """Remove ``plan``'s channels from the student, its EMA and the distillation adapters (pruned with the model:
        ``YoloPruner.apply(follow=...)``), record them in ``history``, and carry every kept element's optimizer state
        (Adam's moments, SGD's momentum) onto the new tensors; the LR schedule is keyed to the global step, so it
        continues. Returns the index map (``kdprune.pruning.carry``) for other per-element state."""
        from kdprune.pruning.carry import prune_with_index_map

        old_state, old_shapes = module.optimizer_state()
        adapters = module.distiller.adapters if module.distiller is not None else None
        records: list = []

        def prune() -> None:
            records.extend(pruner.apply(module.model, plan,
                                        follow=adapters.prune_inputs if adapters is not None else None))

        index_map = prune_with_index_map(module, prune)
        if module.ema is not None:
            pruner.apply(module.ema.ema, plan)
        self.history.extend(records)
        module.new_optimizer(carry=(old_state, old_shapes, index_map))
        return index_map

    def start_qat(self, module, imgsz: int, *, per_channel: bool = True) -> None:
        """Enter the QAT phase: from the EMA weights (the ones validated so far), fake-quantized from here on.

        The EMA stops (an average of fake-quantized steps is not a model any fold or scale was computed for).
        Parameters are the same tensors, so the optimizer's groups stay and its moments carry on, as across a pruning
        step (restarted, Adam's first steps move every weight by ~lr at once, on the model QAT starts from).
        """
        from kdprune.quant import QATDetector

        carry = (*module.optimizer_state(), {})  # same tensors: nothing to re-index
        if module.ema is not None:
            module.model.load_state_dict(module.ema.ema.state_dict())
            module.ema = None
        self.qat = QATDetector(module.model, imgsz, per_channel=per_channel)
        module.new_optimizer(carry=carry)

    # ---- stepped by the callback ---------------------------------------------------------------------------------
    def start(self, module, batches_per_epoch: int) -> None:
        if self.pruning is not None:
            self.pruning.start(module, batches_per_epoch)

    def epoch_start(self, module, epoch: int) -> tuple[list[dict], list[str]]:
        """The pruning steps due at ``epoch``, then the QAT phase's. Returns (the removals' log entries, what the QAT
        phase did: "start", "bn", "observers")."""
        steps = self.pruning.epoch_start(module, epoch) if self.pruning is not None else []
        events: list[str] = []
        if self.quant is not None and (due := self.quant.due(epoch))["qat"]:
            if self.qat is None:
                self.start_qat(module, self.quant.imgsz, per_channel=self.quant.per_channel)
                events.append("start")
            events += self.qat.advance(bn=due["bn"], observers=due["observers"])
            self.qat.train(True)
        return steps, events

    def observe(self, module) -> None:
        if self.pruning is not None:
            self.pruning.observe(module.model)

    def batch_end(self, module) -> None:
        if self.pruning is not None:
            self.pruning.batch_end(self.models(module))

    def pre_prune_due(self, epoch: int) -> bool:
        return self.pruning is not None and self.pruning.first_decision_due(epoch)

    # ---- checkpoints ---------------------------------------------------------------------------------------------
    def phase_state(self) -> dict:
        """Everything but the QAT graph's tensors (those are the module's ``state_dict``): the checkpoint's
        ``compression`` entry."""
        return {"history": self.history, "qat": self.qat.state() if self.qat is not None else None,
                "pruning": self.pruning.state_dict() if self.pruning is not None else None}

    def load_phase_state(self, module, state: dict) -> None:
        """Before the checkpoint's weights load: the removals replayed on the student (its architecture then matches
        the saved tensors), the QAT graph rebuilt and frozen as far as it was, the phases where they were."""
        history = state.get("history") or []
        if history and not self.history:
            if not any(isinstance(m, SplitC2f) for m in module.model.modules()):
                raise UserError("ckpt_path: this checkpoint comes from a pruned run; resume it with the same prune=... "
                                "settings it was trained with.")
            replay(module.model, history)
            self.history = list(history)
        if (qat := state.get("qat")) and self.qat is None:  # a run stopped during QAT: same graph, then load
            from kdprune.quant import QATDetector

            self.qat = QATDetector.from_state(module.model, qat)
        if self.pruning is not None and state.get("pruning"):
            self.pruning.load_state_dict(state["pruning"])

    @staticmethod
    def from_checkpoint(checkpoint: dict) -> dict:
        """The compression state of a Lightning checkpoint, also of one written before this key existed (the removals,
        the QAT state and the pruning callback's state were kept apart then): a run started on 0.1.0 still resumes."""
        if "compression" in checkpoint:
            return checkpoint["compression"]
        sd = checkpoint["state_dict"]
        for k in [k for k in sd if k.startswith("qat.")]:  # the QAT graph was the module's own submodule then
            sd[f"compression.{k}"] = sd.pop(k)
        return {"history": checkpoint.get("pruning_history") or [], "qat": checkpoint.get("qat"),
                "pruning": checkpoint.get("callbacks", {}).get("GradualPruning")}

