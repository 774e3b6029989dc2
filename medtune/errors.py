"""Errors a user can fix: printed as one line (no traceback), exit code 2."""


class MedtuneError(Exception):
    """A problem with the user's input or environment, with the fix in its message."""
