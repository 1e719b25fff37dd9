"""Does a short training run rank NAS-Bench-201 cells as the benchmark's 200-epoch training does?

Picks ``--num-archs`` connected NB201 cells whose CIFAR-10 test accuracies in the table span its
range (targets evenly spaced from the lowest to the highest accuracy of the connected cells;
for each, the closest cell not yet chosen, ties to the lower index), trains each with
``gaea train ARCH --protocol nb201`` at one budget (same seed, epochs, images, width and depth
for all), and reports Spearman's rank correlation between the test top-1 each run reached and
the table's accuracy. Results go to ``benchmarks/results/nb201-rank-correlation-<device>-<date>-<commit>.{json,md}``
with the command, device, commit and date.

    python benchmarks/nb201_rank_correlation.py                      # the default CPU budget
    python benchmarks/nb201_rank_correlation.py --dry-run            # the cells and commands only

The default budget (7 cells; C=16, N=1, 3 epochs of 3,000 training images, 1,000 test images,
batch 128, seed 0) is sized for an estimated 15-20 minutes on 2 otherwise idle CPU cores. Run folders
go to ``--runs-dir``; a cell whose run folder already holds a ``result.json`` of the same budget
is not trained again, so an interrupted run can be restarted with the same command.

The table comes from ``--table``, else ``$GAEA_NB201_TABLE``, else
``../shared/data/nb201/nb201_accuracies.csv.gz`` beside the checkout; the dataset from
``--dataset`` (default: ``../shared/data/cifar10/cifar10-jpeg.tar.gz`` beside the checkout when
present, else ``cifar10``).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATASET = ROOT.parent / "shared" / "data" / "cifar10" / "cifar10-jpeg.tar.gz"


def choose_cells(accuracies: Sequence[float], count: int, connected: Sequence[bool]) -> List[int]:
    """Indices of ``count`` connected cells whose accuracies are closest to ``count`` targets
    evenly spaced over the connected cells' accuracy range (each cell once; ties: lower index),
    in increasing order of accuracy."""
    if count < 2:
        raise ValueError(f"--num-archs: need at least 2 cells for a rank correlation, got {count}")
    acc = np.asarray(accuracies, dtype=np.float64)
    pool = np.flatnonzero(np.asarray(connected, dtype=bool))
    if len(pool) < count:
        raise ValueError(f"only {len(pool)} connected cells in the table, {count} asked for")
    lo, hi = acc[pool].min(), acc[pool].max()
    chosen: List[int] = []
    free = np.ones(len(acc), dtype=bool)
    for target in np.linspace(lo, hi, count):
        candidates = pool[free[pool]]
        dist = np.abs(acc[candidates] - target)
        best = candidates[np.flatnonzero(dist == dist.min())[0]]  # pool is sorted: lowest index first
        chosen.append(int(best))
        free[best] = False
    return sorted(chosen, key=lambda i: (acc[i], i))


def rank(values: Sequence[float]) -> np.ndarray:
    """Ranks 1..n of ``values``, ties given the mean of their ranks (as Spearman's rho needs)."""
    v = np.asarray(values, dtype=np.float64)
    order = np.argsort(v, kind="mergesort")
    ranks = np.empty(len(v), dtype=np.float64)
    sorted_v = v[order]
    i = 0
    while i < len(v):
        j = i
        while j + 1 < len(v) and sorted_v[j + 1] == sorted_v[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> Optional[float]:
    """Spearman's rank correlation: the Pearson correlation of the (tie-averaged) ranks; None
    when either side is constant."""
    if len(x) != len(y) or len(x) < 2:
        raise ValueError(f"need two equally long sequences of at least 2 values, got {len(x)} and {len(y)}")
    rx, ry = rank(x), rank(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = np.sqrt((rx * rx).sum() * (ry * ry).sum())
    return None if denom == 0 else float((rx * ry).sum() / denom)


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _device_text(device: str) -> str:
    if device.startswith("cuda"):
        import torch
        if torch.cuda.is_available():
            return torch.cuda.get_device_name(torch.device(device).index or 0)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} CPUs"


def train_command(args, arch: str, out: Path) -> List[str]:
    """The ``gaea train`` command line of one cell."""
    cmd = shlex.split(args.gaea) + [
        "train", arch, "--protocol", "nb201", "--dataset", args.dataset, "--epochs", str(args.epochs),
        "--batch-size", str(args.batch_size), "--channels", str(args.channels), "--cells", str(args.cells),
        "--train-images", str(args.train_images), "--test-images", str(args.test_images),
        "--seed", str(args.seed), "--out", str(out), "--device", args.device, "--no-progress"]
    if args.data:
        cmd += ["--data", args.data]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    return cmd


def _budget_matches(run_dir: Path, result: Dict, args) -> bool:
    """Whether a finished run was trained at this budget (its result.json and config.json)."""
    try:
        config = json.loads((run_dir / "config.json").read_text()).get("config", {})
    except (OSError, ValueError):
        config = {}
    want = {"epochs": args.epochs, "seed": args.seed, "train_images": args.train_images,
            "test_images": args.test_images, "channels": args.channels, "cells": args.cells,
            "batch_size": args.batch_size}
    return all(result.get(k, config.get(k, v)) == v for k, v in want.items())


def run_cell(args, arch: str, out: Path) -> Tuple[Dict, float, bool]:
    """Train one cell (or reuse its finished run of the same budget): ``(result, seconds, reused)``."""
    result_path = out / "result.json"
    if result_path.is_file():
        result = json.loads(result_path.read_text())
        if not _budget_matches(out, result, args):
            raise SystemExit(f"{result_path}: a run of another budget; use another --runs-dir")
        return result, float(result.get("wall_time_s", 0.0)), True
    cmd = train_command(args, arch, out)
    print("$ " + shlex.join(cmd), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"gaea train exited with status {proc.returncode} for {arch}; its run folder: {out}")
    return json.loads(result_path.read_text()), seconds, False


def _markdown(report: Dict) -> str:
    b = report["budget"]
    rho = report["spearman"]
    lines = [
        f"# NAS-Bench-201 rank correlation: {report['device']}",
        "",
        f"Command: `{report['command']}`  ",
        f"Commit {report['commit']}, {report['date']}; total {report['total_seconds'] / 60:.1f} min.",
        "",
        f"Budget per cell: `gaea train ARCH --protocol nb201`, C={b['channels']}, N={b['cells']}, {b['epochs']} epochs, "
        f"{b['train_images']} training / {b['test_images']} test images, batch {b['batch_size']}, seed {b['seed']}, "
        f"dataset {b['dataset']}.",
        "",
        "| table index | cell | table CIFAR-10 test % | reached test top-1 % (final) | best % | minutes |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for c in report["cells"]:
        lines.append(f"| {c['index']} | `{c['arch']}` | {c['table_test']:.2f} | {c['test_top1']:.2f} | "
                     f"{c['best_test_top1']:.2f} | {c['seconds'] / 60:.1f} |")
    lines += ["", f"Spearman's rank correlation (final test top-1 vs the table, n={len(report['cells'])}): "
              + ("undefined (constant ranks)" if rho is None else f"**{rho:.3f}**"), ""]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-archs", type=int, default=7, help="cells to train (6-8 is the intended range)")
    p.add_argument("--table", help="NAS-Bench-201 table (default: $GAEA_NB201_TABLE, then ../shared beside the checkout)")
    p.add_argument("--dataset", default=str(DEFAULT_DATASET) if DEFAULT_DATASET.is_file() else "cifar10")
    p.add_argument("--data", help="folder of the named datasets (gaea train --data)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--train-images", type=int, default=3000)
    p.add_argument("--test-images", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--channels", type=int, default=16)
    p.add_argument("--cells", type=int, default=1, help="NB201 cells per stage (N)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, help="gaea train --threads")
    p.add_argument("--gaea", default=f"{shlex.quote(sys.executable)} -m gaea_nas", help="how to run the gaea command")
    p.add_argument("--runs-dir", type=Path, default=ROOT / "runs" / "nb201-rank-correlation")
    p.add_argument("--results-dir", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--dry-run", action="store_true", help="print the chosen cells and commands, train nothing")
    args = p.parse_args(argv)

    from gaea_nas.spaces.nb201 import NB201Table, is_valid_arch

    table = NB201Table(args.table)
    archs = [table.arch(i) for i in range(len(table))]
    accuracies = table.accuracies("cifar10", "ori-test")
    chosen = choose_cells(accuracies, args.num_archs, [is_valid_arch(a) for a in archs])
    command = shlex.join([sys.executable, *sys.argv]) if argv is None else shlex.join(["nb201_rank_correlation.py", *argv])
    if args.dry_run:
        for i in chosen:
            print(f"# index {i}: table CIFAR-10 test {accuracies[i]:.2f}%")
            print(shlex.join(train_command(args, archs[i], args.runs_dir / f"cell-{i}")))
        return 0
    t0 = time.perf_counter()
    cells = []
    for i in chosen:
        result, seconds, reused = run_cell(args, archs[i], args.runs_dir / f"cell-{i}")
        cells.append({"index": i, "arch": archs[i], "table_test": accuracies[i],
                      "test_top1": 100 * result["test_top1"], "best_test_top1": 100 * result["best_test_top1"],
                      "seconds": seconds, "reused": reused, "run": str(args.runs_dir / f"cell-{i}")})
        print(f"index {i}: table {accuracies[i]:.2f}%, reached {100 * result['test_top1']:.2f}%", flush=True)
    rho = spearman([c["test_top1"] for c in cells], [c["table_test"] for c in cells])
    now = datetime.datetime.now(datetime.timezone.utc)
    device_kind = "cuda" if args.device.startswith("cuda") else "cpu"
    report = {
        "command": command, "device": _device_text(args.device), "commit": _commit(),
        "date": now.strftime("%Y-%m-%d %H:%M UTC"), "total_seconds": time.perf_counter() - t0,
        "budget": {k: getattr(args, k) for k in ("epochs", "train_images", "test_images", "batch_size", "channels",
                                                 "cells", "seed", "dataset", "device")},
        "table": str(table.path), "cells": cells, "spearman": rho,
    }
    args.results_dir.mkdir(parents=True, exist_ok=True)
    stem = args.results_dir / f"nb201-rank-correlation-{device_kind}-{now:%Y-%m-%d}-{report['commit']}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    stem.with_suffix(".md").write_text(_markdown(report))
    print(_markdown(report))
    print(f"wrote {stem}.json and {stem}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
