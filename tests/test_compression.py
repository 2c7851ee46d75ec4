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


def test_the_dense_snapshot_is_due_when_the_first_step_chooses_its_channels():
    """``pre_prune.pt`` (the report's "student before pruning") is written at the start of the epoch whose start
    chooses the first step's channels: the fade's first epoch (6 for steps at 7-10 with a one-epoch fade), the step's
    own epoch without a fade, and never again once channels are chosen."""
    from ultralytics.nn.tasks import DetectionModel

    from kdprune.pruning import PruningPhase
    from kdprune.yolo import split_blocks
    from tests.conftest import TINY, compose

    m = DetectionModel("yolo11n.yaml", nc=3, verbose=False)
    split_blocks(m)
    for fade, first in ((1, 6), (0, 7)):
        cfg = compose([*TINY, "trainer.max_epochs=25", "prune=gradual", "prune.start_epoch=7", "prune.end_epoch=10",
                       "prune.steps=4", f"prune.fade_epochs={fade}", "prune.target.ratio=0.2"])
        c = Compression(PruningPhase.from_config(cfg.prune, m, imgsz=64, max_epochs=25))
        assert [e for e in range(12) if c.pre_prune_due(e)] == list(range(first, 12))  # until something is chosen
        c.pruning.plan = {"model.0": [0]}  # the fade's channels chosen
        assert not c.pre_prune_due(first)
        c.pruning.plan, c.pruning.steps_done = None, 1  # a step done
        assert not c.pre_prune_due(first + 1)
    assert not Compression().pre_prune_due(7)  # a run that does not prune
