"""End-to-end speed and memory of one GAEA search iteration (arch step + weight step) of the
NAS-Bench-201, DARTS or PC-DARTS supernet, against a baseline supernet written the way the
older repositories write it.

    python benchmarks/search_step.py [--space nb201|darts|pcdarts] [--device cpu|cuda]
        [--threads 1 2] [--batch 64] [--channels 16] [--cells N] [--iters 3]
        [--switches bf16 channels_last compile] [--largest-batch] [--json PATH]
    python benchmarks/search_step.py --repeat N [--spaces ...] [--sizes SPACE=C,CELLS,BATCH ...]
        [--compile-spaces nb201] [--threads 1 2] [--iters 2] [--warmup 1] [--out-dir DIR]

``--repeat N``: the reproducible report (benchmarks/search_repeat.py): every variant (eager
baseline, fused, warm torch.compile of the baseline) N times in fresh processes, alternating,
median and min-max per measure, ratios and targets, device, commit and date; JSON + Markdown.

``--cells``: N per stage on NB201 (default 5), cells in the network on DARTS (default 8).

Variants (each timed in a fresh process, so peak-memory figures do not mix):

- ``baseline``: AutoDL / DARTS / PC-DARTS / GAEA-release style: ``sum(w * op(x))`` per edge in
  Python (``MixedOp``), ``none`` as ``x * 0``, softmax of the logits in every forward, every op
  computed (PC-DARTS: on the channel quarter, then cat + shuffle per edge, edge weights per
  node); the arch step runs ``loss.backward()`` for all parameters (then zeroes the weight
  grads) and the released EG update loop; the weight step is backward + clip + SGD.
- ``fused``: gaea_nas's NB201 supernet (one ``mixed_terms`` call per node: skip and the 3x3
  avg pool computed in-kernel, never materialised) with ``search_iteration`` (arch-only
  gradients via ``autograd.grad``, one fused EG call).
- ``fused-no-pool-fusion``: the same with ``FUSE_PARAMETER_FREE = False`` (the pools run as
  modules, nodes mix with ``weighted_sum``).
- ``plain``: gaea_nas's supernet on the plain PyTorch mixing path (``USE_FUSED = False``).
- ``fused-unbatched`` (only with ``--variants``): ``fused`` without the batched same-input
  convolutions and the BatchNorms folded into the node (``BATCH_CONVS = TENSOR_BN = False``).
- ``baseline-compile`` (``--compile``): ``torch.compile`` of the baseline's forward.
- switches on the fused supernet (``--switches``): ``fused+bf16`` (bfloat16 autocast; arch
  weights and EG state stay float32), ``fused+channels_last``, ``fused+compile``
  (``torch.compile`` of the supernet with the custom ops inside).

Reported per variant: images/s of the iteration (training images per second; each iteration
also runs an arch batch); activation memory: the bytes of the distinct storages autograd saves
for the backward during one training forward (``saved_tensors_hooks``; what caps the batch);
and peak memory: on CUDA ``torch.cuda.max_memory_allocated`` over the iterations minus the
memory held before them; on the CPU the growth of the process's peak resident set (``VmHWM``
minus ``VmRSS`` before the first iteration), which also counts the allocator's caching.
Also: images/s of the supernet's training forward + backward alone (``fwd+bwd``), and the
warm-up time (the first iteration, which includes any cold ``torch.compile``).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ["baseline", "fused", "fused-no-pool-fusion", "plain"]
SWITCHES = ("bf16", "channels_last", "compile")


def _proc_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _baseline_supernet(C: int, N: int, num_classes: int):
    """NB201 supernet the AutoDL / GAEA-release way (see the module docstring)."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    from gaea_nas.spaces.nb201.ops import NB201_OPS, build_nb201_op
    from gaea_nas.spaces.nb201.arch import NB201_EDGES
    from gaea_nas.spaces.nb201.ops import build_macro as _macro

    class Cell(nn.Module):
        def __init__(self, C):
            super().__init__()
            self.edges = nn.ModuleList(nn.ModuleList(build_nb201_op(o, C, C, 1, False, True) for o in NB201_OPS)
                                       for _ in NB201_EDGES)

        def forward(self, x, weights):
            nodes, e = [x], 0
            for i in range(1, 4):
                inter = []
                for j in range(i):
                    inter.append(sum(op(nodes[j]) * w for op, w in zip(self.edges[e], weights[e])))
                    e += 1
                nodes.append(sum(inter))
            return nodes[-1]

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.cells, c_prev = _macro(C, N, Cell)
            self.lastact = nn.Sequential(nn.BatchNorm2d(c_prev), nn.ReLU(inplace=True))
            self.classifier = nn.Linear(c_prev, num_classes)
            self.theta = nn.Parameter(1e-3 * torch.randn(len(NB201_EDGES), len(NB201_OPS)))

        def forward(self, x):
            w = F.softmax(self.theta, dim=-1)
            h = self.stem(x)
            for cell in self.cells:
                h = cell(h, w) if isinstance(cell, Cell) else cell(h)
            return self.classifier(F.adaptive_avg_pool2d(self.lastact(h), 1).flatten(1))

        def arch_parameters(self):
            return [self.theta]

        def weight_parameters(self):
            return [p for n, p in self.named_parameters() if n != "theta"]

    return Net()


def saved_activation_bytes(forward_loss) -> int:
    """Bytes of the distinct storages autograd saves for the backward while ``forward_loss()``
    runs (inputs, activations and the parameters ops keep)."""
    import torch

    storages: Dict[int, int] = {}

    def pack(t):
        st = t.untyped_storage()
        storages[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        forward_loss()
    return sum(storages.values())


def _baseline_darts(C: int, layers: int, num_classes: int, partial: int = 0):
    """DARTS (``partial=0``) or PC-DARTS (``partial=K``) search network the quark0/darts and
    yuhuixu1993/PC-DARTS way: ``MixedOp`` = ``sum(w * op(x))``, cells summing their edges in
    Python, softmax of the alphas (and of the per-node edge betas) in every forward."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    from gaea_nas.spaces.darts.ops import DARTS_OPS, FactorizedReduce, ReLUConvBN, search_op
    from gaea_nas.spaces.darts.supernet import channel_shuffle

    class MixedOp(nn.Module):
        def __init__(self, C, stride):
            super().__init__()
            self.k = partial or 1
            self.ops = nn.ModuleList(search_op(o, C // self.k, stride) for o in DARTS_OPS)
            self.mp = nn.MaxPool2d(2, 2)

        def forward(self, x, weights):
            if not partial:
                return sum(w * op(x) for w, op in zip(weights, self.ops))
            q = x.shape[1] // self.k
            mixed = sum(w * op(x[:, :q]) for w, op in zip(weights, self.ops))
            rest = x[:, q:] if mixed.shape[2] == x.shape[2] else self.mp(x[:, q:])
            return channel_shuffle(torch.cat([mixed, rest], dim=1), self.k)

    class Cell(nn.Module):
        def __init__(self, C_pp, C_p, C, reduction, reduction_prev):
            super().__init__()
            self.reduction = reduction
            self.pre0 = FactorizedReduce(C_pp, C, affine=False) if reduction_prev else ReLUConvBN(C_pp, C, 1, 1, 0, False)
            self.pre1 = ReLUConvBN(C_p, C, 1, 1, 0, False)
            self.ops = nn.ModuleList(MixedOp(C, 2 if reduction and j < 2 else 1) for i in range(4) for j in range(2 + i))

        def forward(self, s0, s1, weights, betas):
            states, offset = [self.pre0(s0), self.pre1(s1)], 0
            for _ in range(4):
                s = sum((betas[offset + j] if betas is not None else 1.0) * self.ops[offset + j](h, weights[offset + j])
                        for j, h in enumerate(states))
                offset += len(states)
                states.append(s)
            return torch.cat(states[-4:], dim=1)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            c = 3 * C
            self.stem = nn.Sequential(nn.Conv2d(3, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))
            C_pp, C_p, C_cur, red_prev = c, c, C, False
            self.cells = nn.ModuleList()
            for i in range(layers):
                red = i in (layers // 3, 2 * layers // 3)
                C_cur = C_cur * 2 if red else C_cur
                self.cells.append(Cell(C_pp, C_p, C_cur, red, red_prev))
                red_prev, C_pp, C_p = red, C_p, 4 * C_cur
            self.classifier = nn.Linear(C_p, num_classes)
            self.alphas = nn.Parameter(1e-3 * torch.randn(2, 14, len(DARTS_OPS)))
            self.betas = nn.Parameter(torch.full((2, 14), 0.5)) if partial else None

        def _edge_weights(self, b):
            return torch.cat([F.softmax(t, dim=-1) for t in torch.split(b, [2, 3, 4, 5])])

        def forward(self, x):
            w = F.softmax(self.alphas, dim=-1)
            eb = [self._edge_weights(self.betas[k]) for k in range(2)] if partial else [None, None]
            s0 = s1 = self.stem(x)
            for cell in self.cells:
                k = 1 if cell.reduction else 0
                s0, s1 = s1, cell(s0, s1, w[k], eb[k])
            return self.classifier(F.adaptive_avg_pool2d(s1, 1).flatten(1))

        def arch_parameters(self):
            return [self.alphas] + ([self.betas] if partial else [])

        def weight_parameters(self):
            return [p for n, p in self.named_parameters() if n not in ("alphas", "betas")]

    return Net()


def count_calls(step, dev) -> Dict[str, int]:
    """Calls issued by one `step()`, counted with torch.profiler: on CUDA the kernel launches
    (`kernel_launches`), everywhere the ATen operator calls (`aten_calls`, nested calls too)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with profile(activities=activities) as prof:
        step()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
    events = prof.events()
    counts = {"aten_calls": sum(1 for e in events if e.name.startswith("aten::"))}
    if dev.type == "cuda":
        counts["kernel_launches"] = sum(1 for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
    return counts


def _run_variant(args) -> Dict[str, float]:
    """Time one variant in this process; returns images/s and memory."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    import gaea_ext
    from gaea_ext.baselines import edge_step_release, exp_grad_step_release
    from gaea_nas import DartsSuperNet, NB201SuperNet, mixing
    from gaea_nas.search.step import search_iteration

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    variant = args.variant
    batch = args.batch
    x = torch.randn(batch, 3, 32, 32, device=dev)
    y = torch.randint(0, 10, (batch,), device=dev)
    xs, ys = torch.randn(batch, 3, 32, 32, device=dev), torch.randint(0, 10, (batch,), device=dev)

    cells = args.cells if args.cells else (5 if args.space == "nb201" else 8)
    if variant.startswith("baseline"):
        if args.space == "nb201":
            model = _baseline_supernet(args.channels, cells, 10).to(dev)
        else:
            model = _baseline_darts(args.channels, cells, 10, 4 if args.space == "pcdarts" else 0).to(dev)
        fwd = torch.compile(model) if variant == "baseline-compile" else model
        wopt = torch.optim.SGD(model.weight_parameters(), lr=0.025, momentum=0.9, weight_decay=3e-4)

        def train_loss():
            return F.cross_entropy(fwd(x), y)

        def step():
            # arch step, release style: full backward, EG loop, weight grads thrown away
            model.zero_grad()
            F.cross_entropy(fwd(xs), ys).backward()
            with torch.no_grad():
                a = model.arch_parameters()[0]  # alphas: rows are simplices
                a.view(-1, a.shape[-1]).copy_(exp_grad_step_release(a.view(-1, a.shape[-1]),
                                                                    a.grad.view(-1, a.shape[-1]), 0.1))
                for b in model.arch_parameters()[1:]:  # PC-DARTS edge betas: per-node simplices
                    for k in range(b.shape[0]):
                        b[k].copy_(edge_step_release(b[k], b.grad[k], 0.1, [2, 3, 4, 5]))
            model.zero_grad()
            F.cross_entropy(fwd(x), y).backward()
            nn.utils.clip_grad_norm_(model.weight_parameters(), 5.0)
            wopt.step()
    else:
        base, _, switch = variant.partition("+")
        mixing.USE_FUSED = base != "plain"
        mixing.FUSE_PARAMETER_FREE = base in ("fused", "fused-unbatched")
        mixing.BATCH_CONVS = mixing.TENSOR_BN = base != "fused-unbatched"
        if args.space == "nb201":
            model = NB201SuperNet(args.channels, cells, 10, arch="simplex").to(dev)
        else:
            pc = args.space == "pcdarts"
            model = DartsSuperNet(args.channels, cells, 10, partial_channels=4 if pc else None, edge_weights=pc,
                                  arch="simplex").to(dev)
        groups = [{"params": [m.alpha for m in model.arch_cells().values()]}]
        betas = [m.beta for m in model.arch_cells().values() if m.beta is not None]
        if betas:
            groups.append({"params": betas, "segments": model.arch_normal.edge_segments, "min_value": 0.0})
        aopt = gaea_ext.optim.ExponentiatedGradient(groups, lr=0.1)
        wopt = torch.optim.SGD(model.weight_parameters(), lr=0.025, momentum=0.9, weight_decay=3e-4)
        run = model
        if switch == "channels_last":
            model.to(memory_format=torch.channels_last)
            x, xs = x.contiguous(memory_format=torch.channels_last), xs.contiguous(memory_format=torch.channels_last)
        elif switch == "compile":
            run = torch.compile(model)
        amp = (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if switch == "bf16" else contextlib.nullcontext

        def train_loss():
            with amp():
                return F.cross_entropy(run(x), y)

        def step():
            with amp():
                search_iteration(model, (x, y), (xs, ys), aopt, wopt, arch_model=run, weight_model=run)

    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
    else:
        base = _proc_kib("VmRSS") * 1024
    t = time.perf_counter()
    for _ in range(args.warmup):
        step()
    sync()
    warmup_s = time.perf_counter() - t  # includes any cold torch.compile
    activations = saved_activation_bytes(train_loss)
    times = []
    for _ in range(args.iters):
        t = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t)
    # the supernet's training forward + backward alone (no arch step, no optimiser step)
    fwd_bwd_times = []
    for _ in range(args.iters):
        t = time.perf_counter()
        train_loss().backward()
        sync()
        fwd_bwd_times.append(time.perf_counter() - t)
    calls = count_calls(step, dev)
    model.zero_grad(set_to_none=True)
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated(dev) - base
    else:
        peak = _proc_kib("VmHWM") * 1024 - base
    median = sorted(times)[len(times) // 2]
    fwd_bwd = sorted(fwd_bwd_times)[len(fwd_bwd_times) // 2]
    return {"images_per_s": batch / median, "step_s": median, "peak_mem_mb": max(peak, 0) / 2**20,
            "activation_mb": activations / 2**20, "fwd_bwd_images_per_s": batch / fwd_bwd,
            "warmup_s": warmup_s, **calls}


def _largest_batch(args) -> Dict[str, float]:
    """CUDA: the largest batch (doubling, then bisection) whose iteration runs without OOM."""
    import torch

    def fits(b: int) -> bool:
        args.batch, args.warmup, args.iters = b, 0, 1
        try:
            _run_variant(args)
            return True
        except torch.cuda.OutOfMemoryError:
            return False
        finally:
            torch.cuda.empty_cache()

    lo, hi = 0, 64
    while hi <= args.max_batch_cap and fits(hi):
        lo, hi = hi, hi * 2
    hi = min(hi, args.max_batch_cap + 1)
    while hi - lo > max(lo // 16, 1):  # to within 1/16
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return {"largest_batch": lo}


def _spawn(args, variant: str, threads: int, largest: bool = False) -> Dict[str, float]:
    cmd = [sys.executable, __file__, "--one", variant, "--device", args.device, "--threads", str(threads),
           "--batch", str(args.batch), "--channels", str(args.channels), "--cells", str(args.cells),
           "--space", args.space,
           "--iters", str(args.iters), "--warmup", str(args.warmup)]
    if largest:
        cmd += ["--largest-batch-one", "--max-batch-cap", str(args.max_batch_cap)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    env["PYTHONPATH"] = f"{ROOT}:{ROOT / 'python'}" + (f":{env['PYTHONPATH']}" if env.get("PYTHONPATH") else "")
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout)
    if p.returncode != 0:
        raise RuntimeError(f"{variant} ({threads} threads) failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main(argv: List[str] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--channels", type=int, default=16)
    p.add_argument("--space", choices=["nb201", "darts", "pcdarts"], default="nb201")
    p.add_argument("--cells", type=int, default=0, help="NB201 N per stage (5), DARTS cells (8)")
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--compile", action="store_true", help="add torch.compile of the baseline (slow cold start)")
    p.add_argument("--switches", nargs="*", default=[], choices=list(SWITCHES),
                   help="also time the fused supernet with each switch on")
    p.add_argument("--variants", nargs="+", default=None,
                   choices=VARIANTS + ["baseline-compile", "fused-unbatched"] + [f"fused+{w}" for w in SWITCHES])
    p.add_argument("--json", metavar="PATH")
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--largest-batch", action="store_true", help="CUDA: also find each variant's largest batch")
    p.add_argument("--max-batch-cap", type=int, default=16384)
    p.add_argument("--repeat", type=int, default=0, metavar="N",
                   help="the reproducible report: N fresh-process runs per variant, alternating (search_repeat.py)")
    p.add_argument("--spaces", nargs="+", choices=["nb201", "darts", "pcdarts"], default=["nb201", "darts", "pcdarts"],
                   help="--repeat: the supernets to measure")
    p.add_argument("--compile-spaces", nargs="*", choices=["nb201", "darts", "pcdarts"], default=["nb201"],
                   help="--repeat: where the warm torch.compile of the baseline is also timed")
    p.add_argument("--sizes", nargs="*", metavar="SPACE=C,CELLS,BATCH",
                   help="--repeat: per-space sizes (default nb201=16,2,16 darts=8,5,4 pcdarts=16,5,4)")
    p.add_argument("--no-prewarm-compile", dest="prewarm_compile", action="store_false",
                   help="--repeat: skip the untimed compile-cache warm-up run per thread count")
    p.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"), help="--repeat: where the report goes")
    p.add_argument("--one", help=argparse.SUPPRESS)
    p.add_argument("--largest-batch-one", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        args.variant = args.one
        args.threads = args.threads[0]
        print(json.dumps(_largest_batch(args) if args.largest_batch_one else _run_variant(args)))
        return 0

    if args.repeat:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from search_repeat import run_repeat

        return run_repeat(args, _spawn)

    switches = list(args.switches)
    if args.space == "pcdarts" and args.device == "cpu" and "channels_last" in switches:
        # oneDNN's CPU backward on channels_last channel slices crawls or crashes (see gaea_nas.search.loop.check_layout_supported)
        print("note: channels_last is skipped for pcdarts on the CPU")
        switches.remove("channels_last")
    variants = args.variants or ([v for v in VARIANTS if args.space == "nb201" or v != "fused-no-pool-fusion"]
                                 + (["baseline-compile"] if args.compile else [])
                                 + [f"fused+{w}" for w in switches])
    rows = []
    size = f"N={args.cells or 5}" if args.space == "nb201" else f"{args.cells or 8} cells"
    print(f"{args.space} GAEA search iteration, C={args.channels} {size}, batch {args.batch}, device {args.device}")
    threads_list = args.threads if args.device == "cpu" else [args.threads[0]]
    for threads in threads_list:
        results = {v: _spawn(args, v, threads) for v in variants}
        base = results.get("baseline")
        for v, r in results.items():
            row = {"variant": v, "threads": threads, **r}
            if base:
                row["speedup_vs_baseline"] = r["images_per_s"] / base["images_per_s"]
                row["fwd_bwd_speedup_vs_baseline"] = r["fwd_bwd_images_per_s"] / base["fwd_bwd_images_per_s"]
                row["activation_vs_baseline"] = r["activation_mb"] / base["activation_mb"]
                row["peak_vs_baseline"] = (r["peak_mem_mb"] / base["peak_mem_mb"]) if base["peak_mem_mb"] else None
            rows.append(row)
            peak_ratio = row.get("peak_vs_baseline")
            print(f"  {threads} thr  {v:22s} {r['images_per_s']:8.1f} img/s"
                  + (f" (x{row['speedup_vs_baseline']:.2f})" if base else "")
                  + f"  activations {r['activation_mb']:7.1f} MB"
                  + (f" (x{row['activation_vs_baseline']:.2f})" if base else "")
                  + f"  peak {r['peak_mem_mb']:7.1f} MB" + (f" (x{peak_ratio:.2f})" if peak_ratio else "")
                  + f"  fwd+bwd {r['fwd_bwd_images_per_s']:6.1f} img/s"
                  + (f" (x{row['fwd_bwd_speedup_vs_baseline']:.2f})" if base else "")
                  + f"  warm-up {r['warmup_s']:.0f} s")
    if args.largest_batch and args.device.startswith("cuda"):
        largest = {v: _spawn(args, v, threads_list[0], largest=True)["largest_batch"]
                   for v in ("baseline", "fused")}
        ratio = largest["fused"] / max(largest["baseline"], 1)
        print(f"  largest batch: baseline {largest['baseline']}, fused {largest['fused']} (x{ratio:.2f})")
        rows.append({"variant": "largest_batch", **largest, "ratio": ratio})
    if args.json:
        Path(args.json).write_text(json.dumps({"config": {k: v for k, v in vars(args).items() if k != "one"},
                                               "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
