"""The one exception type for mistakes a user can fix (bad config, missing data, bad file), and how to
quote untrusted text inside its one-line message."""

from __future__ import annotations

from typing import Any


class UserError(Exception):
    """Raised for input the user can correct; the CLI prints it as one line and exits with code 2.

    Anything else that escapes is a bug and keeps its traceback.
    """


class Interrupted(UserError):
    """Training stopped on a signal after saving its state; the exit code is 128 + the signal number."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


def one_line(text: object, limit: int = 160) -> str:
    """Whitespace collapsed and cut at `limit`: a message that quotes a file or an exception stays one
    short line however long or multi-line the quoted text is. An exception with no text gives its type; a
    KeyError gives its message, which its str() would quote with every newline as a literal \\n."""
    if isinstance(text, KeyError) and len(text.args) == 1 and isinstance(text.args[0], str):
        text = text.args[0]
    flat = " ".join(str(text).split())
    if not flat and isinstance(text, BaseException):
        flat = type(text).__name__
    return flat if len(flat) <= limit else flat[:limit] + "..."


def describe(value: Any, limit: int = 40) -> str:
    """A value read from a file, for an error message: scalars as written, anything else by its type."""
    return one_line(repr(value) if isinstance(value, int | float | str | None) else type(value).__name__, limit)
