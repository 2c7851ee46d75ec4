"""A callback the DDP test adds from the command line: every rank writes what it pruned and its parameter shapes."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L


class DumpPruning(L.Callback):
    def __init__(self, path: str):
        self.path = Path(path)

    def on_train_end(self, trainer, pl_module) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / f"rank{trainer.global_rank}.json").write_text(json.dumps({
            "world_size": trainer.world_size,
            "history": pl_module.pruning_history,
            "shapes": [list(p.shape) for p in pl_module.model.parameters()],
            "ema_shapes": [list(p.shape) for p in pl_module.ema.ema.parameters()],
            "adapter_shapes": [list(p.shape) for p in pl_module.distiller.parameters()] if pl_module.distiller else [],
            "checksum": float(sum(p.double().sum() for p in pl_module.parameters())),
        }))


class DumpQAT(L.Callback):
    """Every rank writes its fake-quant ranges and a parameter checksum at the end of a QAT run."""

    def __init__(self, path: str):
        self.path = Path(path)

    def on_train_end(self, trainer, pl_module) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        qat = pl_module.qat
        scales = {n: b.flatten().tolist() for n, b in qat.graph.named_buffers() if n.endswith(".scale")}
        (self.path / f"rank{trainer.global_rank}.json").write_text(json.dumps({
            "world_size": trainer.world_size,
            "state": qat.state(),
            "scales": scales,
            "checksum": float(sum(p.double().sum() for p in pl_module.model.parameters())),
        }))
