"""Faults a run cannot prevent, injected where they happen: what survives and what the user is told. Bad inputs a
run refuses are in tests/test_errors.py; signals at every phase and the resumed run's equality: tests/test_resume.py."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import lightning as L
import pytest
import torch

from kdprune.callbacks import check_resume_checkpoint
from tests.conftest import TINY, run_main
from tests.test_errors import assert_user_error

pytestmark = pytest.mark.slow  # trains (make test-fast leaves it out)


def test_a_full_disk_while_saving_keeps_the_previous_checkpoint_and_says_so(tmp_path, monkeypatch):
    """The disk fills while epoch 2's last.ckpt is written (the write leaves a partial file, then ENOSPC): one line,
    exit 2, the partial file is gone, last.ckpt still holds epoch 1 and loads, and resuming from it finishes the run.
    Before: the OSError's traceback, exit 1, and the partial temporary file left beside last.ckpt."""
    save, calls = L.Trainer.save_checkpoint, []

    def disk_fills(self, filepath, *args, **kwargs):
        calls.append(filepath)
        if len(calls) == 2:
            Path(filepath).write_bytes(b"PK\x03\x04" + bytes(1000))  # what a write cut short leaves
            raise OSError(errno.ENOSPC, "No space left on device", str(filepath))
        return save(self, filepath, *args, **kwargs)

    monkeypatch.setattr(L.Trainer, "save_checkpoint", disk_fills)
    run_dir = tmp_path / "run"
    args = [*TINY, "trainer.max_epochs=3", "val.plot_every=0", f"hydra.run.dir={run_dir}"]
    p = run_main(*args)
    assert_user_error(p, "no space left", "saving epoch 2's checkpoint", "after epoch 1 (unchanged)", "ckpt_path=last")
    ckpts = run_dir / "checkpoints"
    assert sorted(f.name for f in ckpts.iterdir()) == ["last.ckpt"]  # no partial file left
    check_resume_checkpoint(ckpts / "last.ckpt")
    assert torch.load(ckpts / "last.ckpt", map_location="cpu", weights_only=False)["epoch"] == 0
    monkeypatch.undo()
    p = run_main(*args, "ckpt_path=last")
    assert p.returncode == 0, p.stderr[-3000:]
    assert json.loads((run_dir / "summary.json").read_text())["epochs"] == 3


def test_another_write_error_is_our_bug_with_its_traceback(tmp_path, monkeypatch):
    """Only a full disk (or quota) is the user's to fix; any other OSError keeps its traceback (exit 1), and the
    temporary file still goes."""
    def broken(self, filepath, *args, **kwargs):
        Path(filepath).parent.mkdir(parents=True, exist_ok=True)
        Path(filepath).write_bytes(b"partial")
        raise OSError(errno.EIO, "Input/output error", str(filepath))

    monkeypatch.setattr(L.Trainer, "save_checkpoint", broken)
    run_dir = tmp_path / "run"
    p = run_main(*TINY, "val.plot_every=0", f"hydra.run.dir={run_dir}")
    assert p.returncode == 1 and "Traceback" in p.stderr and "Input/output error" in p.stderr
    assert not list((run_dir / "checkpoints").glob(".last.ckpt.tmp*"))
