"""``gaea report RUN_DIR...``: one table of many run folders.

* Training runs (``result.json`` with a ``protocol``) are grouped by (cell, protocol, dataset,
  epochs), runs whose ``config.json`` differ in anything else but the seed (width, subsets, ...)
  apart, labelled by those settings; each group gets the mean ± sample standard deviation (and n) of the final-epoch and
  of the best-epoch test top-1 accuracy, separately, the final top-5 (ImageNet), the parameter
  count (auxiliary head excluded) and the published figure of the same network
  (:mod:`gaea_nas.published`; for NAS-Bench-201 cells, the benchmark table's 200-epoch
  accuracy).
* Search runs (``result.json`` with a ``method``) are grouped by (space, method, objective,
  dataset, epochs): the number of distinct cells found and, when the results hold them, the
  NAS-Bench-201 test accuracies of those cells, mean ± std.
* Folders without ``result.json`` (running, stopped or failed) are listed as incomplete.

A ``result.json`` or ``config.json`` that is not valid JSON raises :class:`ReportError`,
whose one-line message names the file.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .published import benchmark_of, dataset_family, network_name, published_result
from .spaces.nb201 import NB201Table

__all__ = ["ReportError", "RunRecord", "add_report_parser", "build_report", "format_markdown", "mean_std",
           "read_run", "run_report_command"]

_NB201_COLUMNS = {"cifar10": "cifar10_test", "cifar100": "cifar100_test", "imagenet16-120": "imagenet16_test"}
# config.json fields that neither tell runs of one experiment apart nor are already in the group key
_NOT_VARIANT = {"seed", "arch", "arch_name", "space", "network", "protocol", "dataset", "epochs"}


class ReportError(RuntimeError):
    """A run folder or one of its files cannot be read; the message (one line) names it."""


@dataclass
class RunRecord:
    """One run folder: ``kind`` is ``train``, ``search`` or ``incomplete``."""

    run_dir: str
    kind: str
    result: Dict[str, Any] = field(default_factory=dict)
    config: Dict[str, Any] = field(default_factory=dict)
    note: str = ""


def _read_json(path: Path) -> Dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as e:
        raise ReportError(f"{path}: cannot read ({e.strerror or e})") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise ReportError(f"{path}: not valid JSON ({' '.join(str(e).split())})") from None
    if not isinstance(data, dict):
        raise ReportError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _epochs_recorded(run_dir: Path) -> int:
    try:
        with open(run_dir / "metrics.jsonl", encoding="utf-8", errors="replace") as f:
            return sum(1 for line in f if line.strip())
    except OSError:
        return 0


def read_run(run_dir) -> RunRecord:
    """The :class:`RunRecord` of ``run_dir`` (``incomplete`` when it has no ``result.json``)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ReportError(f"{run_dir}: no such run folder")
    config = _read_json(run_dir / "config.json") if (run_dir / "config.json").is_file() else {}
    result_path = run_dir / "result.json"
    if not result_path.is_file():
        done = _epochs_recorded(run_dir)
        state = "running, stopped or failed" + (f"; {done} epochs recorded" if done else "; no epoch recorded")
        return RunRecord(str(run_dir), "incomplete", config=config, note=f"no result.json ({state})")
    result = _read_json(result_path)
    if "protocol" in result:
        for key in ("arch", "test_top1", "best_test_top1", "epochs"):
            if key not in result:
                raise ReportError(f"{result_path}: a training result without {key!r}")
        return RunRecord(str(run_dir), "train", result, config)
    if "method" in result:
        if "arch" not in result:
            raise ReportError(f"{result_path}: a search result without 'arch'")
        return RunRecord(str(run_dir), "search", result, config)
    raise ReportError(f"{result_path}: neither a training result (no 'protocol') nor a search result (no 'method')")


def mean_std(values: Sequence[float]) -> Dict[str, Any]:
    """``{'mean', 'std', 'n'}``: the sample standard deviation (n - 1), None for one value."""
    n = len(values)
    if n == 0:
        return {"mean": None, "std": None, "n": 0}
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return {"mean": mean, "std": std, "n": n}


def _dataset(run: RunRecord) -> str:
    ds = run.result.get("dataset") or run.config.get("config", {}).get("dataset") or "?"
    return str(ds)


def _percent(values) -> List[float]:
    return [100.0 * float(v) for v in values if v is not None]


def _nb201_table(path: Optional[str]):
    try:
        return NB201Table(path), None
    except (FileNotFoundError, ValueError, OSError) as e:
        return None, str(e).split(". ")[0]


def _variant(run: RunRecord) -> str:
    """The run's config.json settings other than the seed and the group key, as sorted JSON."""
    config = run.config.get("config")
    if not isinstance(config, dict):
        return "{}"
    return json.dumps({k: v for k, v in config.items() if k not in _NOT_VARIANT}, sort_keys=True, default=str)


def _variant_labels(variants: Sequence[str]) -> List[str]:
    """For the variants of one (cell, protocol, dataset, epochs): the settings in which they
    differ, e.g. ``channels=8, train_images=1000`` (empty when there is one variant)."""
    if len(variants) < 2:
        return [""] * len(variants)
    dicts = [json.loads(v) for v in variants]
    keys = sorted({k for d in dicts for k in d if len({json.dumps(x.get(k), sort_keys=True) for x in dicts}) > 1})
    return [", ".join(f"{k}={json.dumps(d.get(k))}" for k in keys) for d in dicts]


def _train_group(key: Tuple, runs: List[RunRecord], table, variant: str) -> Dict[str, Any]:
    arch, protocol, dataset, epochs, _ = key
    first = runs[0].result
    name = network_name(arch, first.get("arch_name")) if first.get("space", "darts") == "darts" else None
    group: Dict[str, Any] = {
        "arch": arch, "network": name, "protocol": protocol, "dataset": dataset, "epochs": epochs,
        "variant": variant, "runs": [r.run_dir for r in runs], "seeds": [r.result.get("seed") for r in runs],
        "final_top1": mean_std(_percent(r.result["test_top1"] for r in runs)),
        "best_top1": mean_std(_percent(r.result["best_test_top1"] for r in runs)),
        "final_top5": mean_std(_percent(r.result.get("test_top5") for r in runs)),
        "best_epochs": [r.result.get("best_epoch") for r in runs],
        "params": mean_std([float(r.result["params"]) for r in runs if r.result.get("params") is not None]),
        "wall_time_s": mean_std([float(r.result["wall_time_s"]) for r in runs if r.result.get("wall_time_s") is not None]),
        "devices": sorted({str(r.result.get("device")) for r in runs}),
        "published": None,
    }
    pub = published_result(name, benchmark_of(protocol, dataset))
    if pub is not None:
        group["published"] = {"top1": pub.top1, "top1_std": pub.top1_error_std, "top5": pub.top5,
                              "params_m": pub.params_m, "reported": pub.reported, "source": pub.source,
                              "note": pub.note}
    elif protocol == "nb201" and table is not None and dataset_family(dataset) in _NB201_COLUMNS:
        row = table.summary(arch)
        if row is not None:
            group["published"] = {"top1": row[_NB201_COLUMNS[dataset_family(dataset)]], "top1_std": None, "top5": None,
                                  "params_m": None, "reported": "200 epochs, mean over seeds",
                                  "source": "NAS-Bench-201 table", "note": f"index {row['index']}"}
    return group


def _search_group(key: Tuple, runs: List[RunRecord]) -> Dict[str, Any]:
    space, method, objective, dataset, epochs = key
    cells: Dict[str, int] = {}
    for r in runs:
        cells[r.result["arch"]] = cells.get(r.result["arch"], 0) + 1
    nb = [r.result.get("nb201") for r in runs]
    group: Dict[str, Any] = {
        "space": space, "method": method, "objective": objective, "dataset": dataset, "epochs": epochs,
        "runs": [r.run_dir for r in runs], "seeds": [r.result.get("seed") for r in runs],
        "distinct_cells": len(cells), "cells": dict(sorted(cells.items(), key=lambda kv: -kv[1])),
        "nb201": None,
    }
    if any(nb):
        group["nb201"] = {col: mean_std([n[col] for n in nb if n and n.get(col) is not None])
                          for col in ("cifar10_test", "cifar100_test", "imagenet16_test")}
    return group


def build_report(run_dirs: Sequence, table_path: Optional[str] = None) -> Dict[str, Any]:
    """``{'train': [groups], 'search': [groups], 'incomplete': [runs], 'notes': [...]}`` of the
    run folders (each group lists its run folders; accuracies in percent)."""
    runs = [read_run(d) for d in run_dirs]
    train: Dict[Tuple, List[RunRecord]] = {}
    search: Dict[Tuple, List[RunRecord]] = {}
    for r in runs:
        res = r.result
        if r.kind == "train":
            train.setdefault((res["arch"], res["protocol"], _dataset(r), res["epochs"], _variant(r)), []).append(r)
        elif r.kind == "search":
            key = (res.get("space"), res["method"], res.get("objective"), _dataset(r), res.get("epochs"))
            search.setdefault(key, []).append(r)
    notes: List[str] = []
    table = None
    if any(k[1] == "nb201" for k in train):
        table, why = _nb201_table(table_path)
        if table is None:
            notes.append(f"NAS-Bench-201 table not loaded, so no table accuracy for nb201 cells: {why}")
    labels: Dict[Tuple, str] = {}
    for base in {k[:4] for k in train}:
        keys = [k for k in train if k[:4] == base]
        labels.update(zip(keys, _variant_labels([k[4] for k in keys])))
    return {
        "train": [_train_group(k, v, table, labels[k]) for k, v in train.items()],
        "search": [_search_group(k, v) for k, v in search.items()],
        "incomplete": [{"run": r.run_dir, "note": r.note} for r in runs if r.kind == "incomplete"],
        "notes": notes,
    }


# ---------------------------------------------------------------------------------------------
# Markdown


def _fmt(stat: Dict[str, Any], digits: int = 2, scale: float = 1.0) -> str:
    if stat["n"] == 0:
        return "—"
    text = f"{stat['mean'] * scale:.{digits}f}"
    if stat["std"] is not None:
        text += f" ± {stat['std'] * scale:.{digits}f}"
    return f"{text} (n={stat['n']})"


def _short_arch(group: Dict[str, Any]) -> str:
    if group["network"]:
        return group["network"]
    arch = group["arch"]
    if arch.startswith("|"):
        return f"`{arch}`"
    return f"genotype {hashlib.sha256(arch.encode()).hexdigest()[:8]}"


def _params_m(stat: Dict[str, Any]) -> str:
    return "—" if stat["n"] == 0 else f"{stat['mean'] / 1e6:.3f}"


def _published_cell(pub: Optional[Dict[str, Any]]) -> str:
    if pub is None or pub["top1"] is None:
        return "—"
    text = f"{pub['top1']:.2f}" + (f" ± {pub['top1_std']:.2f}" if pub["top1_std"] is not None else "")
    if pub["top5"] is not None:
        text += f" / top-5 {pub['top5']:.2f}"
    return text + (f" ({pub['reported']})" if pub["reported"] else "")


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def format_markdown(report: Dict[str, Any]) -> str:
    """The report as Markdown tables (accuracies in percent)."""
    out: List[str] = []
    if report["train"]:
        out += ["## Training runs", "",
                _row(["network", "protocol", "dataset", "epochs", "settings", "final top-1 %", "best top-1 %",
                      "final top-5 %", "params (M)", "published top-1 %", "published params (M)", "source"]),
                _row(["---"] * 12)]
        for g in report["train"]:
            pub = g["published"]
            out.append(_row([
                _short_arch(g), g["protocol"], g["dataset"], g["epochs"], g["variant"] or "—",
                _fmt(g["final_top1"]), _fmt(g["best_top1"]), _fmt(g["final_top5"]), _params_m(g["params"]),
                _published_cell(pub), "—" if not pub or pub["params_m"] is None else f"{pub['params_m']:.1f}",
                "—" if not pub else pub["source"]]))
        out.append("")
    if report["search"]:
        out += ["## Search runs", "",
                _row(["space", "method", "objective", "dataset", "epochs", "runs", "distinct cells",
                      "NB201 CIFAR-10 test %", "NB201 CIFAR-100 test %", "NB201 ImageNet16-120 test %"]),
                _row(["---"] * 10)]
        for g in report["search"]:
            nb = g["nb201"]
            out.append(_row([g["space"], g["method"], g["objective"], g["dataset"], g["epochs"], len(g["runs"]),
                             g["distinct_cells"], *(_fmt(nb[c]) if nb else "—"
                                                    for c in ("cifar10_test", "cifar100_test", "imagenet16_test"))]))
        out.append("")
    if report["incomplete"]:
        out += ["## Incomplete runs", "", _row(["run", "state"]), _row(["---"] * 2)]
        out += [_row([r["run"], r["note"]]) for r in report["incomplete"]]
        out.append("")
    out += [f"Note: {n}" for n in report["notes"]]
    if not out:
        out.append("no runs")
    return "\n".join(out).rstrip() + "\n"


# ---------------------------------------------------------------------------------------------
# command line


def add_report_parser(subparsers) -> None:
    """Add the ``report`` command to the ``gaea`` sub-parsers."""
    p = subparsers.add_parser("report", help="a table of training and search run folders",
                              description="Group training runs by (cell, protocol, dataset, epochs) and print "
                                          "mean ± std of their final and best test accuracy beside the published "
                                          "figure; summarise search runs; list unfinished runs.")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--json", action="store_true", help="print JSON instead of Markdown")
    p.add_argument("--table", metavar="PATH", help="NAS-Bench-201 table (default: $GAEA_NB201_TABLE or "
                                                     "../shared/data/nb201/nb201_accuracies.csv.gz)")


def run_report_command(args) -> int:
    """``gaea report``: print the report; 1 with a one-line error naming an unreadable file."""
    import sys
    try:
        report = build_report(args.run_dirs, args.table)
    except ReportError as e:
        print(f"gaea: error: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_markdown(report), end="")
    return 0
