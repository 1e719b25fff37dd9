"""Speed and memory of each gaea_ext.nn porting level of a DARTS-style search network
(docs/porting.md): the original ``sum(w * op(x))``, ``gaea_ext.weighted_sum``, the MixedOp
port, the MixedNode port and, on the MixedNode port, an architecture step that computes the
architecture gradients only (``gaea_ext.nn.arch_grads``); plus the PC-DARTS-style network and
its PartialChannelNode port. The networks are the peers'-style ones of tests/test_nn.py.

One training step = forward + cross-entropy + backward (every gradient, or the architecture
gradients only). Images/s: the median over ``--runs`` rounds, the levels alternating within
each round, of ``batch * iters / seconds``; min-max range printed too. Memory: the bytes of
the tensors autograd saves for the backward in one step (storages counted once).

    python benchmarks/porting_levels.py --threads 1 --batch 32 --C 16 --layers 3 --size 16 --runs 5
"""
import argparse
import datetime
import importlib.util
import json
import pathlib
import platform
import statistics
import subprocess
import time

import torch
import torch.nn.functional as F

import gaea_ext

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_networks():
    spec = importlib.util.spec_from_file_location("porting_networks", ROOT / "tests" / "test_nn.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


LEVELS = ["original", "weighted_sum", "MixedOp", "MixedNode", "MixedNode, arch grads only",
          "PC-DARTS original", "PC-DARTS PartialChannelNode"]


def build(nets, level, args):
    if level.startswith("PC-DARTS"):
        return nets.pc_darts_network("original" if level.endswith("original") else "PartialChannelNode",
                                     C=args.C, layers=args.layers)
    return nets.darts_network(level.split(",")[0], C=args.C, layers=args.layers)


def step(net, level, x, target):
    loss = F.cross_entropy(net(x), target)
    if level.endswith("arch grads only"):
        gaea_ext.nn.arch_grads(loss, [net.alphas_normal, net.alphas_reduce])
    else:
        loss.backward()
    net.zero_grad(set_to_none=True)


def saved_bytes(net, level, x, target):
    seen = {}

    def pack(t):
        try:
            key = (t.untyped_storage().data_ptr(), t.device)
            seen[key] = max(seen.get(key, 0), t.untyped_storage().nbytes())
        except (RuntimeError, NotImplementedError):
            pass
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step(net, level, x, target)
    return sum(seen.values())


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--C", type=int, default=16)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--size", type=int, default=16)
    p.add_argument("--iters", type=int, default=2, help="steps per timed run")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--levels", nargs="*", default=LEVELS)
    p.add_argument("--json", type=pathlib.Path)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    nets = load_networks()
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, args.size, args.size)
    target = torch.randint(0, 10, (args.batch,))
    models = {level: build(nets, level, args) for level in args.levels}
    memory = {}
    for level, net in models.items():  # warm-up (probes, allocator) and the saved-tensor bytes
        step(net, level, x, target)
        memory[level] = saved_bytes(net, level, x, target)
    speed = {level: [] for level in models}
    for _ in range(args.runs):
        for level, net in models.items():
            t0 = time.perf_counter()
            for _ in range(args.iters):
                step(net, level, x, target)
            speed[level].append(args.batch * args.iters / (time.perf_counter() - t0))
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"# porting levels: {cpu}, {args.threads} thread(s), batch {args.batch}, C={args.C}, "
          f"{args.layers} cells, {args.size}x{args.size}, float32; commit {commit}, {date}; "
          f"median of {args.runs} alternating runs of {args.iters} steps")
    print("| level | images/s (median) | min-max | saved for backward (MiB) |")
    print("|---|---|---|---|")
    rows = []
    for level in models:
        med = statistics.median(speed[level])
        rows.append({"level": level, "median": med, "min": min(speed[level]), "max": max(speed[level]),
                     "saved_mib": memory[level] / 2 ** 20})
        print(f"| {level} | {med:.1f} | {min(speed[level]):.1f}-{max(speed[level]):.1f} | "
              f"{memory[level] / 2 ** 20:.1f} |")
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu, "commit": commit, "date": date, "args": vars(args) | {"json": None},
                                         "rows": rows}, indent=1, default=str))


if __name__ == "__main__":
    main()
