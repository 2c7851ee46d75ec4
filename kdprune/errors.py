"""Errors a user can cause and fix."""


class UserError(Exception):
    """An error the user can fix: printed as one line, exit code 2, no traceback."""
