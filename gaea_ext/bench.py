"""Kernel-throughput profiler of gaea_ext: ``python -m gaea_ext.bench``.

Per case (op, pass, shape, K, dtype, threads) the fused gaea_ext op is compared with the
eager PyTorch way (gaea_ext.baselines: ``sum(w * y for ...)`` with autograd; for EG the
per-group loop of the released GAEA code) and with ``torch.compile`` of that eager function. The variants of one
case are timed interleaved (round-robin, order rotated every round) in one process and
summarised by median and min. Throughput uses the minimal byte model of
docs/benchmarks.md and is also given as a % of a copy bandwidth measured in the
same run. CPU: host clock, reported per thread count (targets are judged at 1 thread).
CUDA: CUDA events after warm-up, with an L2 flush (zeroing 256 MiB) before every call.

The timing helper (`time_interleaved`) and the case builders (`case_specs`, `build_case`)
are shared with the pytest-benchmark suites in benchmarks/.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Callable, Iterable, Mapping, Sequence

import torch

import gaea_ext
from gaea_ext import baselines

DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}
VARIANTS = ("fused", "eager", "compile")
OPS = ("weighted_sum", "mixed_node", "darts_node", "exp_grad")
# NB201 node 3 (3 incoming edges), ops in NB201 order: the conv outputs are "tensor" terms
NB201_NODE_KINDS = ("none", "skip", "tensor", "tensor", "avg_pool_3x3")
# A DARTS search node's edge, ops in DARTS order: the pools are followed by BatchNorm (no
# affine, batch statistics), the four separable/dilated convs are "tensor" terms.
DARTS_NODE_KINDS = ("none", "max_pool_3x3_bn", "avg_pool_3x3_bn", "skip", "tensor", "tensor", "tensor", "tensor")

EDGE_SHAPE = (64, 16, 32, 32)  # DARTS / NB201 stage-1 edge at batch 64: N = 2^20
DRAM_EXPONENTS = {"cpu": (23,), "cuda": (22, 23, 24)}  # flat N = 2^p cases, K = 8
DARTS_SEGMENTS = (2, 3, 4, 5)  # incoming edges of the 4 DARTS nodes (14 edges)
EG_LR = 0.1
EG_GRAD_SCALE = 0.01  # small arch gradients: params stay well inside the simplex over many reps
EG_SIZES = {  # per cell type: alphas [n_edges, K]; DARTS also learns per-node edge weights
    "darts": {"alphas": [(14, 8), (14, 8)], "edges": [(14,), (14,)]},
    "nb201": {"alphas": [(6, 5)], "edges": []},
}

FLUSH_BYTES = 256 * 2**20  # zeroed between CUDA timings to evict L2 (50 MB on H100)
COPY_BYTES = 256 * 2**20  # copy-bandwidth buffer


# ---------------------------------------------------------------- cases


@dataclasses.dataclass(frozen=True)
class CaseSpec:
    """What to measure: one op, pass and size (independent of device, dtype and threads)."""

    op: str  # "weighted_sum", "mixed_node", "darts_node" or "exp_grad"
    mode: str  # "fwd", "fwd+bwd" (weighted_sum) or "step" (exp_grad)
    shape: tuple[int, ...] = ()  # weighted_sum: shape of each of the K inputs
    k: int = 0  # weighted_sum: number of inputs; mixed_node: incoming edges; exp_grad: simplex row length
    size: str = ""  # exp_grad: key of EG_SIZES

    @property
    def numel(self) -> int:
        """Elements per input (weighted_sum) or in all params together (exp_grad)."""
        if self.op == "exp_grad":
            sizes = EG_SIZES[self.size]
            return sum(math.prod(s) for s in sizes["alphas"] + sizes["edges"])
        return math.prod(self.shape)

    @property
    def shape_str(self) -> str:
        if self.op == "exp_grad":
            sizes = EG_SIZES[self.size]
            parts = [_count_shapes(sizes["alphas"]), _count_shapes(sizes["edges"])]
            return f"{self.size}:" + "+".join(p for p in parts if p)
        if len(self.shape) == 1 and self.shape[0] >= 2**16:
            return f"2^{int(math.log2(self.shape[0]))}"
        return "x".join(map(str, self.shape))

    @property
    def label(self) -> str:
        """Group name of the case, e.g. ``weighted_sum fwd+bwd 64x16x32x32 K=8``."""
        k = f" K={self.k}" if self.op == "weighted_sum" else (f" E={self.k}" if self.op in ("mixed_node", "darts_node") else "")
        return f"{self.op} {self.mode} {self.shape_str}{k}"


def _count_shapes(shapes: Sequence[tuple[int, ...]]) -> str:
    """``[(14, 8), (14, 8)]`` -> ``2x[14,8]``."""
    if not shapes:
        return ""
    return f"{len(shapes)}x[{','.join(map(str, shapes[0]))}]"


def model_bytes(spec: CaseSpec, elem: int) -> int:
    """Minimal bytes moved (docs/benchmarks.md): fwd (K+1)N, bwd (2K+1)N elements;
    EG reads param and grad and writes param (3 x numel)."""
    if spec.op == "exp_grad":
        return 3 * elem * spec.numel
    if spec.op in ("mixed_node", "darts_node"):  # per edge: x and its conv outputs; pools never written
        kinds = NB201_NODE_KINDS if spec.op == "mixed_node" else DARTS_NODE_KINDS
        tensors = kinds.count("tensor")
        stats = sum(k.endswith("_bn") for k in kinds)  # the BN statistics pass reads x once per pool
        fwd = elem * (spec.k * (1 + tensors + stats) + 1) * spec.numel
        bwd = elem * (1 + 2 * spec.k * (1 + tensors) + spec.k * 2 * stats) * spec.numel
        return fwd if spec.mode == "fwd" else fwd + bwd
    fwd = elem * (spec.k + 1) * spec.numel
    bwd = elem * (2 * spec.k + 1) * spec.numel
    return fwd if spec.mode == "fwd" else fwd + bwd


def case_specs(
    device_type: str, *, quick: bool = False, ops: Iterable[str] = OPS
) -> list[CaseSpec]:
    """The profiler's cases for a device; ``quick`` drops the DRAM-sized ones."""
    ops = set(ops)
    specs = []
    if "weighted_sum" in ops:
        sizes = [(EDGE_SHAPE, 8), (EDGE_SHAPE, 5)]
        if not quick:
            sizes += [((2**p,), 8) for p in DRAM_EXPONENTS[device_type]]
        for shape, k in sizes:
            for mode in ("fwd", "fwd+bwd"):
                specs.append(CaseSpec("weighted_sum", mode, shape, k))
    if "mixed_node" in ops:
        for mode in ("fwd", "fwd+bwd"):
            specs.append(CaseSpec("mixed_node", mode, EDGE_SHAPE, 3))
    if "darts_node" in ops:
        for mode in ("fwd", "fwd+bwd"):
            specs.append(CaseSpec("darts_node", mode, EDGE_SHAPE, 2))
    if "exp_grad" in ops:
        specs.append(CaseSpec("exp_grad", "step", k=8, size="darts"))
        specs.append(CaseSpec("exp_grad", "step", k=5, size="nb201"))
    return specs


@dataclasses.dataclass
class Case:
    """A case made ready to run: one zero-argument callable per variant."""

    spec: CaseSpec
    device: torch.device
    dtype: torch.dtype
    variants: dict[str, Callable[[], object]]
    compile_s: float | None = None  # cold compile time of the "compile" variant

    @property
    def nbytes(self) -> int:
        return model_bytes(self.spec, torch.empty((), dtype=self.dtype).element_size())


def build_case(
    spec: CaseSpec,
    device: torch.device | str,
    dtype: torch.dtype = torch.float32,
    variants: Sequence[str] = VARIANTS,
) -> Case:
    """Allocate inputs and build the requested variants; the "compile" variant is compiled
    here (its first call is timed as compile_s) and dropped with a warning if that fails."""
    device = torch.device(device)
    torch.manual_seed(0)
    build = {"weighted_sum": _weighted_sum_variant, "mixed_node": _mixed_node_variant,
             "darts_node": _darts_node_variant, "exp_grad": _exp_grad_variant}[spec.op]
    fns = {name: build(spec, name, device, dtype) for name in variants}
    case = Case(spec, device, dtype, fns)
    if "compile" in fns:
        try:
            case.compile_s = first_call_seconds(fns["compile"], device)
        except Exception as exc:  # e.g. no C++ compiler for inductor
            print(f"warning: torch.compile failed for {spec.label}: {exc!r}", file=sys.stderr)
            del fns["compile"]
    return case


def first_call_seconds(fn: Callable[[], object], device: torch.device) -> float:
    """Wall time of one call, synchronised (used for the cold compile)."""
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def _weighted_sum_variant(
    spec: CaseSpec, name: str, device: torch.device, dtype: torch.dtype
) -> Callable[[], object]:
    """One weighted_sum variant: forward only, or forward + autograd.grad for every input
    and the weights (grads are returned, not accumulated into .grad)."""
    backward = spec.mode == "fwd+bwd"
    gen = torch.Generator(device=device).manual_seed(0)
    ys = [
        torch.randn(spec.shape, generator=gen, device=device, dtype=dtype).requires_grad_(backward)
        for _ in range(spec.k)
    ]
    # float32 mixing weights (softmax-like) with any input dtype: the common case
    w = torch.softmax(torch.randn(spec.k, generator=gen, device=device), 0)
    w.requires_grad_(backward)
    impl = {
        "fused": gaea_ext.weighted_sum,
        "eager": baselines.eager_weighted_sum,
        "compile": torch.compile(baselines.eager_weighted_sum, dynamic=False),
    }[name]
    if not backward:
        return lambda: impl(ys, w)
    grad_out = torch.randn(spec.shape, generator=gen, device=device, dtype=dtype)
    leaves = [*ys, w]
    return lambda: torch.autograd.grad(impl(ys, w), leaves, grad_out)


def _mixed_node_variant(
    spec: CaseSpec, name: str, device: torch.device, dtype: torch.dtype
) -> Callable[[], object]:
    """An NB201 node with spec.k incoming edges: fused mixed_node vs the eager formulation."""
    backward = spec.mode == "fwd+bwd"
    gen = torch.Generator(device=device).manual_seed(0)

    def rand():
        return torch.randn(spec.shape, generator=gen, device=device, dtype=dtype).requires_grad_(backward)

    xs = [rand() for _ in range(spec.k)]
    convs = [[rand(), rand()] for _ in range(spec.k)]
    w = torch.softmax(torch.randn(spec.k, len(NB201_NODE_KINDS), generator=gen, device=device), -1)
    w.requires_grad_(backward)

    def fused(xs, convs, w):
        return gaea_ext.mixed_node([(x, c, NB201_NODE_KINDS) for x, c in zip(xs, convs)], w)

    impl = {"fused": fused, "eager": baselines.eager_nb201_node,
            "compile": torch.compile(baselines.eager_nb201_node, dynamic=False)}[name]
    if not backward:
        return lambda: impl(xs, convs, w)
    grad_out = torch.randn(spec.shape, generator=gen, device=device, dtype=dtype)
    leaves = [*xs, *(c for cs in convs for c in cs), w]
    return lambda: torch.autograd.grad(impl(xs, convs, w), leaves, grad_out)


def fused_darts_node(xs, convs, w, bns):
    """The same node as one mixed_node call, with the pools' BatchNorm statistics from
    pool_batch_norm (no pooled tensor is materialised)."""
    norms = []
    for x, (bn_max, bn_avg) in zip(xs, bns):
        norms += [gaea_ext.pool_batch_norm(x, "max_pool_3x3", bn_max), gaea_ext.pool_batch_norm(x, "avg_pool_3x3", bn_avg)]
    return gaea_ext.mixed_node([(x, c, DARTS_NODE_KINDS) for x, c in zip(xs, convs)], w, norms)


def _darts_node_variant(
    spec: CaseSpec, name: str, device: torch.device, dtype: torch.dtype
) -> Callable[[], object]:
    """A DARTS search node with spec.k incoming edges (BN-followed pools, training mode)."""
    backward = spec.mode == "fwd+bwd"
    gen = torch.Generator(device=device).manual_seed(0)

    def rand():
        return torch.randn(spec.shape, generator=gen, device=device, dtype=dtype).requires_grad_(backward)

    xs = [rand() for _ in range(spec.k)]
    convs = [[rand() for _ in range(DARTS_NODE_KINDS.count("tensor"))] for _ in range(spec.k)]
    w = torch.softmax(torch.randn(spec.k, len(DARTS_NODE_KINDS), generator=gen, device=device), -1)
    w.requires_grad_(backward)
    C = spec.shape[1]
    bns = [[torch.nn.BatchNorm2d(C, affine=False).to(device) for _ in range(2)] for _ in range(spec.k)]
    impl = {"fused": fused_darts_node, "eager": baselines.eager_darts_node,
            "compile": torch.compile(baselines.eager_darts_node, dynamic=False)}[name]
    if not backward:
        return lambda: impl(xs, convs, w, bns)
    grad_out = torch.randn(spec.shape, generator=gen, device=device, dtype=dtype)
    leaves = [*xs, *(c for cs in convs for c in cs), w]
    return lambda: torch.autograd.grad(impl(xs, convs, w, bns), leaves, grad_out)


def _exp_grad_variant(
    spec: CaseSpec, name: str, device: torch.device, dtype: torch.dtype
) -> Callable[[], object]:
    """One EG variant on its own copy of the params (every step updates them in place)."""
    sizes = EG_SIZES[spec.size]
    gen = torch.Generator(device=device).manual_seed(0)

    def grad_like(t: torch.Tensor) -> torch.Tensor:
        return EG_GRAD_SCALE * torch.randn(t.shape, generator=gen, device=device, dtype=dtype)

    alphas = [torch.full(s, 1.0 / s[-1], device=device, dtype=dtype) for s in sizes["alphas"]]
    edges = [_edge_init(device, dtype) for _ in sizes["edges"]]
    state = (alphas, [grad_like(a) for a in alphas], edges, [grad_like(b) for b in edges])
    impl = {
        "fused": fused_eg_step,
        "eager": release_eg_step,
        "compile": torch.compile(release_eg_step, dynamic=False),
    }[name]
    return lambda: impl(*state)


def _edge_init(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """DARTS edge weights: edge j -> node i starts at 1 / (inputs of node i)."""
    return torch.cat([torch.full((n,), 1.0 / n, dtype=dtype) for n in DARTS_SEGMENTS]).to(device)


def fused_eg_step(alphas, alpha_grads, edges, edge_grads) -> None:
    """GAEA EG step with gaea_ext: alphas (clamped rows) and edge weights (per-node
    segments, no clamp) in ONE fused call, with the default finite check (one flag read)."""
    segments = [None] * len(alphas) + [list(DARTS_SEGMENTS)] * len(edges)
    min_values = [1e-5] * len(alphas) + [0.0] * len(edges)
    gaea_ext.exp_grad_step_multi_(
        list(alphas) + list(edges), list(alpha_grads) + list(edge_grads), EG_LR,
        segments=segments if edges else None, min_value=min_values,
    )


def release_eg_step(alphas, alpha_grads, edges, edge_grads) -> None:
    """GAEA EG step as the released code does it: per tensor, then a Python loop per node."""
    for a, g in zip(alphas, alpha_grads):
        baselines.exp_grad_step_release(a, g, EG_LR)
    for b, g in zip(edges, edge_grads):
        baselines.edge_step_release(b, g, EG_LR, list(DARTS_SEGMENTS))


# ---------------------------------------------------------------- timing


@dataclasses.dataclass
class Timing:
    """Per-call samples of one variant, in seconds."""

    times: list[float] = dataclasses.field(default_factory=list)  # CUDA events / host clock
    host_times: list[float] = dataclasses.field(default_factory=list)  # host time issuing the call

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def min(self) -> float:
        return min(self.times)

    @property
    def host_median(self) -> float:
        return statistics.median(self.host_times)


def sync(device: torch.device) -> None:
    """Wait for the device (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_l2_flush(device: torch.device | str) -> Callable[[], object] | None:
    """On CUDA, a callable zeroing a 256 MiB buffer (evicts L2); None elsewhere."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    return torch.empty(FLUSH_BYTES, dtype=torch.uint8, device=device).zero_


def _time_round(
    fns: Mapping[str, Callable[[], object]],
    order: Sequence[str],
    device: torch.device,
    flush: Callable[[], object] | None,
) -> dict[str, tuple[float, float]]:
    """One call of each variant in `order`: name -> (time, host time) in seconds."""
    out = {}
    if device.type != "cuda":
        for name in order:
            t0 = time.perf_counter()
            fns[name]()
            out[name] = (time.perf_counter() - t0,) * 2
        return out
    pending = []
    for name in order:
        if flush is not None:
            flush()
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        t0 = time.perf_counter()
        fns[name]()
        host = time.perf_counter() - t0
        end.record()
        pending.append((name, start, end, host))
    torch.cuda.synchronize(device)
    return {name: (s.elapsed_time(e) / 1e3, host) for name, s, e, host in pending}


def time_interleaved(
    fns: Mapping[str, Callable[[], object]],
    device: torch.device | str = "cpu",
    *,
    budget_s: float = 1.0,
    min_reps: int = 5,
    max_reps: int = 2000,
    warmup: int = 2,
    flush: Callable[[], object] | None = None,
) -> dict[str, Timing]:
    """Time zero-argument callables round-robin (one call of each per round, the order
    rotated every round) after `warmup` rounds. The number of rounds fits `budget_s`
    within [min_reps, max_reps]. GC is off while timing."""
    device = torch.device(device)
    names = list(fns)
    timings = {name: Timing() for name in names}
    gc.collect()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for r in range(warmup):
            _time_round(fns, names, device, flush)
        t0 = time.perf_counter()
        reps, r = min_reps, 0
        while r < reps:
            order = names[r % len(names):] + names[: r % len(names)]
            for name, (t, host) in _time_round(fns, order, device, flush).items():
                timings[name].times.append(t)
                timings[name].host_times.append(host)
            if r == 0:  # size the run from the first timed round
                round_s = max(time.perf_counter() - t0, 1e-9)
                reps = max(min_reps, min(max_reps, int(budget_s / round_s)))
            r += 1
    finally:
        if gc_was_enabled:
            gc.enable()
    return timings


def copy_bandwidth(device: torch.device | str, **timing_kw) -> float:
    """GB/s of ``dst.copy_(src)`` on 256 MiB (bytes = 2 x size), timed like the cases."""
    src = torch.ones(COPY_BYTES, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    timing = time_interleaved({"copy": lambda: dst.copy_(src)}, device, **timing_kw)["copy"]
    return 2 * COPY_BYTES / timing.median / 1e9


def measure_speedup(
    spec: CaseSpec,
    device: torch.device | str,
    baseline: str,
    *,
    dtype: torch.dtype = torch.float32,
    **timing_kw,
) -> tuple[float, dict[str, Timing]]:
    """median(baseline) / median(fused) for one case, the two timed interleaved."""
    case = build_case(spec, device, dtype, variants=("fused", baseline))
    if baseline not in case.variants:
        raise RuntimeError(f"{spec.label}: the {baseline!r} variant could not be built")
    timings = time_interleaved(case.variants, device, flush=make_l2_flush(device), **timing_kw)
    return timings[baseline].median / timings["fused"].median, timings


# ---------------------------------------------------------------- results


def result_rows(
    case: Case, timings: Mapping[str, Timing], copy_gbps: float, threads: int
) -> list[dict]:
    """One row per variant: times, GB/s, % of copy bandwidth, speedups vs eager / compile."""
    spec = case.spec
    rows = []
    for name, t in timings.items():
        gbps = case.nbytes / t.median / 1e9
        rows.append({
            "case": spec.label,
            "op": spec.op,
            "mode": spec.mode,
            "shape": spec.shape_str,
            "K": spec.k,
            "N": spec.numel,
            "dtype": DTYPE_NAMES[case.dtype],
            "device": case.device.type,
            "threads": threads,
            "variant": name,
            "reps": len(t.times),
            "median_s": t.median,
            "min_s": t.min,
            "host_median_s": t.host_median,
            "bytes": case.nbytes,
            "gbps": gbps,
            "pct_copy": 100.0 * gbps / copy_gbps,
            "vs_eager": _speedup(timings, "eager", t),
            "vs_compile": _speedup(timings, "compile", t),
            "compile_s": case.compile_s if name == "compile" else None,
        })
    return rows


def _speedup(timings: Mapping[str, Timing], baseline: str, t: Timing) -> float | None:
    """baseline median / this median (>1: faster than the baseline)."""
    return timings[baseline].median / t.median if baseline in timings else None


def _fmt_time(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:8.1f} us"
    if seconds < 1.0:
        return f"{seconds * 1e3:8.3f} ms"
    return f"{seconds:8.3f} s "


def _fmt_percent(x: float) -> str:
    return f"{x:.0f}%" if x >= 10 else f"{x:.2g}%"


def _fmt_ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


TABLE_COLUMNS = (  # (title, width, alignment, row -> text)
    ("op", 12, "<", lambda r: r["op"]),
    ("pass", 7, "<", lambda r: r["mode"]),
    ("shape", 21, "<", lambda r: r["shape"]),
    ("K", 2, "<", lambda r: str(r["K"])),
    ("dtype", 8, "<", lambda r: r["dtype"]),
    ("thr", 3, "<", lambda r: str(r["threads"])),
    ("variant", 7, "<", lambda r: r["variant"]),
    ("median", 11, ">", lambda r: _fmt_time(r["median_s"])),
    ("min", 11, ">", lambda r: _fmt_time(r["min_s"])),
    ("GB/s", 7, ">", lambda r: f"{r['gbps']:.3g}"),
    ("%copy", 6, ">", lambda r: _fmt_percent(r["pct_copy"])),
    ("vs eager", 8, ">", lambda r: _fmt_ratio(r["vs_eager"])),
    ("vs compile", 10, ">", lambda r: _fmt_ratio(r["vs_compile"])),
)
HOST_COLUMN = ("host", 11, ">", lambda r: _fmt_time(r["host_median_s"]))  # CUDA: CPU time issuing


def table_columns(device_type: str) -> tuple:
    return TABLE_COLUMNS + ((HOST_COLUMN,) if device_type == "cuda" else ())


def format_header(columns) -> str:
    line = "  ".join(f"{title:{align}{width}}" for title, width, align, _ in columns)
    return line + "\n" + "-" * len(line)


def format_row(row: dict, columns) -> str:
    return "  ".join(f"{fn(row):{align}{width}}" for _, width, align, fn in columns)


# ---------------------------------------------------------------- machine info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str | None:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        out = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def machine_info(device: torch.device) -> dict:
    """Where the numbers came from."""
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_model(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda,
        "python": platform.python_version(),
        "default_threads": torch.get_num_threads(),
        "backend": gaea_ext.backend(device.type),
        "build_info": gaea_ext.build_info(),
        "git_commit": _git_commit(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["gpu_sm_count"] = props.multi_processor_count
    return info


# ---------------------------------------------------------------- command line


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m gaea_ext.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="float32", choices=list(DTYPES))
    p.add_argument("--threads", default="1,2",
                   help="CPU thread counts, comma-separated (default 1,2; ignored on CUDA)")
    p.add_argument("--ops", default=",".join(OPS), help="comma-separated subset of " + ",".join(OPS))
    p.add_argument("--json", metavar="PATH", help="also write rows and machine info as JSON")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: few reps, no torch.compile, no DRAM-sized cases")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds of timing per case (default: 1.5 CPU, 0.5 CUDA, 0.1 quick)")
    args = p.parse_args(argv)
    args.threads = [int(t) for t in args.threads.split(",") if t]
    args.ops = [o for o in args.ops.split(",") if o]
    unknown = set(args.ops) - set(OPS)
    if unknown:
        p.error(f"--ops: unknown {sorted(unknown)}; expected a subset of {list(OPS)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    return args


def _timing_kw(args: argparse.Namespace, device: torch.device) -> dict:
    """time_interleaved settings for this run."""
    budget = args.budget or (0.1 if args.quick else 0.5 if device.type == "cuda" else 1.5)
    return {"budget_s": budget, "min_reps": 3 if args.quick else 7, "warmup": 2 if args.quick else 3,
            "flush": make_l2_flush(device)}


def run(args: argparse.Namespace) -> dict:
    """Measure every case at every thread count, printing rows as they come."""
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    variants = [v for v in VARIANTS if not (args.quick and v == "compile")]
    threads_list = args.threads if device.type == "cpu" else [torch.get_num_threads()]
    timing_kw = _timing_kw(args, device)
    info = machine_info(device)
    print(f"gaea_ext.bench: {info['device']} | torch {info['torch_version']} | "
          f"backend {info['backend']} | dtype {args.dtype} | commit {info['git_commit']}")
    if info["backend"] == "reference":
        print("note: the C++ extension is not built; 'fused' is the pure-PyTorch reference")
    columns = table_columns(device.type)
    rows, copy_gbps, compile_s = [], {}, {}
    for threads in threads_list:
        torch.set_num_threads(threads)
        torch._dynamo.reset()  # inductor CPU kernels specialise on the thread count
        copy_gbps[threads] = copy_bandwidth(device, **timing_kw)
        print(f"\nthreads={threads}: copy bandwidth {copy_gbps[threads]:.1f} GB/s "
              f"(256 MiB dst.copy_(src), bytes = 2 x size)")
        print(format_header(columns))
        for spec in case_specs(device.type, quick=args.quick, ops=args.ops):
            case = build_case(spec, device, dtype, variants)
            timings = time_interleaved(case.variants, device, **timing_kw)
            case.variants = {}  # free the inputs before the next case
            new = result_rows(case, timings, copy_gbps[threads], threads)
            for row in new:
                print(format_row(row, columns), flush=True)
            if case.compile_s is not None:
                compile_s[f"{spec.label} threads={threads}"] = case.compile_s
            rows += new
    if compile_s:
        print("\ntorch.compile time (first call, outside the timing; inductor's on-disk cache "
              "makes repeated runs faster than a cold compile):")
        for label, seconds in compile_s.items():
            print(f"  {label}: {seconds:.1f} s")
    return {"machine": info, "dtype": args.dtype, "quick": args.quick, "threads": threads_list,
            "timing": {k: v for k, v in timing_kw.items() if k != "flush"},
            "copy_gbps": copy_gbps, "compile_s": compile_s, "rows": rows}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
