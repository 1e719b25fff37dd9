"""Run every gaea_ext CUDA kernel once on small inputs (for compute-sanitizer), checking each
result against gaea_ext.reference. Used by benchmarks/gpu_check.sh:

    compute-sanitizer --tool memcheck python benchmarks/cuda_kernels_once.py
    python benchmarks/cuda_kernels_once.py cpu      # the same checks on the CPU kernels
"""
import sys

import torch

import gaea_ext
from gaea_ext import reference

DEVICE = torch.device(sys.argv[1] if len(sys.argv) > 1 else "cuda")
SHAPE = (3, 5, 17, 19)  # 4845 elements: not a multiple of any vector width
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2, torch.float64: 1e-12}


def check_close(name, got, want, dtype):
    tol = TOL[dtype]
    if not torch.allclose(got.double(), want.double(), rtol=tol, atol=tol):
        err = (got.double() - want.double()).abs().max().item()
        raise AssertionError(f"{name}: max abs error {err:.3g} > {tol:g}")
    print(f"ok  {name}")


def check_reduction_close(name, got, want, dtype, terms):
    """`check_close` for sums of `terms` products (weight and norm gradients): their rounding
    grows with the terms summed (about sqrt(terms) ulps, in any order), not with the result,
    which may cancel to near 0; a wrong gradient is off by O(1) of that scale."""
    scale = max(1.0, want.abs().max().item(), terms ** 0.5)
    check_close(name, got / scale, want / scale, dtype)


def weighted_sum_once(k, dtype, channels_last=False):
    """Forward and fused backward (grads for inputs and weights) against the reference."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    ys = [torch.randn(SHAPE, device=DEVICE, dtype=dtype).to(memory_format=fmt).requires_grad_()
          for _ in range(k)]
    w = torch.softmax(torch.randn(k, device=DEVICE), 0).requires_grad_()
    out = gaea_ext.weighted_sum(ys, w)
    grad_out = torch.randn_like(out)
    grads = torch.autograd.grad(out, [*ys, w], grad_out)
    ref_out = reference.weighted_sum(ys, w)
    ref_grads = torch.autograd.grad(ref_out, [*ys, w], grad_out)
    name = f"weighted_sum K={k} {dtype} {'channels_last' if channels_last else 'contiguous'}"
    check_close(name + " fwd", out, ref_out, dtype)
    check_close(name + " bwd inputs", torch.stack(grads[:-1]), torch.stack(ref_grads[:-1]), dtype)
    weights_tol = torch.float32 if dtype == torch.float64 else dtype  # weights are float32
    check_reduction_close(name + " bwd weights", grads[-1], ref_grads[-1], weights_tol, out.numel())


def mixed_node_once(dtype, channels_last=False, edges=3):
    """mixed_node forward and backward (xs, conv outputs, weights) on an NB201-like node."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    kinds = ["none", "skip", "tensor", "max_pool_3x3", "tensor", "avg_pool_3x3"]

    def rand():
        return torch.randn(SHAPE, device=DEVICE, dtype=dtype).to(memory_format=fmt).requires_grad_()

    xs = [rand() for _ in range(edges)]
    convs = [[rand(), rand()] for _ in range(edges)]
    w = torch.rand(edges, len(kinds), device=DEVICE, requires_grad=True)
    out = gaea_ext.mixed_node([(x, c, kinds) for x, c in zip(xs, convs)], w)
    leaves = [*xs, *(c for cs in convs for c in cs), w]
    grad_out = torch.randn_like(out)
    grads = torch.autograd.grad(out, leaves, grad_out)
    outputs = [c for cs in convs for c in cs]
    flat_kinds, sources = [], []
    for e in range(edges):
        t = 0
        for k in kinds:
            flat_kinds.append(k)
            sources.append(2 * e + t if k == "tensor" else e)
            t += k == "tensor"
    ref = reference.mixed_node(xs, outputs, w.reshape(-1), flat_kinds, sources)
    ref_grads = torch.autograd.grad(ref, leaves, grad_out)
    name = f"mixed_node E={edges} {dtype} {'channels_last' if channels_last else 'contiguous'}"
    check_close(name + " fwd", out, ref, dtype)
    check_close(name + " bwd xs+outputs", torch.stack(grads[:-1]), torch.stack(ref_grads[:-1]), dtype)
    weights_tol = torch.float32 if dtype == torch.float64 else dtype
    check_reduction_close(name + " bwd weights", grads[-1], ref_grads[-1], weights_tol, out.numel())


def darts_node_once(dtype, channels_last=False, pairs=1):
    """mixed_op with the DARTS search pools (pool + BatchNorm without affine, `pairs` of them)
    and a GDAS "ones" term, with the norms from pool_stats, forward and backward against the
    reference."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    kinds = ["avg_pool_3x3_bn", "tensor", "max_pool_3x3_bn", "skip", "ones"] + ["avg_pool_3x3_bn", "max_pool_3x3_bn"] * (
        pairs - 1)
    x = torch.randn(SHAPE, device=DEVICE, dtype=dtype).to(memory_format=fmt).requires_grad_()
    y = torch.randn(SHAPE, device=DEVICE, dtype=dtype).to(memory_format=fmt).requires_grad_()
    w = torch.rand(len(kinds), device=DEVICE, requires_grad=True)
    norms = []
    for kind in ("avg_pool_3x3", "max_pool_3x3"):
        stats = gaea_ext.pool_stats(x, kind)
        ref_stats = reference.pool_stats(x, kind)
        check_close(f"pool_stats {kind} {dtype} fwd", stats, ref_stats, dtype)
        g = torch.randn_like(stats)
        got, = torch.autograd.grad(stats, x, g)
        want, = torch.autograd.grad(ref_stats, x, g)
        check_close(f"pool_stats {kind} {dtype} bwd", got, want, dtype)
        norms.append(torch.stack([stats[0], torch.rsqrt(stats[1] + 1e-5)]).detach())
    norms = [n.clone().requires_grad_() for _ in range(pairs) for n in norms]
    out = gaea_ext.mixed_op(x, [y], w, kinds, norms)
    ref = reference.mixed_node([x], [y], w, kinds, [0] * len(kinds), torch.stack(norms))
    grad_out = torch.randn_like(out)
    leaves = [x, y, w, *norms]
    grads = torch.autograd.grad(out, leaves, grad_out)
    ref_grads = torch.autograd.grad(ref, leaves, grad_out)
    name = f"mixed_node {2 * pairs} BN kinds {dtype} {'channels_last' if channels_last else 'contiguous'}"
    check_close(name + " fwd", out, ref, dtype)
    check_close(name + " bwd x", grads[0], ref_grads[0], dtype)
    check_close(name + " bwd output", grads[1], ref_grads[1], dtype)
    weights_tol = torch.float32 if dtype == torch.float64 else dtype
    check_reduction_close(name + " bwd weights", grads[2], ref_grads[2], weights_tol, out.numel())
    check_reduction_close(name + " bwd norms", torch.stack(grads[3:]), torch.stack(ref_grads[3:]), weights_tol,
                          out.numel() // out.shape[1])


def partial_channel_once(dtype):
    """partial_channel_node on a reduction-like node (two stride-2 states with odd sizes,
    one stride-1 state), forward and backward against the reference."""
    K, q, Ho, Wo = 4, 3, 8, 9
    mixed = torch.randn(2, q, Ho, Wo, device=DEVICE, dtype=dtype, requires_grad=True)
    states = [torch.randn(2, q * K, 2 * Ho + 1, 2 * Wo, device=DEVICE, dtype=dtype, requires_grad=True),
              torch.randn(2, q * K, 2 * Ho, 2 * Wo + 1, device=DEVICE, dtype=dtype, requires_grad=True),
              torch.randn(2, q * K, Ho, Wo, device=DEVICE, dtype=dtype, requires_grad=True)]
    w = torch.rand(3, device=DEVICE, requires_grad=True)
    strides = [2, 2, 1]
    out = gaea_ext.partial_channel_node(mixed, states, w, strides, K)
    ref = reference.partial_channel_node(mixed, states, w, strides, K)
    g = torch.randn_like(out)
    leaves = [mixed, *states, w]
    grads = torch.autograd.grad(out, leaves, g)
    ref_grads = torch.autograd.grad(ref, leaves, g)
    name = f"partial_channel_node {dtype}"
    check_close(name + " fwd", out, ref, dtype)
    check_close(name + " bwd mixed", grads[0], ref_grads[0], dtype)
    for e in range(3):
        check_close(name + f" bwd states[{e}]", grads[1 + e], ref_grads[1 + e], dtype)
    weights_tol = torch.float32 if dtype == torch.float64 else dtype
    check_reduction_close(name + " bwd weights", grads[-1], ref_grads[-1], weights_tol, out.numel())


def exp_grad_once(segments, adaptive, order="clamp_then_normalize", entropic_reg=0.0):
    """exp_grad_step_multi_ on two params (one fused call) against the reference."""
    row = sum(segments) if segments else 8
    params = [torch.softmax(torch.randn(14, row, device=DEVICE), -1) for _ in range(2)]
    grads = [torch.randn_like(p) for p in params]
    want = [reference.exp_grad_step(p, g, 0.1, segments=segments, min_value=1e-5, order=order,
                                    entropic_reg=entropic_reg, adaptive=adaptive)
            for p, g in zip(params, grads)]
    gaea_ext.exp_grad_step_multi_(params, grads, 0.1, segments=segments, order=order,
                                  entropic_reg=entropic_reg, adaptive=adaptive)
    name = f"exp_grad_step_multi_ segments={segments} adaptive={adaptive} order={order} reg={entropic_reg}"
    check_close(name, torch.stack(params), torch.stack(want), torch.float32)


def exp_grad_mixed_once(num_params=3):
    """One fused call over params with different options (DARTS alphas and per-node edge
    weights), plus more params than one CUDA launch batch holds when num_params is large."""
    params, grads, segments, mins, regs = [], [], [], [], []
    for t in range(num_params):
        if t % 2 == 0:
            p = torch.softmax(torch.randn(14, 8, device=DEVICE), -1)
            segments.append(None), mins.append(1e-5), regs.append(0.01)
        else:
            p = torch.cat([torch.softmax(torch.randn(n, device=DEVICE), 0) for n in (2, 3, 4, 5)])
            segments.append([2, 3, 4, 5]), mins.append(0.0), regs.append(0.0)
        params.append(p)
        grads.append(torch.randn_like(p))
    want = [reference.exp_grad_step(p, g, 0.1, segments=s, min_value=m, entropic_reg=r)
            for p, g, s, m, r in zip(params, grads, segments, mins, regs)]
    gaea_ext.exp_grad_step_multi_(params, grads, 0.1, segments=segments, min_value=mins, entropic_reg=regs)
    for t, (p, w) in enumerate(zip(params, want)):
        check_close(f"exp_grad_step_multi_ mixed options ({num_params} params) [{t}]", p, w, torch.float32)


def exp_grad_nonfinite_once():
    """The no-sync failure path: a NaN grad sets the flag and leaves the params untouched."""
    p = torch.full((6, 5), 0.2, device=DEVICE)
    g = torch.zeros_like(p)
    g[2, 3] = float("nan")
    flag = gaea_ext.exp_grad_step_multi_([p], [g], 0.1, check_finite=False)
    assert int(flag) != 0 and bool((p == 0.2).all()), "NaN grad must flag and leave param as is"
    print("ok  exp_grad_step_multi_ NaN grad flagged, param untouched")


def main() -> int:
    if gaea_ext.backend(DEVICE) == "reference":
        print(f"gaea_ext kernels for {DEVICE} are not built (backend {gaea_ext.backend(DEVICE)!r})")
        return 1
    torch.manual_seed(0)
    limits = gaea_ext.cuda_limits()
    per_row = limits["dot_row_bytes"] // 4  # float sums one row of blocks keeps in registers
    for dtype in (torch.float32, torch.float16):
        weighted_sum_once(3, dtype)
        weighted_sum_once(limits["weighted_sum_inputs_per_launch"] + 6, dtype)  # several launches
        weighted_sum_once(3, dtype, channels_last=True)
    weighted_sum_once(5, torch.bfloat16)
    weighted_sum_once(4, torch.float64)
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        mixed_node_once(dtype)
    mixed_node_once(torch.float32, channels_last=True)
    mixed_node_once(torch.float32, edges=per_row // 5 + 1)  # 5 weight-gradient terms an edge: two rows of blocks
    for dtype in (torch.float32, torch.float64):  # half types: tests/test_pool_batch_norm.py (looser tolerances)
        darts_node_once(dtype)
    darts_node_once(torch.float32, channels_last=True)
    darts_node_once(torch.float32, pairs=per_row // 2 + 1)  # BN terms and sum(g): two chunks of per-plane sums
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        partial_channel_once(dtype)
    exp_grad_once(None, adaptive=False)
    exp_grad_once([2, 3, 4, 5], adaptive=False)
    exp_grad_once([2, 3, 4, 5], adaptive=True)
    exp_grad_once(None, adaptive=False, order="normalize_then_clamp", entropic_reg=0.01)
    exp_grad_mixed_once(3)
    exp_grad_mixed_once(limits["exp_grad_params_per_launch"] + 5)  # more than one launch batch
    exp_grad_nonfinite_once()
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()
    return 0


if __name__ == "__main__":
    sys.exit(main())
