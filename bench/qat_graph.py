"""The QAT graph of a run, kept for re-scoring after the run (a run keeps best.pt, not the fake-quant graph its
TFLite INT8 file came from). Add the callback to a run from the command line:

    python -m kdprune ... +callbacks.qat_graph._target_=bench.qat_graph.SaveQATGraph

and it writes ``weights/qat_graph.pt`` at the end of training: the trained DetectionModel and the graph's state
(weights, BN statistics, fake-quant scales and flags). ``load_qat_graph`` rebuilds the graph in eval mode, as the
run's stages score it. A GraphModule from torch.export does not pickle (torch 2.14), hence model + state.
"""

from __future__ import annotations

import copy
from pathlib import Path

import lightning as L
import torch


class SaveQATGraph(L.Callback):
    def on_train_end(self, trainer, pl_module) -> None:
        qat = getattr(pl_module, "qat", None)
        if qat is None or not trainer.is_global_zero:
            return
        path = Path(trainer.default_root_dir) / "weights" / "qat_graph.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"model": copy.deepcopy(qat.model).cpu(), "graph": {k: v.cpu() for k, v in
                                                                       qat.graph.state_dict().items()},
                    "imgsz": qat.imgsz, "per_channel": qat.per_channel}, path)


def load_qat_graph(path: str | Path) -> torch.nn.Module:
    """The saved QAT graph in eval mode: BN from its running statistics, observers off, ranges as saved."""
    from kdprune.quant.qat import QATDetector

    saved = torch.load(path, map_location="cpu", weights_only=False)
    q = QATDetector(saved["model"], int(saved["imgsz"]), per_channel=bool(saved["per_channel"]))
    q.graph.load_state_dict(saved["graph"])
    q.observers_frozen = True
    q.train(False)
    return q.graph
