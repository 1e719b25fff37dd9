"""``gaea plot RUN_DIR``: PNG figures of a search or a training run from its ``metrics.jsonl``
(and a search's ``result.json``).

A search run gets:

- ``arch_weights.png``: the weight of every op on every edge, per epoch (one panel per edge,
  per cell type).
- ``entropy.png``: mean entropy of the per-edge op distributions, per epoch.
- ``accuracy.png``: train and search accuracy per epoch and, on NAS-Bench-201, the benchmark
  CIFAR-10 test accuracy of the cell derived at each epoch.
- ``cell.png``: the final cell as a graph (edges labelled with their ops).

A training run (``gaea train``; records with ``test_top1``) gets:

- ``loss.png``: train and test loss per epoch;
- ``accuracy.png``: train accuracy and test top-1 (top-5 and the EMA model's top-1 when
  recorded) per epoch;
- ``schedule.png``: the learning rate and the drop-path probability per epoch.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

__all__ = ["RunDataError", "plot_run"]


class RunDataError(RuntimeError):
    """The run folder has no (readable) metrics to plot."""


def _read_run(run_dir: Path) -> Tuple[List[Dict[str, Any]], Optional[Dict[str, Any]]]:
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no such run folder")
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise RunDataError(f"{path}: missing (the run has not finished an epoch yet)")
    metrics = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    metrics.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise RunDataError(f"{path}:{n}: not JSON ({e})") from None
    if not metrics:
        raise RunDataError(f"{path}: no epochs recorded")
    if _is_training(metrics):
        keys, kind = _TRAINING_KEYS, "training"
    else:
        keys, kind = ("epoch", "arch", "arch_weights", "entropy"), "search"
    for key in keys:
        if key not in metrics[0]:
            raise RunDataError(f"{path}: records lack {key!r}; not a gaea {kind} run")
    result = None
    if (run_dir / "result.json").is_file():
        with open(run_dir / "result.json") as f:
            result = json.load(f)
    return metrics, result


_TRAINING_KEYS = ("epoch", "lr", "train_loss", "train_acc", "test_loss", "test_top1")


def _is_training(metrics) -> bool:
    return isinstance(metrics[0], dict) and "test_top1" in metrics[0]


def _plot_training(plt, metrics, paths: Sequence[Path]) -> None:
    """``loss.png``, ``accuracy.png`` and ``schedule.png`` of a training run: each figure is a
    list of panels, each panel (y label, scale, [(metric key, legend label), ...])."""
    epochs = [m["epoch"] for m in metrics]
    figures = [
        ("loss", [("loss", 1.0, [("train_loss", "train"), ("test_loss", "test")])]),
        ("accuracy", [("accuracy (%)", 100.0, [("train_acc", "train (augmented batches)"), ("test_top1", "test top-1"),
                                              ("test_top5", "test top-5"), ("ema_test_top1", "EMA test top-1")])]),
        ("schedule", [("learning rate", 1.0, [("lr", "learning rate")]),
                      ("drop-path probability", 1.0, [("drop_path_prob", "drop path")])]),
    ]
    for path, (title, panels) in zip(paths, figures):
        fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.4), squeeze=False)
        for ax, (ylabel, scale, curves) in zip(axes[0], panels):
            for key, label in curves:
                pts = [(e, scale * m[key]) for e, m in zip(epochs, metrics) if m.get(key) is not None]
                if pts:
                    ax.plot(*zip(*pts), marker="o", ms=2, label=label)
            ax.set_xlabel("epoch")
            ax.set_ylabel(ylabel)
            if ax.lines:
                ax.legend(fontsize=8)
        fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)


def _plot_arch_weights(plt, metrics, ops: Sequence[str], path: Path) -> None:
    cells = [c for c in ("normal", "reduce") if c in metrics[0]["arch_weights"]]
    epochs = [m["epoch"] for m in metrics]
    num_edges = len(metrics[0]["arch_weights"][cells[0]])
    cols = min(num_edges, 7)
    rows_per_cell = -(-num_edges // cols)
    fig, axes = plt.subplots(rows_per_cell * len(cells), cols, figsize=(2.6 * cols, 2.2 * rows_per_cell * len(cells)),
                             squeeze=False, sharex=True, sharey=True)
    for ci, cell in enumerate(cells):
        for e in range(num_edges):
            ax = axes[ci * rows_per_cell + e // cols][e % cols]
            for o, name in enumerate(ops):
                ax.plot(epochs, [m["arch_weights"][cell][e][o] for m in metrics], label=name, lw=1.4)
            ax.set_title(f"{cell} edge {e}", fontsize=8)
            ax.set_ylim(0, 1)
            ax.tick_params(labelsize=7)
        for e in range(num_edges, rows_per_cell * cols):
            axes[ci * rows_per_cell + e // cols][e % cols].axis("off")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(ops), fontsize=8)
    fig.supxlabel("epoch", fontsize=9)
    fig.supylabel("op weight", fontsize=9)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_entropy(plt, metrics, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5, 3.4))
    epochs = [m["epoch"] for m in metrics]
    ax.plot(epochs, [m["entropy"] for m in metrics], marker="o", ms=3, label="mean")
    if "entropy_by_cell" in metrics[0]:
        for cell in metrics[0]["entropy_by_cell"]:
            ax.plot(epochs, [m["entropy_by_cell"][cell] for m in metrics], ls="--", label=cell)
        ax.legend(fontsize=8)
    ax.set_xlabel("epoch")
    ax.set_ylabel("entropy per edge (nats)")
    ax.set_title("architecture entropy")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_accuracy(plt, metrics, path: Path) -> None:
    nb = [m.get("nb201") for m in metrics]
    has_nb = any(n for n in nb)
    fig, axes = plt.subplots(1, 2 if has_nb else 1, figsize=(10 if has_nb else 5, 3.4), squeeze=False)
    epochs = [m["epoch"] for m in metrics]
    ax = axes[0][0]
    ax.plot(epochs, [100 * m["train_acc"] for m in metrics], marker="o", ms=3, label="train batches")
    search = [(m["epoch"], 100 * m["search_acc"]) for m in metrics if m.get("search_acc") is not None]
    if search:
        ax.plot(*zip(*search), marker="o", ms=3, label="search batches")
    ax.set_xlabel("epoch")
    ax.set_ylabel("supernet accuracy (%)")
    ax.legend(fontsize=8)
    if has_nb:
        ax = axes[0][1]
        pts = [(e, n["cifar10_test"]) for e, n in zip(epochs, nb) if n]
        ax.plot(*zip(*pts), marker="o", ms=3, color="C2", label="derived cell")
        ax.set_xlabel("epoch")
        ax.set_ylabel("NB201 CIFAR-10 test (%)")
        ax.set_title("NAS-Bench-201 accuracy of the derived cell")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _draw_dag(ax, positions: Dict[str, Tuple[float, float]], edges: List[Tuple[str, str, str]], title: str) -> None:
    from matplotlib.patches import FancyArrowPatch

    seen: Dict[Tuple[str, str], int] = {}
    for src, dst, label in edges:
        k = seen.get((src, dst), 0)
        seen[(src, dst)] = k + 1
        (x0, y0), (x1, y1) = positions[src], positions[dst]
        rad = 0.25 * (k + 1) * (1 if (x1 - x0) >= 0 else -1) if abs(x1 - x0) > 1.1 or k else 0.0
        arrow = FancyArrowPatch((x0, y0), (x1, y1), connectionstyle=f"arc3,rad={rad}", arrowstyle="-|>",
                                mutation_scale=12, lw=1.2, color="0.3", shrinkA=14, shrinkB=14)
        ax.add_patch(arrow)
        mx, my = (x0 + x1) / 2, (y0 + y1) / 2
        # the arc's midpoint is offset perpendicular to the chord by rad * length / 2
        dx, dy = x1 - x0, y1 - y0
        mx, my = mx + rad * dy / 2 * -1, my + rad * dx / 2
        if label:
            ax.text(mx, my, label, fontsize=7, ha="center", va="center",
                    bbox=dict(boxstyle="round,pad=0.2", fc="white", ec="0.7", lw=0.5))
    for name, (x, y) in positions.items():
        ax.text(x, y, name, ha="center", va="center", fontsize=9,
                bbox=dict(boxstyle="circle,pad=0.35", fc="#dbe9f6", ec="0.2"))
    xs = [p[0] for p in positions.values()]
    ys = [p[1] for p in positions.values()]
    ax.set_xlim(min(xs) - 0.8, max(xs) + 0.8)
    ax.set_ylim(min(ys) - 1.2, max(ys) + 1.2)
    ax.set_title(title, fontsize=10)
    ax.axis("off")


def _plot_cell(plt, space: str, arch: str, path: Path) -> None:
    if space == "nb201":
        from .spaces.nb201.arch import arch_nodes

        fig, ax = plt.subplots(figsize=(7, 3.2))
        positions = {str(i): (2.0 * i, 0.0) for i in range(4)}
        edges = [(str(j), str(i + 1), op) for i, node in enumerate(arch_nodes(arch)) for op, j in node if op != "none"]
        _draw_dag(ax, positions, edges, f"NAS-Bench-201 cell: {arch}")
    else:
        from .spaces.darts.genotypes import parse_genotype

        g = parse_genotype(arch)
        fig, axes = plt.subplots(1, 2, figsize=(13, 4))
        for ax, pairs, concat, name in ((axes[0], g.normal, g.normal_concat, "normal"),
                                        (axes[1], g.reduce, g.reduce_concat, "reduce")):
            steps = len(pairs) // 2
            label = {0: "c_{k-2}", 1: "c_{k-1}"}
            positions = {"c_{k-2}": (0.0, 1.0), "c_{k-1}": (0.0, -1.0)}
            for i in range(steps):
                label[i + 2] = str(i)
                positions[str(i)] = (1.6 * (i + 1), 1.0 if i % 2 == 0 else -1.0)
            positions["c_{k}"] = (1.6 * (steps + 1), 0.0)
            edges = [(label[j], str(k // 2), op) for k, (op, j) in enumerate(pairs)]
            edges += [(label[c], "c_{k}", "") for c in concat]
            _draw_dag(ax, positions, edges, f"{name} cell")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_run(run_dir, out_dir=None) -> List[Path]:
    """Write the PNG figures of ``run_dir`` (a search or a training run) into ``out_dir``
    (default ``RUN_DIR/plots``); returns their paths. Works on a finished run or one in
    progress (from its metrics)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    metrics, result = _read_run(run_dir)
    out = Path(out_dir) if out_dir else run_dir / "plots"
    out.mkdir(parents=True, exist_ok=True)
    if _is_training(metrics):
        paths = [out / "loss.png", out / "accuracy.png", out / "schedule.png"]
        _plot_training(plt, metrics, paths)
        return paths
    last = result or metrics[-1]
    ops = last.get("ops") or metrics[-1].get("ops")
    if not ops:
        raise RunDataError(f"{run_dir}: records lack the op names ('ops'); not a gaea search run")
    space = "nb201" if str(last["arch"]).startswith("|") else "darts"
    paths = [out / "arch_weights.png", out / "entropy.png", out / "accuracy.png", out / "cell.png"]
    _plot_arch_weights(plt, metrics, ops, paths[0])
    _plot_entropy(plt, metrics, paths[1])
    _plot_accuracy(plt, metrics, paths[2])
    _plot_cell(plt, space, last["arch"], paths[3])
    return paths
