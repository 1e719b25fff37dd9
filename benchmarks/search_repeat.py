"""``search_step.py --repeat N``: the end-to-end speed and memory figures, reproducibly.

Every run of a variant is a fresh process (``search_step.py --one``); the runs alternate
(repeat r: every space, every thread count, every variant, then repeat r + 1), so a slow spell
of a shared machine hits every variant alike. Per measure and thread count the report gives the
median over the N runs with their min-max range, the ratio of the fused supernet's median to the
eager baseline's (with the min-max of the per-repeat ratios), and whether each target is met.

Measures (fused against the eager baseline; the compiled baseline where it is run):

- NB201 supernet training forward + backward (images/s; target >= 2.0x),
- NB201 GAEA search iteration (images/s; >= 2.5x; and above the warm ``torch.compile`` of the
  baseline, whose cold compile falls in the warm-up iteration and is not timed),
- DARTS and PC-DARTS search iterations (images/s; >= 2.0x and >= 2.2x),
- NB201 activation memory (saved-for-backward bytes of a training forward; <= 0.5x).

Before the timed runs, one untimed run of the compiled baseline per thread count fills
Inductor's on-disk cache (``--no-prewarm-compile`` skips it when the cache is warm already).

Sizes (``--sizes``) default to what lets a 5-repeat run of everything finish in about
12 minutes on a 2-core CPU; they are written into the report. Output: a JSON of every run and
the summary, and a Markdown table, under ``--out-dir`` (``benchmarks/results``), named after the
device, the date and the commit; both record the commit (and whether the tree was dirty).
"""
from __future__ import annotations

import datetime
import json
import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[1]

#: space -> (channels, cells, batch): N per stage on NB201, cells on DARTS.
DEFAULT_SIZES = {"nb201": (16, 2, 16), "darts": (8, 5, 4), "pcdarts": (16, 5, 4)}

#: (measure, space, result field, target ratio, higher is better)
MEASURES = [
    ("NB201 supernet fwd+bwd img/s", "nb201", "fwd_bwd_images_per_s", 2.0, True),
    ("NB201 GAEA search iteration img/s", "nb201", "images_per_s", 2.5, True),
    ("DARTS search iteration img/s", "darts", "images_per_s", 2.0, True),
    ("PC-DARTS search iteration img/s", "pcdarts", "images_per_s", 2.2, True),
    ("NB201 activation memory MB", "nb201", "activation_mb", 0.5, False),
    ("NB201 ATen calls per iteration", "nb201", "aten_calls", None, False),
    ("NB201 CUDA kernel launches per iteration", "nb201", "kernel_launches", None, False),
]
COMPILE_MEASURE = "NB201 GAEA search iteration img/s"


def parse_sizes(items: List[str]) -> Dict[str, Tuple[int, int, int]]:
    """``["nb201=16,2,16", ...]`` -> ``{space: (channels, cells, batch)}`` over the defaults."""
    sizes = dict(DEFAULT_SIZES)
    for item in items:
        space, _, spec = item.partition("=")
        parts = spec.split(",")
        if space not in sizes or len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise ValueError(f"--sizes: expected SPACE=CHANNELS,CELLS,BATCH with SPACE in {sorted(sizes)}, got {item!r}")
        sizes[space] = tuple(int(p) for p in parts)
    return sizes


def _git(*cmd: str) -> str:
    return subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True).stdout.strip()


def provenance(device: str) -> Dict[str, object]:
    """Device, commit (with a dirty flag), date and library versions of this measurement."""
    import torch

    name = platform.processor() or platform.machine()
    if device.startswith("cuda") and torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
    else:
        try:
            with open("/proc/cpuinfo") as f:
                name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
        except (OSError, StopIteration):
            pass
    commit = _git("rev-parse", "HEAD") or "unknown"
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
    return {"device": device, "device_name": name, "cpus": len(__import__("os").sched_getaffinity(0)),
            "commit": commit, "dirty": dirty, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "torch": torch.__version__, "python": platform.python_version()}


def _stats(values: List[float]) -> Dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def summarise(runs: List[dict], threads_list: List[int], spaces: List[str]) -> List[dict]:
    """One row per (measure, threads): per variant the median and range, the fused/baseline
    ratio of medians with the range of the per-repeat ratios, the target and whether it is met."""
    rows = []
    for measure, space, field, target, higher in MEASURES:
        if space not in spaces:
            continue
        for threads in threads_list:
            def values(variant):
                return {r["repeat"]: r[field] for r in runs
                        if r["space"] == space and r["threads"] == threads and r["variant"] == variant
                        and r.get(field) is not None}
            base, fused = values("baseline"), values("fused")
            if not base or not fused:
                continue
            row = {"measure": measure, "threads": threads, "target": target, "higher_is_better": higher,
                   "variants": {v: _stats(list(values(v).values()))
                                for v in ("baseline", "fused", "baseline-compile") if values(v)}}
            paired = [fused[k] / base[k] for k in fused if k in base and base[k]]
            ratio = row["variants"]["fused"]["median"] / row["variants"]["baseline"]["median"]
            row["ratio"] = {"median_of_medians": ratio, "min": min(paired), "max": max(paired)}
            row["met"] = None if target is None else (ratio >= target if higher else ratio <= target)
            comp = values("baseline-compile")
            if measure == COMPILE_MEASURE and comp:
                row["compile_ratio"] = row["variants"]["fused"]["median"] / row["variants"]["baseline-compile"]["median"]
                row["beats_compile"] = row["compile_ratio"] > 1.0
            rows.append(row)
    return rows


def _cell(st: Optional[dict], digits: int = 1) -> str:
    if not st:
        return "-"
    return f"{st['median']:.{digits}f} ({st['min']:.{digits}f}-{st['max']:.{digits}f})"


def markdown(report: dict) -> str:
    """The summary as a Markdown table, with the provenance and sizes above it."""
    p, cfg = report["provenance"], report["config"]
    lines = [
        f"End-to-end search step, {cfg['repeat']} fresh-process runs per variant (alternating); "
        f"median (min-max).",
        "",
        f"- device: {p['device']} ({p['device_name']}, {p['cpus']} CPUs visible); torch {p['torch']}",
        f"- commit: {p['commit'][:12]}{' (dirty tree)' if p['dirty'] else ''}; date: {p['date']}",
        "- sizes (channels, cells, batch; 32x32 images): "
        + ", ".join(f"{s} {tuple(v)}" for s, v in cfg["sizes"].items() if s in cfg["spaces"])
        + f"; {cfg['warmup']} warm-up + {cfg['iters']} timed iterations per run; wall time {report['wall_s']:.0f} s"
        + f" (plus {report['compile_prewarm_s']:.0f} s of untimed compile-cache warm-up)",
        "",
        "| measure | threads | baseline | fused | torch.compile (warm) | fused / baseline (per-repeat range) | target | met |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["summary"]:
        v = r["variants"]
        ratio = r["ratio"]
        target = "-" if r["target"] is None else (">=" if r["higher_is_better"] else "<=") + f" {r['target']}x"
        met = "-" if r["met"] is None else "yes" if r["met"] else "no"
        if "beats_compile" in r:
            met += f"; vs compile {r['compile_ratio']:.2f}x ({'beats' if r['beats_compile'] else 'does not beat'})"
        lines.append(f"| {r['measure']} | {r['threads']} | {_cell(v.get('baseline'))} | {_cell(v.get('fused'))} | "
                     f"{_cell(v.get('baseline-compile'))} | {ratio['median_of_medians']:.2f}x "
                     f"({ratio['min']:.2f}-{ratio['max']:.2f}) | {target} | {met} |")
    return "\n".join(lines) + "\n"


def run_repeat(args, spawn) -> int:
    """The ``--repeat`` mode of search_step.py; ``spawn(args, variant, threads)`` runs one
    variant in a fresh process and returns its result dict."""
    import copy

    if args.repeat < 1:
        raise ValueError(f"--repeat must be >= 1, got {args.repeat}")
    sizes = parse_sizes(args.sizes or [])
    spaces = args.spaces
    compile_spaces = [s for s in args.compile_spaces if s in spaces]
    threads_list = args.threads if args.device == "cpu" else [args.threads[0]]
    meta = provenance(args.device)
    print(f"search_step --repeat {args.repeat}: spaces {spaces}, threads {threads_list}, "
          f"compile on {compile_spaces or 'none'}; commit {meta['commit'][:12]}{' (dirty)' if meta['dirty'] else ''}")
    start = time.perf_counter()
    if args.prewarm_compile:
        # Inductor's CPU kernels specialise on the thread count: one untimed cold compile per
        # thread count fills the on-disk cache, so every timed run compiles warm.
        for space in compile_spaces:
            sub = copy.copy(args)
            sub.space = space
            sub.channels, sub.cells, sub.batch = sizes[space]
            sub.iters, sub.warmup = 1, 1
            for threads in threads_list:
                t = time.perf_counter()
                spawn(sub, "baseline-compile", threads)
                print(f"  compile cache warm-up {space} {threads} thr: {time.perf_counter() - t:.0f} s", flush=True)
    prewarm_s = time.perf_counter() - start
    runs = []
    for rep in range(args.repeat):
        for space in spaces:
            sub = copy.copy(args)
            sub.space = space
            sub.channels, sub.cells, sub.batch = sizes[space]
            variants = ["baseline", "fused"] + (["baseline-compile"] if space in compile_spaces else [])
            for threads in threads_list:
                order = variants if rep % 2 == 0 else variants[::-1]  # alternate who runs first
                for variant in order:
                    t = time.perf_counter()
                    r = spawn(sub, variant, threads)
                    r["process_s"] = time.perf_counter() - t
                    runs.append({"repeat": rep, "space": space, "threads": threads, "variant": variant, **r})
                    print(f"  repeat {rep} {space:8s} {threads} thr {variant:17s} {r['images_per_s']:8.2f} img/s  "
                          f"fwd+bwd {r['fwd_bwd_images_per_s']:8.2f} img/s  activations {r['activation_mb']:7.1f} MB  "
                          f"({r['process_s']:.0f} s)", flush=True)
    wall = time.perf_counter() - start - prewarm_s
    config = {"repeat": args.repeat, "spaces": spaces, "compile_spaces": compile_spaces, "threads": threads_list,
              "sizes": {s: list(v) for s, v in sizes.items()}, "iters": args.iters, "warmup": args.warmup,
              "device": args.device}
    report = {"provenance": meta, "config": config, "wall_s": wall, "compile_prewarm_s": prewarm_s,
              "summary": summarise(runs, threads_list, spaces), "runs": runs}
    table = markdown(report)
    print(table)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"e2e-repeat-{args.device}-{meta['date'][:10]}-{meta['commit'][:7]}{'-dirty' if meta['dirty'] else ''}"
    (out_dir / f"{stem}.json").write_text(json.dumps(report, indent=2))
    (out_dir / f"{stem}.md").write_text(table)
    print(f"wrote {out_dir / stem}.json and .md")
    return 0
