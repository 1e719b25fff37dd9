"""The one exception type the data pipeline raises for user-facing problems."""
from __future__ import annotations

__all__ = ["DatasetError"]


class DatasetError(RuntimeError):
    """A dataset is missing, corrupt, of an unknown kind or malformed; the message says which
    file and what to do (the CLI prints it as one line and exits with status 1)."""
