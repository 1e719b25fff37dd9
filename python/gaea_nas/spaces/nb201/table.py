"""The NAS-Bench-201 accuracy table (final 200-epoch accuracies of all 15,625 cells), with the
look-up methods NAS-Bench-201 users know (``query_index_by_arch``, ``get_more_info``,
``find_best``, ``arch``, ``len``).

Data: ``nb201_accuracies.csv.gz`` (columns ``index, arch_str`` and the accuracies below),
found from the ``path`` argument, else the environment variable ``GAEA_NB201_TABLE``, else
``shared/data/nb201/nb201_accuracies.csv.gz`` beside the project checkout. The project
never commits the table. If ``path`` is not a CSV and the official ``nats_bench`` package is
installed, the NATS-Bench topology (``tss``) benchmark file at ``path`` is read instead.

Datasets and sets (what the table holds; each value is the seed mean, hp='200'):

=================  ==================================  ====================================
dataset            ``valid-accuracy`` (metric set)      ``test-accuracy`` (metric set)
=================  ==================================  ====================================
``cifar10-valid``  ``x-valid``                          not in the table (None)
``cifar10``        not in the table (None)              ``ori-test``
``cifar100``       ``x-valid``                          ``x-test``
``ImageNet16-120`` ``x-valid``                          ``x-test``
=================  ==================================  ====================================

The usual "CIFAR-10 valid / test" columns of NAS-Bench-201 result tables are
``get_more_info(i, 'cifar10-valid')['valid-accuracy']`` and
``get_more_info(i, 'cifar10')['test-accuracy']``.
"""
import csv
import gzip
import os
import zlib
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

from .arch import ArchLike, format_arch

__all__ = ["MAX_LINE_CHARS", "NB201Table", "NB201TableError", "NB201_DATASETS", "NUM_CELLS", "default_table_path"]

ENV_VAR = "GAEA_NB201_TABLE"
FILE_NAME = "nb201_accuracies.csv.gz"
NUM_CELLS = 15625
MAX_LINE_CHARS = 4096  # the longest official line is ~215 characters
# dataset -> {metric_on_set: csv column}
_COLUMNS: Dict[str, Dict[str, str]] = {
    "cifar10-valid": {"x-valid": "cifar10_valid"},
    "cifar10": {"ori-test": "cifar10_test"},
    "cifar100": {"x-valid": "cifar100_valid", "x-test": "cifar100_test"},
    "ImageNet16-120": {"x-valid": "imagenet16_valid", "x-test": "imagenet16_test"},
}
NB201_DATASETS = tuple(_COLUMNS)
_VALID_SET = {"cifar10-valid": "x-valid", "cifar10": None, "cifar100": "x-valid", "ImageNet16-120": "x-valid"}
_TEST_SET = {"cifar10-valid": None, "cifar10": "ori-test", "cifar100": "x-test", "ImageNet16-120": "x-test"}

_HOW_TO_GET = (
    "The NAS-Bench-201 table is not committed to this project. Put nb201_accuracies.csv.gz "
    "at ../shared/data/nb201/ beside the "
    f"project checkout, set the environment variable {ENV_VAR} to its path, or pass NB201Table(path=...)."
)


def default_table_path() -> Optional[Path]:
    """``../shared/data/nb201/nb201_accuracies.csv.gz`` relative to the checkout (or to the
    working directory), if it exists."""
    repo = Path(__file__).resolve().parents[4]  # python/gaea_nas/spaces/nb201/table.py
    for base in (repo, Path.cwd()):
        p = base.parent / "shared" / "data" / "nb201" / FILE_NAME
        if p.is_file():
            return p
    return None


def _check_dataset(dataset: str) -> str:
    if dataset not in _COLUMNS:
        raise ValueError(f"unknown NAS-Bench-201 dataset {dataset!r}; expected one of {list(NB201_DATASETS)}")
    return dataset


def _check_hp(hp) -> None:
    if str(hp) != "200":
        raise ValueError(f"this table holds only the 200-epoch schedule (hp='200'), got hp={hp!r}")


class NB201TableError(ValueError):
    """A malformed table file; the message (one line) names the file and the line / row."""

    def __init__(self, message: object = "") -> None:
        super().__init__(" ".join(str(message).split()))


class NB201Table:
    """Final accuracies (percent) of the 15,625 NAS-Bench-201 cells, indexed as in the
    benchmark. See the module docstring for the datasets and sets.

    A CSV table must have exactly :data:`NUM_CELLS` rows with ``index`` 0..15624 in order,
    distinct ``arch_str`` and accuracies in [0, 100]; ``allow_partial=True`` accepts fewer
    rows (still indexed 0..n-1, for small hand-made tables in tests). Lines are capped at
    :data:`MAX_LINE_CHARS` characters. Any fault (short rows, huge fields, non-numeric values,
    a truncated gzip, too many or too few rows) raises one :class:`NB201TableError` (a
    ``ValueError``) naming the file and line."""

    def __init__(self, path: Optional[Union[str, os.PathLike]] = None, *, allow_partial: bool = False):
        if path is None:
            path = os.environ.get(ENV_VAR) or default_table_path()
            if path is None:
                raise FileNotFoundError(f"NAS-Bench-201 table not found. {_HOW_TO_GET}")
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"NAS-Bench-201 table not found at {str(path)!r}. {_HOW_TO_GET}")
        self.path = path
        self.allow_partial = allow_partial
        self._api = None
        self._index: Dict[str, int] = {}
        name = path.name.lower()
        if path.is_file() and (name.endswith(".csv") or name.endswith(".csv.gz")):
            self._load_csv(path)
        else:
            self._load_nats(path)

    # -- loading ---------------------------------------------------------------------------
    def _load_csv(self, path: Path) -> None:
        needed = ["index", "arch_str"] + [c for d in _COLUMNS.values() for c in d.values()]
        rows = self._read_rows(path, needed)
        self._archs: List[str] = []
        self._values: Dict[str, List[float]] = {c: [] for c in needed[2:]}
        for line, r in rows:
            k = len(self._archs)
            where = f"{path}: line {line} (row {k})"
            if r["index"].strip() != str(k):
                raise NB201TableError(f"{where}: index {r['index'][:40]!r}, expected {k}; rows must be "
                                      "indexed 0, 1, 2, ... in order")
            arch = r["arch_str"]
            if not arch or arch in self._index:
                raise NB201TableError(f"{where}: {'empty' if not arch else 'duplicate'} arch_str")
            self._index[arch] = k
            self._archs.append(arch)
            for c in self._values:
                try:
                    v = float(r[c])
                except ValueError:
                    raise NB201TableError(f"{where}: column {c!r} is not a number: {r[c][:40]!r}") from None
                if not 0.0 <= v <= 100.0:  # also refuses nan and inf
                    raise NB201TableError(f"{where}: column {c!r} = {v!r} is not a percentage in [0, 100]")
                self._values[c].append(v)
        n = len(self._archs)
        if not self.allow_partial and n != NUM_CELLS:
            raise NB201TableError(f"{path}: {n} rows; a NAS-Bench-201 table has exactly {NUM_CELLS} (indices "
                                  f"0..{NUM_CELLS - 1})")
        if n == 0:
            raise NB201TableError(f"{path}: no rows")

    @staticmethod
    def _read_rows(path: Path, needed: List[str]) -> List[Tuple[int, Dict[str, str]]]:
        """``(line number, row)`` pairs; every line is read with a length cap
        (:data:`MAX_LINE_CHARS`), at most :data:`NUM_CELLS` rows are accepted, and any fault
        (short or long row, undecodable bytes, truncated gzip) raises :class:`NB201TableError`."""
        opener = gzip.open if path.name.lower().endswith(".gz") else open
        out: List[Tuple[int, Dict[str, str]]] = []
        line = 0
        try:
            with opener(path, "rt", newline="", encoding="utf-8") as f:
                header: Optional[List[str]] = None
                while True:
                    text = f.readline(MAX_LINE_CHARS + 1)
                    if not text:
                        break
                    line += 1
                    if len(text) > MAX_LINE_CHARS:
                        raise NB201TableError(f"{path}: line {line} is longer than {MAX_LINE_CHARS} characters")
                    text = text.rstrip("\r\n")
                    if header is None:
                        header = [h.strip() for h in text.split(",")]
                        missing = [c for c in needed if c not in header]
                        if missing:
                            raise NB201TableError(f"{str(path)!r} is not a NAS-Bench-201 table: missing columns {missing}")
                        continue
                    if not text:
                        continue
                    if len(out) >= NUM_CELLS:
                        raise NB201TableError(f"{path}: line {line}: more than {NUM_CELLS} rows")
                    fields = next(csv.reader([text]))
                    if len(fields) != len(header):
                        raise NB201TableError(f"{path}: line {line} (row {len(out)}) has {len(fields)} fields, "
                                              f"the header {len(header)}")
                    out.append((line, dict(zip(header, fields))))
                if header is None:
                    raise NB201TableError(f"{str(path)!r} is not a NAS-Bench-201 table: missing columns {needed}")
        except NB201TableError:
            raise
        except (OSError, EOFError, zlib.error, UnicodeDecodeError, csv.Error) as e:
            raise NB201TableError(f"{path}: line {line + 1}: unreadable ({type(e).__name__}: {e}); "
                                  "the file is truncated or corrupt") from e
        return out

    def _load_nats(self, path: Path) -> None:
        try:
            from nats_bench import create  # optional dependency
        except ImportError:
            raise FileNotFoundError(
                f"{str(path)!r} is not a .csv/.csv.gz table, and reading a NATS-Bench file needs the "
                f"'nats_bench' package, which is not installed. {_HOW_TO_GET}"
            ) from None
        self._api = create(str(path), "tss", fast_mode=True, verbose=False)

    # -- the NAS-Bench-201 API -------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._api) if self._api is not None else len(self._archs)

    def __repr__(self) -> str:
        return f"NB201Table({len(self)} cells from {str(self.path)!r})"

    def arch(self, index: int) -> str:
        """The arch string of cell ``index``."""
        if self._api is not None:
            return self._api.arch(index)
        if not 0 <= index < len(self._archs):
            raise IndexError(f"NAS-Bench-201 index {index} out of range [0, {len(self._archs)})")
        return self._archs[index]

    def query_index_by_arch(self, arch: ArchLike) -> int:
        """Index of a cell (arch string, 6 op names or node lists); -1 if unknown or malformed."""
        try:
            s = format_arch(arch)
        except (ValueError, TypeError):
            return -1
        if self._api is not None:
            return self._api.query_index_by_arch(s)
        return self._index.get(s, -1)

    def get_more_info(self, index: int, dataset: str, iepoch=None, hp="200", is_random: bool = False) -> Dict[str, Optional[float]]:
        """``{'valid-accuracy': ..., 'test-accuracy': ...}`` in percent (None where the table
        has no such number; see the module docstring). The table holds seed means, i.e.
        ``is_random=False``; ``iepoch`` must be None (the last epoch)."""
        _check_dataset(dataset)
        _check_hp(hp)
        if iepoch is not None:
            raise ValueError("this table holds only the final epoch; pass iepoch=None")
        if self._api is not None:
            info = self._api.get_more_info(index, dataset, hp=str(hp), is_random=False)
            return {"valid-accuracy": info.get("valid-accuracy"), "test-accuracy": info.get("test-accuracy")}
        if not 0 <= index < len(self._archs):
            raise IndexError(f"NAS-Bench-201 index {index} out of range [0, {len(self._archs)})")
        out: Dict[str, Optional[float]] = {}
        for key, sets in (("valid-accuracy", _VALID_SET), ("test-accuracy", _TEST_SET)):
            s = sets[dataset]
            out[key] = None if s is None else self._values[_COLUMNS[dataset][s]][index]
        return out

    def summary(self, arch: ArchLike) -> Optional[Dict[str, object]]:
        """The usual result-table row of a cell: ``{'index', 'arch', 'cifar10_valid',
        'cifar10_test', 'cifar100_valid', 'cifar100_test', 'imagenet16_valid',
        'imagenet16_test'}`` (percent), or None if ``arch`` is not a NAS-Bench-201 cell."""
        index = self.query_index_by_arch(arch)
        if index < 0:
            return None
        c10v = self.get_more_info(index, "cifar10-valid")["valid-accuracy"]
        c10 = self.get_more_info(index, "cifar10")["test-accuracy"]
        c100 = self.get_more_info(index, "cifar100")
        im = self.get_more_info(index, "ImageNet16-120")
        return {"index": index, "arch": self.arch(index), "cifar10_valid": c10v, "cifar10_test": c10,
                "cifar100_valid": c100["valid-accuracy"], "cifar100_test": c100["test-accuracy"],
                "imagenet16_valid": im["valid-accuracy"], "imagenet16_test": im["test-accuracy"]}

    def accuracies(self, dataset: str, metric_on_set: str) -> List[float]:
        """All 15,625 values of one (dataset, set) column, in index order."""
        return list(self._column(dataset, metric_on_set))

    def _column(self, dataset: str, metric_on_set: str) -> List[float]:
        _check_dataset(dataset)
        sets = _COLUMNS[dataset]
        if metric_on_set not in sets:
            raise ValueError(
                f"the table has no {metric_on_set!r} accuracies for {dataset!r}; available: {list(sets)}"
            )
        return self._values[sets[metric_on_set]]

    def find_best(self, dataset: str, metric_on_set: str, FLOP_max=None, Param_max=None, hp="200") -> Tuple[int, float]:
        """``(index, accuracy)`` of the best cell on ``dataset`` / ``metric_on_set`` (ties: the
        lowest index, as NAS-Bench-201's ``find_best``). Cost limits are not supported."""
        _check_dataset(dataset)
        _check_hp(hp)
        if FLOP_max is not None or Param_max is not None:
            raise ValueError("find_best: FLOP_max / Param_max need cost data, which this table does not hold")
        if self._api is not None:
            return self._api.find_best(dataset, metric_on_set, hp=str(hp))
        col = self._column(dataset, metric_on_set)
        best = max(range(len(col)), key=col.__getitem__)  # first maximum
        return best, col[best]
