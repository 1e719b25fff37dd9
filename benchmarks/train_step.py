"""Speed and peak memory of one training step of the DARTS CIFAR evaluation network with the
fused drop path (gaea_ext.drop_path_sum in every node) against the older DARTS code's.

    python benchmarks/train_step.py [--device cpu|cuda] [--batch 96 ...] [--rounds 3]
        [--iters 3] [--warmup 1] [--switches channels_last bf16 compile] [--variants ...]
        [--channels 36] [--layers 20] [--threads N] [--out-dir benchmarks/results]

One step: forward of ``NetworkCIFAR(C, layers=20, auxiliary=True)`` on the published
genotype DARTS_V2 (random 32x32 images and labels), loss = CE(logits) + 0.4 CE(aux logits),
backward, gradient clipping at 5 and SGD (lr 0.025, momentum 0.9, weight decay 3e-4), with
``model.drop_path_prob = 0.2`` (DARTS' final value), as quark0/darts ``cnn/train.py`` runs it.

Variants:

- ``baseline``: the cells as the DARTS code writes them (``cnn/model.py`` + ``cnn/utils.py``):
  drop path in place on each non-identity op output (``x.div_(keep).mul_(mask)``), then a
  separate ``h1 + h2`` (gaea_nas's per-op cells with the DARTS code's in-place ``drop_path``).
- ``unfused``: gaea_nas's cells with ``fused_drop_path=False`` (out-of-place drop path, add).
- ``fused``: gaea_nas's default cells: one ``gaea_ext.drop_path_sum`` per node.
- ``baseline+S`` and ``fused+S`` for each switch S of ``--switches``: ``channels_last``
  (model and images), ``bf16`` (bfloat16 autocast), ``compile`` (``torch.compile`` of the
  model; the first step, which compiles, is in the warm-up).

Each (variant, batch) runs ``--rounds`` times, each time in a fresh process, the variants
alternating within a round (baseline, fused, ..., baseline, fused, ...); a process times
``--iters`` steps after ``--warmup`` and reports its median. Reported: the median over the
rounds with the min-max range, of images/s and of peak memory (CUDA: the growth of
``max_memory_allocated`` over the steps; CPU: of the process's peak resident set, which also
counts the allocator's caching). On CUDA the batches are 96 and the largest that fits each
variant (doubling from 96 until out of memory), with the projected time of a 600-epoch
CIFAR-10 training (50,000 images per epoch, the step alone: no data loading, no evaluation).

Output: a table on stdout and ``train-step-<device>-<date>-<commit>-C<channels>L<layers>.{json,md}`` in
``--out-dir`` (device, commit and date included).
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ["baseline", "unfused", "fused"]
SWITCHES = ("channels_last", "bf16", "compile")
DROP_PATH_PROB = 0.2
AUX_WEIGHT = 0.4
EPOCHS, EPOCH_IMAGES = 600, 50_000
sys.path.insert(0, str(Path(__file__).resolve().parent))
from search_step import _proc_kib  # noqa: E402  (the process's resident-set fields)


def darts_drop_path_(x, drop_prob: float):
    """The DARTS code's drop path (cnn/utils.py): in place on the op output."""
    import torch

    keep = 1.0 - drop_prob
    mask = torch.empty((x.size(0), 1, 1, 1), dtype=x.dtype, device=x.device).bernoulli_(keep)
    x.div_(keep)
    x.mul_(mask)
    return x


@contextlib.contextmanager
def cells_of(variant: str):
    """While open, gaea_nas's per-op cells run the DARTS code's in-place drop path when
    `variant` is a baseline (as DARTS' cnn/model.py Cell.forward on cnn/utils.py drop_path)."""
    from gaea_nas.spaces.darts import networks

    original = networks.drop_path
    if variant.partition("+")[0] == "baseline":
        networks.drop_path = darts_drop_path_
    try:
        yield
    finally:
        networks.drop_path = original


def build(variant: str, args, device):
    """The network of `variant` (its base part), ready to train."""
    from gaea_nas.spaces.darts import NetworkCIFAR

    model = NetworkCIFAR(args.channels, 10, args.layers, auxiliary=True, genotype="DARTS_V2",
                         drop_path_prob=DROP_PATH_PROB, fused_drop_path=variant.partition("+")[0] == "fused")
    return model.to(device).train()


def run_one(args) -> Dict[str, float]:
    """Time one variant at one batch in this process."""
    with cells_of(args.variant):
        return _time_steps(args)


def _time_steps(args) -> Dict[str, float]:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    switch = args.variant.partition("+")[2]
    model = build(args.variant, args, device)
    x = torch.randn(args.batch[0], 3, 32, 32, device=device)
    y = torch.randint(0, 10, (args.batch[0],), device=device)
    if switch == "channels_last":
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    run = torch.compile(model) if switch == "compile" else model
    amp = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if switch == "bf16" else contextlib.nullcontext
    opt = torch.optim.SGD(model.parameters(), lr=0.025, momentum=0.9, weight_decay=3e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        with amp():
            logits, logits_aux = run(x)
            loss = F.cross_entropy(logits, y) + AUX_WEIGHT * F.cross_entropy(logits_aux, y)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        base = _proc_kib("VmRSS") * 1024
    start = time.perf_counter()
    for _ in range(args.warmup):
        step()
    sync()
    warmup_s = time.perf_counter() - start
    times = []
    for _ in range(args.iters):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) - base if device.type == "cuda" else _proc_kib("VmHWM") * 1024 - base
    return {"images_per_s": args.batch[0] / statistics.median(times), "peak_mem_mb": max(peak, 0) / 2**20,
            "warmup_s": warmup_s}


def largest_batch_one(args) -> Dict[str, int]:
    """CUDA: the largest batch, doubling from --batch, whose step runs without running out of memory."""
    import torch

    batch, largest = args.batch[0], 0
    args.warmup, args.iters = 1, 1
    while batch <= args.max_batch:
        args.batch = [batch]
        try:
            run_one(args)
        except torch.cuda.OutOfMemoryError:
            break
        finally:
            torch.cuda.empty_cache()
        largest, batch = batch, batch * 2
    return {"largest_batch": largest}


def spawn(args, variant: str, batch: int, largest: bool = False) -> Dict[str, float]:
    """Run one variant at one batch in a fresh process (peak memory of its own), or in this
    one with --in-process."""
    if args.in_process:
        one = argparse.Namespace(**{**vars(args), "variant": variant, "batch": [batch]})
        return largest_batch_one(one) if largest else run_one(one)
    cmd = [sys.executable, __file__, "--one", variant, "--device", args.device, "--batch", str(batch),
           "--channels", str(args.channels), "--layers", str(args.layers), "--iters", str(args.iters),
           "--warmup", str(args.warmup), "--threads", str(args.threads), "--max-batch", str(args.max_batch)]
    if largest:
        cmd.append("--largest-batch-one")
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    env["PYTHONPATH"] = f"{ROOT}:{ROOT / 'python'}" + (f":{env['PYTHONPATH']}" if env.get("PYTHONPATH") else "")
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout)
    if p.returncode != 0:
        raise RuntimeError(f"{variant} at batch {batch} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def summary(values: List[float]) -> Dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def environment(device: str) -> Dict[str, str]:
    """Device, commit and date of the measurement."""
    import torch

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                check=True).stdout.strip()
        if subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                          text=True).stdout.strip():
            commit += "+dirty"
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    if device.startswith("cuda"):
        name = torch.cuda.get_device_name(torch.device(device))
    else:
        name = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    return {"device": device, "device_name": name, "commit": commit, "torch": torch.__version__,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def markdown(env: Dict[str, str], config: Dict, rows: List[Dict]) -> str:
    gpu = env["device"].startswith("cuda")
    lines = [f"# Training step, NetworkCIFAR(C={config['channels']}, {config['layers']} layers, auxiliary) "
             f"DARTS_V2, drop path {DROP_PATH_PROB}",
             "",
             f"{env['device_name']} ({env['device']}), torch {env['torch']}, commit {env['commit']}, {env['date']}; "
             f"{config['rounds']} alternating rounds of {config['iters']} steps (after {config['warmup']} warm-up), "
             "median [min-max] over the rounds.",
             "",
             "| variant | batch | images/s | vs baseline | peak memory MB |" + (" 600 epochs (h) |" if gpu else ""),
             "|---|---|---|---|---|" + ("---|" if gpu else "")]
    for r in rows:
        ips, mem = r["images_per_s"], r["peak_mem_mb"]
        ratio = f"x{r['speedup_vs_baseline']:.2f}" if r.get("speedup_vs_baseline") else ""
        line = (f"| {r['variant']} | {r['batch']} | {ips['median']:.1f} [{ips['min']:.1f}-{ips['max']:.1f}] | {ratio} | "
                f"{mem['median']:.0f} [{mem['min']:.0f}-{mem['max']:.0f}] |")
        if gpu:
            line += f" {r['epochs_600_hours']:.1f} |"
        lines.append(line)
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, nargs="+", default=[96],
                   help="batches to time (on CUDA the largest batch that fits is added)")
    p.add_argument("--channels", type=int, default=36)
    p.add_argument("--layers", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="intra-op threads (0: PyTorch's default)")
    p.add_argument("--switches", nargs="*", default=[], choices=list(SWITCHES))
    p.add_argument("--variants", nargs="+", default=None,
                   help=f"default: {' '.join(VARIANTS)} and baseline+S, fused+S per switch S")
    p.add_argument("--max-batch", type=int, default=8192, help="CUDA: cap of the largest-batch search")
    p.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--timeout", type=float, default=3600)
    p.add_argument("--in-process", action="store_true",
                   help="run the variants in this process (quick checks; peak memory is then not per variant)")
    p.add_argument("--one", help=argparse.SUPPRESS)
    p.add_argument("--largest-batch-one", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        args.variant = args.one
        print(json.dumps(largest_batch_one(args) if args.largest_batch_one else run_one(args)))
        return 0

    variants = args.variants or VARIANTS + [f"{base}+{s}" for s in args.switches for base in ("baseline", "fused")]
    gpu = args.device.startswith("cuda")
    env = environment(args.device)
    print(f"training step, NetworkCIFAR(C={args.channels}, layers={args.layers}) DARTS_V2 on {env['device_name']}, "
          f"commit {env['commit']}, {env['date']}")
    batches = {v: list(args.batch) for v in variants}
    if gpu:  # the largest batch that fits, per variant
        for v in variants:
            largest = spawn(args, v, args.batch[0], largest=True)["largest_batch"]
            if largest and largest not in batches[v]:
                batches[v].append(largest)
    runs: Dict[tuple, List[Dict[str, float]]] = {}
    for _ in range(args.rounds):
        for batch in sorted({b for bs in batches.values() for b in bs}):
            for v in variants:  # alternating within the round
                if batch in batches[v]:
                    runs.setdefault((v, batch), []).append(spawn(args, v, batch))
    rows = []
    for (v, batch), results in runs.items():
        row = {"variant": v, "batch": batch,
               "images_per_s": summary([r["images_per_s"] for r in results]),
               "peak_mem_mb": summary([r["peak_mem_mb"] for r in results]),
               "warmup_s": summary([r["warmup_s"] for r in results])}
        base = runs.get(("baseline" + v.partition("+")[1] + v.partition("+")[2], batch)) or runs.get(("baseline", batch))
        if base and not v.startswith("baseline"):
            row["speedup_vs_baseline"] = row["images_per_s"]["median"] / statistics.median(
                r["images_per_s"] for r in base)
        if gpu:
            row["epochs_600_hours"] = EPOCHS * EPOCH_IMAGES / row["images_per_s"]["median"] / 3600
        rows.append(row)
        ips = row["images_per_s"]
        print(f"  {v:22s} batch {batch:5d}  {ips['median']:8.1f} img/s [{ips['min']:.1f}-{ips['max']:.1f}]"
              + (f" (x{row['speedup_vs_baseline']:.2f})" if "speedup_vs_baseline" in row else "")
              + f"  peak {row['peak_mem_mb']['median']:8.0f} MB"
              + (f"  600 epochs {row['epochs_600_hours']:.1f} h" if gpu else ""))
    config = {k: v for k, v in vars(args).items() if k not in ("one", "largest_batch_one", "variant", "out_dir")}
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # The network size is in the name, so runs of other sizes on one commit and day do not overwrite it.
    stem = (f"train-step-{args.device.replace(':', '')}-{env['date'][:10]}-{env['commit']}"
            f"-C{args.channels}L{args.layers}")
    (out_dir / f"{stem}.json").write_text(json.dumps({**env, "config": config, "rows": rows}, indent=2))
    (out_dir / f"{stem}.md").write_text(markdown(env, config, rows))
    print(f"wrote {out_dir / stem}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
