"""Callbacks the resume tests add from the command line (``+callbacks.NAME._target_=tests.probes.X``)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import lightning as L
import torch


class SelfSignal(L.Callback):
    """Sends ``sig`` to its own process at the start of batch ``batch`` of epoch ``epoch`` — once: the marker file
    ``once`` keeps the resumed run (same overrides) from doing it again."""

    def __init__(self, epoch: int, sig: str, once: str, batch: int = 0):
        self.epoch, self.batch, self.sig, self.once = epoch, batch, getattr(signal, sig), Path(once)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch and not self.once.exists():
            self.once.write_text(str(self.epoch))
            os.kill(os.getpid(), self.sig)


class StartState(L.Callback):
    """What this fit starts from: epoch, step, weights, optimizer state, EMA, pruning and QAT state, written to
    ``out.N`` (N counts the fits that wrote one: a teacher stage, then the student) when training starts, i.e. after
    Lightning restored a checkpoint and before the first epoch's hooks (no pruning step has run yet)."""

    def __init__(self, out: str):
        self.out = Path(out)
        self.done = False

    def on_train_start(self, trainer, pl_module) -> None:
        if self.done:
            return
        self.done = True
        opt = trainer.optimizers[0]
        n = 0
        while Path(f"{self.out}.{n}").exists():
            n += 1
        torch.save({
            "epoch": trainer.current_epoch, "global_step": trainer.global_step,
            "state_dict": {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()},
            "optimizer": opt.state_dict(),
            "ema": pl_module.ema.ema.state_dict() if pl_module.ema is not None else None,
            "pruning_history": list(pl_module.pruning_history),
            "qat": pl_module.qat.state() if pl_module.qat is not None else None,
            "pruning": pl_module.compression.pruning.state_dict() if pl_module.compression.pruning else None,
        }, f"{self.out}.{n}")


def assert_starts_from(probe_file, ckpt) -> None:
    """The resumed process starts from exactly the checkpoint's state (fails if ckpt_path were ignored: a fresh start
    is at epoch 0 with other weights and no optimizer moments)."""
    p = torch.load(probe_file, map_location="cpu", weights_only=False)
    assert p["epoch"] == ckpt["epoch"] + 1 and p["global_step"] == ckpt["global_step"] > 0
    assert p["state_dict"].keys() == ckpt["state_dict"].keys()
    for k, v in ckpt["state_dict"].items():
        assert torch.equal(p["state_dict"][k], v), k
    saved = ckpt["optimizer_states"][0]["state"]
    for (i, a), (j, b) in zip(sorted(p["optimizer"]["state"].items()), sorted(saved.items())):
        assert i == j and a.keys() == b.keys() and all(torch.equal(a[s], b[s]) for s in a), i
    assert len(p["optimizer"]["state"]) == len(saved) > 0
    if ckpt.get("ema") is not None:
        assert all(torch.equal(p["ema"][k], v) for k, v in ckpt["ema"]["state_dict"].items())
    saved = ckpt["compression"]
    assert p["pruning_history"] == saved["history"]
    assert p["qat"] == saved["qat"]
    if (saved_pruning := saved["pruning"]) is not None:
        _assert_same(p["pruning"], saved_pruning)


def _assert_same(a, b, where="pruning") -> None:
    """Equal, tensors exactly, through nested dicts and lists."""
    if torch.is_tensor(b):
        assert torch.equal(a, b), where
    elif isinstance(b, dict):
        assert a.keys() == b.keys(), where
        for k in b:
            _assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(b, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def probe(out) -> list[str]:
    """The overrides that add ``StartState`` writing to ``out``."""
    return ["+callbacks.probe._target_=tests.probes.StartState", f"+callbacks.probe.out={out}"]
