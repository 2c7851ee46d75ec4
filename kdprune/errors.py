"""Errors a user can cause and fix, and how a run stops early."""

import signal


class UserError(Exception):
    """An error the user can fix: printed as one line, exit code 2, no traceback."""


class SweepFailed(SystemExit):
    """A sweep whose summary is written but where some job failed: exits with this code (1: a bug, 2: user errors)."""


class Interrupted(Exception):
    """Training stopped by SIGINT / SIGTERM at a safe point. ``checkpoint`` is the state to resume from (the end of
    epoch ``epoch``, 0-based), or None when no epoch had finished."""

    def __init__(self, signum: int, checkpoint, epoch: int):
        self.signum, self.checkpoint, self.epoch = int(signum), checkpoint, int(epoch)
        self.signame = signal.Signals(self.signum).name
        super().__init__(f"stopped by {self.signame} after {epoch + 1} finished epochs ({checkpoint})")
