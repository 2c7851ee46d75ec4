"""``CompressionSteps``: steps the module's ``Compression`` (pruning, then QAT) from Lightning's hooks, and shows what
each step did: a console line, TensorBoard scalars and the channels-per-layer picture."""

from __future__ import annotations

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.utilities import rank_zero_info

from kdprune.callbacks.plots import _tb, channels_chart


class CompressionSteps(L.Callback):
    """The hooks of ``pl_module.compression``. Goes after ``UltralyticsCheckpoint`` in the callback list (which
    ``build_trainer`` ensures): that one writes ``pre_prune.pt`` at the start of the epoch whose start prunes."""

    def on_train_start(self, trainer: L.Trainer, pl_module) -> None:
        pl_module.compression.start(pl_module, max(int(trainer.num_training_batches), 1))

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module) -> None:
        e = trainer.current_epoch
        steps, events = pl_module.compression.epoch_start(pl_module, e)
        if steps or "start" in events:
            _rewrap_ddp(trainer, pl_module)
        for entry in steps:
            self._log_step(trainer, pl_module, entry)
        qat = pl_module.compression.qat
        for what in events:
            if what == "start":
                rank_zero_info(f"kdprune: QAT from epoch {e + 1}: INT8 fake-quant "
                               f"({'per-channel' if qat.per_channel else 'per-tensor'} weights) "
                               f"{qat.state()['fake_quant']}")
                continue
            _sync_buffers(qat.graph)  # under DDP: rank 0's statistics and ranges, one set from here
            rank_zero_info(f"kdprune: QAT epoch {e + 1}: "
                           + ("BatchNorm statistics frozen" if what == "bn" else "quantization ranges frozen"))
        if qat is not None:
            pl_module.log("quant/phase", 1.0 + qat.bn_frozen + qat.observers_frozen, on_step=False, on_epoch=True,
                          batch_size=1)

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module, optimizer) -> None:
        pl_module.compression.observe(pl_module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        pl_module.compression.batch_end(pl_module)

    @staticmethod
    def _log_step(trainer: L.Trainer, pl_module, entry: dict) -> None:
        if not trainer.is_global_zero or (tb := _tb(trainer)) is None:
            return
        step = trainer.global_step
        if entry["cliff"] is not None:
            tb.add_scalar("prune/cliff", entry["cliff"], step)
        tb.add_scalar("prune/ratio", entry["ratio"], step)
        tb.add_scalar("prune/params", entry["params"], step)
        tb.add_scalar("prune/GMACs", entry["macs"] / 1e9, step)
        tb.add_scalar("prune/int8_bytes_est", entry["int8_bytes"], step)
        tb.add_scalar("prune/arena_bytes_est", entry["arena_bytes"], step)
        channels = pl_module.compression.pruning.layer_channels(pl_module.model)
        tb.add_image("prune/channels", channels_chart(channels, f"after step {entry['step']}"), step,
                     dataformats="HWC")


def _rewrap_ddp(trainer: L.Trainer, pl_module) -> None:
    """Under DDP, a new wrapper after the student's tensors changed (channels removed, the QAT graph built): the old
    one's buckets held the old tensors. Unwrap, and wrap as Lightning first did (DDP, its comm hooks)."""
    strategy = trainer.strategy
    if isinstance(strategy.model, torch.nn.parallel.DistributedDataParallel):
        strategy.model = pl_module
        strategy.configure_ddp()


def _sync_buffers(graph) -> None:
    """Under DDP, rank 0's BN statistics and quantization ranges for every rank at each freeze: each rank observed
    its own data shard (measured: activation scales 5 % apart across 2 ranks), and from here they must be one set."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        for b in graph.buffers():
            dist.broadcast(b, src=0)
