"""NB201Table (gaea_nas.spaces.nb201.table) against the CSV read independently with csv + gzip.

The table lives in ../shared/data/nb201/ beside the checkout (never committed), or where
GAEA_NB201_TABLE points; the tests that need it skip with a reason when it is absent (and fail
under CI, which always has it)."""
import csv
import gzip
import os
from pathlib import Path

import pytest

from conftest import shared_data
from gaea_nas.spaces.nb201 import format_arch, parse_arch
from gaea_nas.spaces.nb201.table import NB201Table


@pytest.fixture(scope="module")
def CSV():
    env = os.environ.get("GAEA_NB201_TABLE")
    return Path(env) if env else shared_data("nb201", "nb201_accuracies.csv.gz")


needs_table = pytest.mark.usefixtures("CSV")
# (dataset, metric_on_set) -> csv column
SETS = {
    ("cifar10-valid", "x-valid"): "cifar10_valid",
    ("cifar10", "ori-test"): "cifar10_test",
    ("cifar100", "x-valid"): "cifar100_valid",
    ("cifar100", "x-test"): "cifar100_test",
    ("ImageNet16-120", "x-valid"): "imagenet16_valid",
    ("ImageNet16-120", "x-test"): "imagenet16_test",
}


@pytest.fixture(scope="module")
def rows(CSV):
    with gzip.open(CSV, "rt", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def table(CSV):
    return NB201Table(CSV)


@needs_table
def test_len_arch_and_index_round_trip(table, rows):
    assert len(table) == len(rows) == 15625
    for r in rows[::7]:
        i = int(r["index"])
        assert table.arch(i) == r["arch_str"]
        assert table.query_index_by_arch(r["arch_str"]) == i
        assert table.query_index_by_arch(parse_arch(r["arch_str"])) == i  # op-list form too
    assert table.query_index_by_arch("|conv~0|") == -1
    assert table.query_index_by_arch("nonsense") == -1
    with pytest.raises(IndexError):
        table.arch(15625)


@needs_table
def test_get_more_info_matches_csv(table, rows):
    for r in rows[::97]:
        i = int(r["index"])
        assert table.get_more_info(i, "cifar10-valid") == {"valid-accuracy": float(r["cifar10_valid"]), "test-accuracy": None}
        assert table.get_more_info(i, "cifar10", hp="200") == {"valid-accuracy": None, "test-accuracy": float(r["cifar10_test"])}
        assert table.get_more_info(i, "cifar100", hp=200) == {
            "valid-accuracy": float(r["cifar100_valid"]),
            "test-accuracy": float(r["cifar100_test"]),
        }
        assert table.get_more_info(i, "ImageNet16-120") == {
            "valid-accuracy": float(r["imagenet16_valid"]),
            "test-accuracy": float(r["imagenet16_test"]),
        }
    # README's quoted values
    assert table.get_more_info(0, "cifar10-valid")["valid-accuracy"] == pytest.approx(81.98266665690103)
    assert table.get_more_info(1, "cifar10")["test-accuracy"] == pytest.approx(93.66)


@needs_table
def test_find_best_is_table_max(table, rows):
    for (dataset, metric), col in SETS.items():
        values = [float(r[col]) for r in rows]
        best = max(values)
        index, acc = table.find_best(dataset, metric)
        assert acc == best and values[index] == best and values.index(best) == index
    # the published NAS-Bench-201 optima
    assert table.find_best("cifar10-valid", "x-valid")[0] == 6111
    assert round(table.find_best("cifar10", "ori-test")[1], 2) == 94.37
    assert table.find_best("cifar100", "x-test")[0] == 9930
    assert table.find_best("ImageNet16-120", "x-test")[0] == 857


@needs_table
def test_bad_dataset_set_and_hp(table):
    with pytest.raises(ValueError, match="unknown NAS-Bench-201 dataset 'cifar-10'"):
        table.get_more_info(0, "cifar-10")
    with pytest.raises(ValueError, match="unknown NAS-Bench-201 dataset"):
        table.find_best("imagenet", "x-valid")
    with pytest.raises(ValueError, match="no 'x-valid' accuracies for 'cifar10'"):
        table.find_best("cifar10", "x-valid")
    with pytest.raises(ValueError, match="hp='200'"):
        table.get_more_info(0, "cifar10", hp="12")


def test_env_var_path(monkeypatch, CSV):
    monkeypatch.setenv("GAEA_NB201_TABLE", str(CSV))
    assert len(NB201Table()) == 15625


def test_missing_table_file(tmp_path, monkeypatch):
    missing = tmp_path / "nope.csv.gz"
    with pytest.raises(FileNotFoundError, match="GAEA_NB201_TABLE"):
        NB201Table(missing)
    monkeypatch.setenv("GAEA_NB201_TABLE", str(missing))
    with pytest.raises(FileNotFoundError, match="nope.csv.gz"):
        NB201Table()


def test_not_a_table(tmp_path):
    p = tmp_path / "x.csv"
    p.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="missing columns"):
        NB201Table(p)


def test_small_table_from_csv(tmp_path):
    """Works without the shared data: a two-row table in the same format."""
    p = tmp_path / "t.csv"
    cols = "index,arch_str,cifar10_valid,cifar10_test,cifar100_valid,cifar100_test,imagenet16_valid,imagenet16_test"
    a0 = format_arch(["nor_conv_3x3"] * 6)
    a1 = format_arch(["skip_connect"] * 6)
    p.write_text(f"{cols}\n0,{a0},90,93,70,71,40,41\n1,{a1},80,95,60,61,45,42\n")
    t = NB201Table(p, allow_partial=True)
    assert len(t) == 2 and t.query_index_by_arch(a1) == 1
    assert t.query_index_by_arch(format_arch(["none"] * 6)) == -1
    assert t.find_best("cifar10", "ori-test") == (1, 95.0)
    assert t.find_best("cifar10-valid", "x-valid") == (0, 90.0)


def test_no_table_anywhere(monkeypatch):
    from gaea_nas.spaces.nb201 import table as nb201_table

    monkeypatch.delenv("GAEA_NB201_TABLE", raising=False)
    monkeypatch.setattr(nb201_table, "default_table_path", lambda: None)
    with pytest.raises(FileNotFoundError, match="not committed.*GAEA_NB201_TABLE"):
        NB201Table()


# -- malformed files: one ValueError (NB201TableError) naming the file and the line ----------
from gaea_nas.spaces.nb201.table import NUM_CELLS, NB201TableError  # noqa: E402

HEADER = "index,arch_str,cifar10_valid,cifar10_test,cifar100_valid,cifar100_test,imagenet16_valid,imagenet16_test"


def _rows(n):
    return [f"{k},|nor_conv_3x3~0|+|skip_connect~{k}|,90,93,70,71,40,41.5" for k in range(n)]


def _write(path, lines, gz=None):
    text = "\n".join([HEADER, *lines]) + "\n"
    if gz if gz is not None else path.name.endswith(".gz"):
        with gzip.open(path, "wt", newline="") as f:
            f.write(text)
    else:
        path.write_text(text)
    return path


def test_full_table_must_have_every_cell(tmp_path):
    small = _write(tmp_path / "ten.csv", _rows(10))
    with pytest.raises(NB201TableError, match=rf"ten.csv: 10 rows.*exactly {NUM_CELLS}"):
        NB201Table(small)
    assert len(NB201Table(small, allow_partial=True)) == 10
    full = _write(tmp_path / "full.csv.gz", _rows(NUM_CELLS))
    t = NB201Table(full)
    assert len(t) == NUM_CELLS and t.get_more_info(NUM_CELLS - 1, "ImageNet16-120")["test-accuracy"] == 41.5
    with pytest.raises(NB201TableError, match=rf"line {NUM_CELLS + 2}: more than {NUM_CELLS} rows"):
        NB201Table(_write(tmp_path / "extra.csv.gz", _rows(NUM_CELLS + 1)), allow_partial=True)


def _short_row(rows):
    rows[2] = "2,|x~0|,90,93"
    return rows, "line 4 .*has 4 fields"


def _huge_field(rows):
    rows[1] = "1,|" + "a" * 2_000_000 + "|,90,93,70,71,40,41"
    return rows, "line 3 is longer than"


def _not_a_number(rows):
    rows[3] = rows[3].replace(",70,", ",seventy,")
    return rows, r"line 5 \(row 3\): column 'cifar100_valid' is not a number"


def _nan(rows):
    rows[0] = rows[0].replace(",90,", ",nan,")
    return rows, r"line 2 \(row 0\): column 'cifar10_valid' = nan"


def _index_gap(rows):
    del rows[4]
    return rows, r"line 6 \(row 4\): index '5', expected 4"


def _duplicate_arch(rows):
    rows[5] = rows[5].replace("~5|", "~4|")
    return rows, r"line 7 \(row 5\): duplicate arch_str"


@pytest.mark.parametrize("spoil", [_short_row, _huge_field, _not_a_number, _nan, _index_gap, _duplicate_arch])
@pytest.mark.parametrize("name", ["t.csv", "t.csv.gz"])
def test_malformed_rows_name_file_and_line(tmp_path, spoil, name):
    rows, pattern = spoil(_rows(8))
    p = _write(tmp_path / name, rows)
    with pytest.raises(NB201TableError, match=rf"{name}.*{pattern}") as e:
        NB201Table(p, allow_partial=True)
    assert isinstance(e.value, ValueError) and "\n" not in str(e.value)


@pytest.mark.parametrize("cut", [0.3, 0.7, 0.99])
def test_truncated_or_binary_gzip(tmp_path, cut):
    data = _write(tmp_path / "full.csv.gz", _rows(2000)).read_bytes()
    p = tmp_path / "cut.csv.gz"
    p.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(NB201TableError, match=r"cut.csv.gz: line \d+: unreadable .*truncated or corrupt"):
        NB201Table(p, allow_partial=True)
    p.write_bytes(gzip.compress(bytes(range(256)) * 10))
    with pytest.raises(NB201TableError, match="cut.csv.gz"):
        NB201Table(p, allow_partial=True)
