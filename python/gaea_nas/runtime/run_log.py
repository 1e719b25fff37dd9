"""A run folder's human and machine logs: ``log.txt`` (lines also echoed to the console) and
``metrics.jsonl`` (one JSON record per finished epoch, rewritten atomically)."""
from pathlib import Path
from typing import Any, Callable, Dict, List

from .files import WriteError, write_jsonl

__all__ = ["MetricsLog", "RunLog"]


class RunLog:
    """Lines to the console (``echo``) and to ``run_dir/log.txt``; silent when not ``enabled``
    (the other ranks of a data-parallel run)."""

    def __init__(self, run_dir: Path, enabled: bool, echo: Callable[[str], None] = print):
        self.path = Path(run_dir) / "log.txt"
        self.enabled, self.echo = enabled, echo

    def __call__(self, line: str) -> None:
        if not self.enabled:
            return
        self.echo(line)
        try:
            with open(self.path, "a") as f:
                f.write(line + "\n")
        except OSError as e:
            raise WriteError(self.path, e) from e


class MetricsLog:
    """The per-epoch records of a run, kept in memory (and in checkpoints) and written to
    ``run_dir/metrics.jsonl`` after each epoch when ``enabled``."""

    FILE = "metrics.jsonl"

    def __init__(self, run_dir: Path, enabled: bool, records: List[Dict[str, Any]] = ()):
        self.path = Path(run_dir) / self.FILE
        self.enabled = enabled
        self.records: List[Dict[str, Any]] = list(records)

    def append(self, record: Dict[str, Any]) -> None:
        """Add one epoch's record and rewrite the file."""
        self.records.append(record)
        if self.enabled:
            write_jsonl(self.path, self.records)
