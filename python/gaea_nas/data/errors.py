"""The one exception type the data pipeline raises for user-facing problems."""
from __future__ import annotations

__all__ = ["DatasetError", "one_line"]


def one_line(text: object, limit: int = 2000) -> str:
    """``text`` on one line (runs of whitespace, newlines included, become one space), cut
    to ``limit`` characters."""
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[: limit - 3] + "..."


class DatasetError(RuntimeError):
    """A dataset is missing, corrupt, over a size cap, of an unknown kind or malformed; the
    message (always a single line) says which file and what to do (the CLI prints it as one
    line and exits with status 1)."""

    def __init__(self, message: object = "") -> None:
        super().__init__(one_line(message))
