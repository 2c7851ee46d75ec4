"""``checkpoints/last.ckpt`` after every epoch, and a stop at a safe point on SIGINT / SIGTERM.

Why not Lightning's ``ModelCheckpoint(save_last=True, save_top_k=0)``: in Lightning 2.6 it writes ``last.ckpt`` only
when a top-k checkpoint was saved in the same step, i.e. never during training, so a killed run left nothing to resume.
"""

from __future__ import annotations

import errno
import os
import random
import signal
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.utilities import rank_zero_info

from kdprune.errors import Interrupted, UserError

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def last_checkpoint(run_dir) -> Path:
    """Where a run keeps its full training state (conf/callbacks/default.yaml puts ``ResumeCheckpoint`` there)."""
    return Path(run_dir) / "checkpoints" / "last.ckpt"


def check_resume_checkpoint(path: str | Path, label: str | None = None) -> None:
    """A UserError unless ``path`` is a readable Lightning training checkpoint: a truncated copy, a file cut short by
    a full disk or a kill outside kdprune's atomic write, or weights (best.pt) given where the training state is
    expected, each as one line before anything is built. Reads the pickled structure only (tensors memory-mapped).
    ``label`` names the setting in the message (default ``ckpt_path=<path>``)."""
    label = label or f"ckpt_path={path}"
    try:
        ckpt = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    except Exception as e:  # any unreadable file is the user's to replace
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"{label}: not a readable checkpoint ({why}); the file may be cut short (copied "
                        "partially, or written by a killed process): resume from another .ckpt, or start the run "
                        "without ckpt_path") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "loops" not in ckpt:
        raise UserError(f"{label}: not a kdprune training checkpoint (checkpoints/last.ckpt holds the training "
                        "state); to start from a model's weights (best.pt), use model.weights=<path>")


def rng_state() -> dict:
    """Every global random stream a training epoch draws from (augmentation in the main process, torch ops)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()  # as plain values: Lightning loads weights_only
    state = {"python": random.getstate(), "numpy": (name, keys.tolist(), pos, has_gauss, gauss),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class ResumeCheckpoint(Checkpoint):
    """Writes the full training state to ``<dirpath>/last.ckpt`` at the end of every training epoch (after validation
    and every other epoch-end hook), atomically: written beside it, then renamed, so a kill during the write leaves
    the previous epoch's file.

    The checkpoint also holds the global RNG states, restored when training starts again, so a resumed run draws the
    same augmentations as an uninterrupted one (the DataModule's shuffle is a function of the seed and the epoch).

    SIGINT (Ctrl-C) and SIGTERM (``kill``, SLURM preemption) during ``fit`` stop training at the end of the current
    batch and raise ``Interrupted``: the resume point is the end of the last finished epoch, which is on disk (a
    mid-epoch state could not be resumed exactly: the loader's position and its workers' random streams are not
    saved). A second Ctrl-C stops at once. SIGKILL cannot be caught; the last finished epoch is on disk all the same.
    Under DDP any rank's signal stops every rank at the same batch.
    """

    def __init__(self, dirpath: str | Path):
        self.dirpath = Path(dirpath)
        self._signal: int | None = None
        self._previous: dict = {}
        self._rng: dict | None = None  # from a checkpoint being resumed, applied when training starts

    @property
    def last(self) -> Path:
        return self.dirpath / "last.ckpt"

    # ---- signals ------------------------------------------------------------------------------------------------
    def _handler(self, signum, frame) -> None:
        if signum == signal.SIGINT and self._signal is not None:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now
        self._signal = signum
        rank_zero_info(f"\nkdprune: {signal.Signals(signum).name} received: stopping at the end of this batch "
                       "(Ctrl-C again to stop at once)")

    def on_train_start(self, trainer: L.Trainer, pl_module) -> None:
        # Runs after every other callback's on_train_start (Lightning orders Checkpoint callbacks last), i.e. at the
        # point that matches the end of the saved epoch in an uninterrupted run.
        if self._rng is not None:
            set_rng_state(self._rng)
            self._rng = None
        # Installed here, after Lightning's own SIGTERM handler (registered after on_fit_start), and removed at
        # on_train_end / on_exception, before Lightning's teardown puts back the handlers it found.
        self._signal = None
        try:
            self._previous = {s: signal.signal(s, self._handler) for s in SIGNALS}
        except ValueError:  # not the main thread (a launcher's worker thread): signals stay as they are
            self._previous = {}

    def _restore_handlers(self) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous = {}

    def on_train_end(self, trainer: L.Trainer, pl_module) -> None:
        self._restore_handlers()

    def on_exception(self, trainer: L.Trainer, pl_module, exception: BaseException) -> None:
        self._restore_handlers()

    def _stop_if_signalled(self, trainer: L.Trainer, epoch_done: bool) -> None:
        flag = self._signal or 0
        if trainer.world_size > 1:  # the same decision on every rank, at the same batch
            t = torch.tensor([flag], device=trainer.strategy.root_device)
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
            flag = int(t.item())
        if flag:
            epoch = trainer.current_epoch
            saved = epoch if epoch_done else epoch - 1  # 0-based index of the last epoch on disk (-1: none)
            raise Interrupted(flag, self.last if saved >= 0 and self.last.is_file() else None, saved)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self._stop_if_signalled(trainer, epoch_done=False)

    # ---- saving and restoring ---------------------------------------------------------------------------------
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        if trainer.sanity_checking or trainer.fast_dev_run:
            return
        tmp = self.dirpath / f".last.ckpt.tmp{os.getpid()}"
        try:
            trainer.save_checkpoint(tmp, weights_only=False)  # every rank calls it; rank 0 writes
            if trainer.is_global_zero:
                with open(tmp, "rb") as f:
                    os.fsync(f.fileno())  # on disk before the rename, so a reboot cannot leave an empty last.ckpt
                os.replace(tmp, self.last)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            kept = (f"{self.last} still holds the state after epoch {trainer.current_epoch} (unchanged)"
                    if self.last.is_file() else "no earlier checkpoint was written")
            raise UserError(f"no space left on the device of {self.dirpath} while saving epoch "
                            f"{trainer.current_epoch + 1}'s checkpoint; {kept}: free space and resume with "
                            "ckpt_path=last in this run dir") from None
        trainer.strategy.barrier("kdprune.last_ckpt")
        self._stop_if_signalled(trainer, epoch_done=True)

    def state_dict(self) -> dict:
        return {"rng": rng_state()}

    def load_state_dict(self, state_dict: dict) -> None:
        self._rng = state_dict.get("rng")
