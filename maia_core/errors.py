"""Errors a user can fix.

Raise :class:`UserError` for anything caused by input: a bad flag, a missing file, an
unknown name, weights that are not on disk. The CLI prints its message as one line and
exits with code 2. Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix. The message names the problem and the fix, on one line."""

    exit_code = 2

    def __init__(self, message: str):
        # One line, always: the CLI prints it as-is.
        super().__init__(" ".join(str(message).split()))

    @property
    def message(self) -> str:
        return self.args[0]


class BackboneError(Exception):
    """A backbone failed for good (after its retries). The unit is marked failed; others go on."""


class ToolError(Exception):
    """A tool's answer to bad use or a missing resource: the agent sees the message and its
    own lines of code, not the tool's internals."""


def check_count(value: int, flag: str, low: int, high: int, why: str = "") -> int:
    """``value`` when ``low <= value <= high``; else a one-line error that names the bound it
    passes (and ``why`` there is an upper one)."""
    if value < low:
        raise UserError(f"{flag} must be at least {low:,}, not {value:,}.")
    if value > high:
        reason = f" ({why})" if why else ""
        raise UserError(f"{flag} must be at most {high:,}{reason}, not {value:,}.")
    return value
