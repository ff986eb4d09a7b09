"""User-facing errors.

Every problem caused by the user's input (a file, a flag, a config) is raised as an
`OpenseasonError` whose message says what is wrong, where (file:line or file:line:col), and how to
fix it. The CLI prints these without a traceback and exits with status 2; anything else is a bug.
"""
from __future__ import annotations


class OpenseasonError(Exception):
    """An error in the user's input, printed by the CLI as one clear message (exit status 2)."""

    def __init__(self, message: str, *, where: str | None = None, hint: str | None = None):
        self.message = message
        self.where = where
        self.hint = hint
        text = f"{where}: {message}" if where else message
        if hint:
            text = f"{text}\n  hint: {hint}"
        super().__init__(text)


class ConfigError(OpenseasonError):
    """A bad model, training or rails configuration."""


class CheckpointError(OpenseasonError):
    """A checkpoint or Hugging Face directory that cannot be loaded as asked."""


class DataError(OpenseasonError):
    """A malformed data row or file."""


def where(path, line: int | None = None, col: int | None = None) -> str:
    """Format a location as file[:line[:col]]."""
    text = str(path)
    if line is not None:
        text += f":{line}"
        if col is not None:
            text += f":{col}"
    return text
