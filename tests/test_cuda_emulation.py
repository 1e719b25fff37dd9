"""The CUDA emulation (tests/cuda_emulation/) itself: the translation of launches, what its
scheduler computes and what it refuses, and that the package's CUDA kernels give the same
bits whichever order blocks, and threads between barriers, run in."""
import contextlib
import os
import runpy
import sys

import pytest
import torch

import gaea_ext
from conftest import cuda_limit, requires_kernels
from cuda_emulation import build as emulation

# Under GAEA_CUDA_EMULATION=1 every CPU call is already emulated: nothing to compare with.
pytestmark = pytest.mark.skipif(os.environ.get("GAEA_CUDA_EMULATION") == "1", reason="compares with the CPU kernels")


@pytest.fixture(scope="module")
def emu():
    return emulation.ops()


def test_translation_rewrites_every_launch_and_keeps_lines():
    for cu in emulation.CUDA_SOURCES:
        text = cu.read_text()
        out = emulation.translate(text)
        assert "<<<" not in out and ">>>" not in out, cu
        assert out.count("::gaea_emu::launch(") == text.count("<<<"), cu
        assert out.count("\n") == text.count("\n"), cu  # compiler messages point at the .cu lines


def test_translation_of_template_and_multiline_launches():
    src = "  ns::kernel<float, 4>\n      <<<grid, 256, 0,\n stream>>>(x, y);\n  k<<<1, 1>>>();\n"
    assert emulation.translate(src) == (
        "  ::gaea_emu::launch(::gaea_emu::LaunchConfig(grid, 256, 0, stream), ns::kernel<float, 4>, \n\nx, y);\n"
        "  ::gaea_emu::launch(::gaea_emu::LaunchConfig(1, 1), k);\n")


@pytest.mark.parametrize("reverse", [False, True])
def test_scheduler_computes_warp_and_block_reductions(emu, reverse):
    emu.set_reverse_schedule(reverse)
    try:
        warp = emu.selftest("warp_sum", 2, 64)[:4]
        assert warp.tolist() == [sum(range(32 * w + 1, 32 * w + 33)) for w in range(4)]
        block = emu.selftest("block_sum", 3, 256)[:3]
        assert block.tolist() == [256 * 257 // 2] * 3
        anyone = emu.selftest("barrier_or", 3, 2).view(3, 2)
        assert anyone.tolist() == [[1, 1], [1, 1], [0, 0]]  # block b: thread b exists for b < 2
    finally:
        emu.set_reverse_schedule(False)


@pytest.mark.parametrize("kernel,blocks,threads,match", [
    ("divergent_barrier", 1, 64, "divergent barrier"),
    ("warp_sum", 1, 48, "incomplete warp"),
    ("empty", 0, 32, "empty grid"),
    ("empty", 1, 1025, "1025 threads per block"),
])
def test_scheduler_refuses_what_a_gpu_would_not_run(emu, kernel, blocks, threads, match):
    with pytest.raises(RuntimeError, match=match):
        emu.selftest(kernel, blocks, threads)


def _op_results():
    """Outputs and gradients of every gaea_ext op on small odd-shaped inputs (fixed seed)."""
    gen = torch.Generator().manual_seed(0)

    def rand(*shape, dtype=torch.float32):
        return torch.randn(*shape, generator=gen, dtype=dtype).requires_grad_()

    results = []
    # mixed_node with every kind, BN terms included, 2 edges
    kinds = ["none", "skip", "avg_pool_3x3", "max_pool_3x3", "tensor", "avg_pool_3x3_bn", "max_pool_3x3_bn", "ones"]
    xs = [rand(3, 5, 7, 9) for _ in range(2)]
    outs = [[rand(3, 5, 7, 9)] for _ in range(2)]
    w = torch.rand(2 * len(kinds), generator=gen).requires_grad_()
    norms = [torch.stack([torch.randn(5, generator=gen), torch.rand(5, generator=gen) + 0.5]).requires_grad_()
             for _ in range(4)]
    y = gaea_ext.mixed_node([(x, o, kinds) for x, o in zip(xs, outs)], w, norms)
    leaves = xs + [o for os in outs for o in os] + [w] + norms
    results += [y, *torch.autograd.grad(y, leaves, torch.randn(y.shape, generator=gen))]
    # pool statistics
    x = rand(4, 3, 6, 5, dtype=torch.float64)
    for kind in ("avg_pool_3x3", "max_pool_3x3"):
        s = gaea_ext.pool_stats(x, kind)
        results += [s, *torch.autograd.grad(s, x, torch.randn(s.shape, generator=gen, dtype=s.dtype))]
    # PC-DARTS node with a stride-2 edge
    mixed, states = rand(2, 2, 3, 4), [rand(2, 8, 6, 8), rand(2, 8, 3, 4)]
    beta = torch.rand(2, generator=gen).requires_grad_()
    z = gaea_ext.partial_channel_node(mixed, states, beta, [2, 1], 4)
    results += [z, *torch.autograd.grad(z, [mixed, beta, *states], torch.randn(z.shape, generator=gen))]
    # weighted sum over more inputs than one launch takes
    k = cuda_limit("weighted_sum_inputs_per_launch") + 6
    inputs = [rand(5, 37) for _ in range(k)]
    ws = torch.rand(k, generator=gen).requires_grad_()
    u = gaea_ext.weighted_sum(inputs, ws)
    results += [u, *torch.autograd.grad(u, inputs + [ws], torch.randn(u.shape, generator=gen))]
    # exponentiated-gradient step, adaptive, segments and plain rows in one call
    alpha = torch.softmax(torch.randn(14, 8, generator=gen), -1)
    edges = torch.cat([torch.softmax(torch.randn(k, generator=gen), 0) for k in (2, 3, 4, 5)])
    gaea_ext.exp_grad_step_multi_([alpha, edges], [torch.randn(14, 8, generator=gen), torch.randn(14, generator=gen)],
                                  [0.1, 0.3], segments=[None, [2, 3, 4, 5]], min_value=[1e-5, 0.0], adaptive=True)
    results += [alpha, edges]
    return [r.detach() for r in results]


@requires_kernels
def test_kernels_do_not_depend_on_block_or_thread_order(emu):
    with emulation.cpu_served_by_cuda_emulation():
        forward = _op_results()
        emu.set_reverse_schedule(True)
        try:
            backward = _op_results()
        finally:
            emu.set_reverse_schedule(False)
    assert len(forward) == len(backward) > 90
    for i, (a, b) in enumerate(zip(forward, backward)):
        assert torch.equal(a, b), f"result {i} differs when blocks and threads run in reverse order"


@requires_kernels
def test_emulated_kernels_agree_with_the_cpu_kernels(emu):
    cpu = _op_results()
    with emulation.cpu_served_by_cuda_emulation():
        emulated = _op_results()
    assert gaea_ext.backend("cpu") == "cpu"  # the routing is undone on leaving the block
    for i, (a, b) in enumerate(zip(cpu, emulated)):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5, msg=lambda m: f"result {i}: {m}")


def _pool_window_grads(x):
    """Gradients through the 3x3 pool windows: the max-pool routing (mixed_op) and the pool
    statistics' backward (max and avg), all from `x`."""
    gen = torch.Generator().manual_seed(1)
    x = x.clone().requires_grad_()
    y = gaea_ext.mixed_op(x, [], torch.tensor([0.7], dtype=x.dtype), ["max_pool_3x3"])
    grads = list(torch.autograd.grad(y, x, torch.randn(y.shape, generator=gen, dtype=x.dtype)))
    for kind in ("max_pool_3x3", "avg_pool_3x3"):
        s = gaea_ext.pool_stats(x, kind)
        grads += torch.autograd.grad(s, x, torch.randn(s.shape, generator=gen, dtype=s.dtype))
    return grads


@requires_kernels
@pytest.mark.parametrize("shape", [(2, 3, 1, 1), (1, 2, 1, 6), (2, 1, 2, 2), (2, 3, 5, 7), (1, 2, 9, 4)])
def test_pool_windows_agree_with_the_cpu_kernels_on_ties_and_nans(emu, shape):
    """The CUDA backward reads each 5x5 neighbourhood once and decides the max routing of its
    nine windows from one bit per cell; on values with many ties and some NaNs it must route
    exactly as the CPU kernels (PyTorch's first-maximum rule, NaN wins)."""
    gen = torch.Generator().manual_seed(sum(shape))
    for trial in range(4):
        x = torch.randint(-1, 3, shape, generator=gen).double()
        if trial % 2:
            x[torch.rand(shape, generator=gen) < 0.15] = float("nan")
        cpu = _pool_window_grads(x)
        with emulation.cpu_served_by_cuda_emulation():
            emulated = _pool_window_grads(x)
        for name, a, b in zip(["max routing", "max stats", "avg stats"], cpu, emulated):
            torch.testing.assert_close(b, a, rtol=0, atol=1e-12, equal_nan=True,
                                       msg=lambda m: f"{name}, trial {trial}: {m}")


@requires_kernels
@pytest.mark.parametrize("emulated", [False, True], ids=["cpu_kernels", "emulated_cuda_kernels"])
def test_the_gpu_check_kernel_script_passes(emu, monkeypatch, emulated):
    """benchmarks/cuda_kernels_once.py (compute-sanitizer's workload in gpu_check.sh: every
    kernel once, checked against the reference) passes on the CPU kernels and on the
    emulated CUDA kernels."""
    monkeypatch.setattr(sys, "argv", ["cuda_kernels_once.py", "cpu"])
    script = runpy.run_path(str(emulation.ROOT / "benchmarks" / "cuda_kernels_once.py"), run_name="script")
    with emulation.cpu_served_by_cuda_emulation() if emulated else contextlib.nullcontext():
        assert script["main"]() == 0
