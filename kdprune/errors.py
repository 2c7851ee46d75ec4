"""Errors a user can cause and fix."""


class UserError(Exception):
    """An error the user can fix: printed as one line, exit code 2, no traceback."""


class SweepFailed(SystemExit):
    """A sweep whose summary is written but where some job failed: exits with this code (1: a bug, 2: user errors)."""
