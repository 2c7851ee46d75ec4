"""``Compression``: the one owner of the pruning and QAT phases, and its one entry in a checkpoint."""

from __future__ import annotations

import torch

from kdprune.compression import Compression


def test_a_checkpoint_from_before_the_single_entry_still_resumes():
    """0.1.0 kept the removals, the QAT state and the pruning callback's state under three keys, and the QAT graph's
    tensors under ``qat.``: ``from_checkpoint`` reads them as the one entry, and moves the tensors to where the graph
    now lives (``compression.qat.``), so a run interrupted before the upgrade resumes after it."""
    t = torch.ones(3)
    old = {"state_dict": {"model.model.0.conv.weight": t, "qat.graph.act0.scale": t},
           "pruning_history": [["model.0", True, [1, 2]]], "qat": {"bn_frozen": True},
           "callbacks": {"GradualPruning": {"steps_done": 2}}}
    state = Compression.from_checkpoint(old)
    assert state == {"history": [["model.0", True, [1, 2]]], "qat": {"bn_frozen": True},
                     "pruning": {"steps_done": 2}}
    assert set(old["state_dict"]) == {"model.model.0.conv.weight", "compression.qat.graph.act0.scale"}
    new = {"state_dict": {"compression.qat.graph.act0.scale": t}, "compression": {"history": [], "qat": None,
                                                                                 "pruning": None}}
    assert Compression.from_checkpoint(new) is new["compression"]
    assert set(new["state_dict"]) == {"compression.qat.graph.act0.scale"}


def test_the_qat_graph_is_in_the_module_state_dict_and_the_phases_are_not():
    """The QAT graph's ranges must be in the Lightning checkpoint's ``state_dict`` (a submodule), the phases' state in
    ``phase_state`` only: an empty Compression adds no tensors."""
    c = Compression()
    assert dict(c.state_dict()) == {} and c.phase_state() == {"history": [], "qat": None, "pruning": None}
    c.qat = torch.nn.Linear(2, 2)  # any module in the graph's place
    assert set(c.state_dict()) == {"qat.weight", "qat.bias"}
