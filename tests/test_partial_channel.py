"""gaea_ext.partial_channel_node (the PC-DARTS node: bypass, 2x2 max pool, channel shuffle)
against the reference and against the per-edge PC-DARTS formulation: forward, backward,
gradcheck, opcheck, random shapes (hypothesis), odd sizes, layouts, dtypes, pool ties,
determinism, compile and bad input."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import gaea_ext
from gaea_ext import reference
from conftest import assert_same_across_threads, cuda_limit, requires_kernels

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
TOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 2e-2, torch.bfloat16: 1e-1}


def _node(N, q, K, Ho, Wo, strides, dtype, device, layout=torch.contiguous_format, odd_extra=0):
    mixed = torch.randn(N, q, Ho, Wo, dtype=torch.float64, device=device).to(dtype).contiguous(memory_format=layout)
    states = []
    for st in strides:
        H, W = (Ho, Wo) if st == 1 else (2 * Ho + odd_extra, 2 * Wo + odd_extra)
        s = torch.randn(N, q * K, H, W, dtype=torch.float64, device=device).to(dtype)
        states.append(s.contiguous(memory_format=layout))
    w = torch.rand(len(strides), dtype=torch.float32, device=device)
    for t in [mixed, w, *states]:
        t.requires_grad_()
    return mixed, states, w


def _check(mixed, states, w, strides, K, tol):
    got = gaea_ext.partial_channel_node(mixed, states, w, strides, K)
    want = reference.partial_channel_node(mixed, states, w, strides, K)
    assert got.shape == want.shape and got.dtype == mixed.dtype
    torch.testing.assert_close(got.double(), want.double(), rtol=tol, atol=tol)
    g = torch.randn_like(got)
    leaves = [mixed, w, *states]
    for a, b in zip(torch.autograd.grad(got, leaves, g), torch.autograd.grad(want, leaves, g)):
        torch.testing.assert_close(a.double(), b.double(), rtol=tol, atol=tol * max(1.0, float(b.abs().max())))
    return got


@requires_kernels
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_reference(device, dtype):
    _check(*_node(2, 3, 4, 5, 6, [2, 2, 1], dtype, device), [2, 2, 1], 4, TOL[dtype])


@requires_kernels
def test_is_the_per_edge_pc_darts_formulation(device):
    """Sum over edges of beta_e * shuffle(cat(mixed_e, bypass_e)) equals the one-pass node."""
    K, q = 4, 2
    mixed_parts = [torch.randn(2, q, 4, 4, dtype=torch.float64, device=device) for _ in range(3)]
    strides = [2, 2, 1]
    states = [torch.randn(2, q * K, 8, 8, dtype=torch.float64, device=device) for _ in range(2)] + \
        [torch.randn(2, q * K, 4, 4, dtype=torch.float64, device=device)]
    beta = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64, device=device)
    per_edge = 0
    for e in range(3):
        tail = states[e][:, q:]
        tail = F.max_pool2d(tail, 2, 2) if strides[e] == 2 else tail
        per_edge = per_edge + beta[e] * reference.channel_shuffle(torch.cat([mixed_parts[e], tail], 1), K)
    mixed = sum(b * m for b, m in zip(beta, mixed_parts))
    torch.testing.assert_close(gaea_ext.partial_channel_node(mixed, states, beta, strides, K), per_edge)


@requires_kernels
def test_beyond_the_cuda_state_limit(device):
    """Two states more than the CUDA kernel takes per call (above its limit the wrapper takes
    the reference path): the same results everywhere."""
    strides = [1, 2] * (cuda_limit("partial_channel_states") // 2 + 1)
    _check(*_node(2, 2, 3, 3, 4, strides, torch.float64, device), strides, 3, 1e-10)


@requires_kernels
@pytest.mark.parametrize("strides,extra", [([1], 0), ([2], 1), ([2, 1], 1), ([1, 1, 2, 2, 1], 0)])
def test_odd_shapes_and_gradcheck(device, strides, extra):
    mixed, states, w = _node(1, 1, 3, 3, 2, strides, torch.float64, device, odd_extra=extra)
    w = w.detach().double().requires_grad_()
    assert torch.autograd.gradcheck(lambda m, w, *s: gaea_ext.partial_channel_node(m, s, w, strides, 3),
                                    (mixed, w, *states))


@requires_kernels
def test_layouts(device):
    mixed, states, w = _node(2, 2, 4, 3, 5, [2, 1], torch.float32, device, layout=torch.channels_last)
    _check(mixed, states, w, [2, 1], 4, 2e-5)
    base = torch.randn(2, 8, 6, 20, device=device)
    sliced = base[:, :, :, ::2]  # non-contiguous state
    m = torch.randn(2, 2, 3, 5, device=device)
    torch.testing.assert_close(gaea_ext.partial_channel_node(m, [sliced], torch.ones(1, device=device), [2], 4),
                               reference.partial_channel_node(m, [sliced], torch.ones(1, device=device), [2], 4))


@requires_kernels
def test_max_pool_ties_route_like_pytorch(device):
    s = torch.zeros(1, 4, 4, 4, dtype=torch.float64, device=device, requires_grad=True)
    m = torch.zeros(1, 1, 2, 2, dtype=torch.float64, device=device)
    w = torch.ones(1, dtype=torch.float64, device=device)
    g = torch.arange(16.0, dtype=torch.float64, device=device).view(1, 4, 2, 2)
    got, = torch.autograd.grad(gaea_ext.partial_channel_node(m, [s], w, [2], 4), s, g)
    want, = torch.autograd.grad(reference.partial_channel_node(m, [s], w, [2], 4), s, g)
    assert torch.equal(got, want)


@requires_kernels
def test_opcheck(device):
    m = torch.randn(2, 2, 3, 3, device=device)
    states = [torch.randn(2, 8, 6, 7, device=device), torch.randn(2, 8, 3, 3, device=device)]
    w = torch.rand(2, device=device)
    torch.library.opcheck(torch.ops.gaea_ext.partial_channel_node.default, (m, states, w, [2, 1], 4))
    g = torch.randn(2, 8, 3, 3, device=device)
    torch.library.opcheck(torch.ops.gaea_ext.partial_channel_node_backward.default,
                          (g, states, w, [2, 1], 4, True, [True, False], True))


@st.composite
def cases(draw):
    E = draw(st.integers(1, 4))
    strides = draw(st.lists(st.sampled_from([1, 2]), min_size=E, max_size=E))
    return (draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(2, 4)), draw(st.integers(1, 5)),
            draw(st.integers(1, 5)), strides, draw(st.sampled_from(DTYPES)), draw(st.integers(0, 1)))


@requires_kernels
@given(cases())
def test_random_nodes_match_reference(case):
    N, q, K, Ho, Wo, strides, dtype, extra = case
    mixed, states, w = _node(N, q, K, Ho, Wo, strides, dtype, "cpu", odd_extra=extra)
    _check(mixed, states, w, strides, K, TOL[dtype])


@requires_kernels
def test_deterministic_across_threads():
    mixed, states, w = _node(4, 4, 4, 8, 8, [2, 2, 1, 1], torch.float32, "cpu")
    g = torch.randn(4, 16, 8, 8)

    def grads():
        return torch.autograd.grad(gaea_ext.partial_channel_node(mixed, states, w, [2, 2, 1, 1], 4), [w, *states], g)

    assert_same_across_threads(grads)


@requires_kernels
def test_compiles_without_graph_breaks():
    mixed, states, w = _node(2, 2, 4, 3, 3, [2, 1], torch.float32, "cpu")

    def f(m, w, s0, s1):
        return gaea_ext.partial_channel_node(m, [s0, s1], w, [2, 1], 4).square().sum()

    def f_reference(m, w, s0, s1):
        return reference.partial_channel_node(m, [s0, s1], w, [2, 1], 4).square().sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    ga = torch.autograd.grad(compiled(mixed, w, *states), [mixed, w, *states])
    gb = torch.autograd.grad(f_reference(mixed, w, *states), [mixed, w, *states])
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("call,err,match", [
    (lambda m, s, w: gaea_ext.partial_channel_node(m[0], [s], w, [1], 4), ValueError, "'mixed'"),
    (lambda m, s, w: gaea_ext.partial_channel_node(m, [], w, [], 4), ValueError, "'states'"),
    (lambda m, s, w: gaea_ext.partial_channel_node(m, [s], w, [3], 4), ValueError, "'strides'"),
    (lambda m, s, w: gaea_ext.partial_channel_node(m, [s], w, [1], 0), ValueError, "'groups'"),
    (lambda m, s, w: gaea_ext.partial_channel_node(m, [s], w, [1], 2), ValueError, "states\\[0\\]"),
    (lambda m, s, w: gaea_ext.partial_channel_node(m, [s], w, [2], 4), ValueError, "tail"),
    (lambda m, s, w: gaea_ext.partial_channel_node(m, [s.double()], w, [1], 4), TypeError, "dtype"),
    (lambda m, s, w: gaea_ext.partial_channel_node(m, [s], w.repeat(2), [1], 4), ValueError, "'weights'"),
    (lambda m, s, w: gaea_ext.partial_channel_node(m.tolist(), [s], w, [1], 4), TypeError, "'mixed'"),
    (lambda m, s, w: gaea_ext.partial_channel_node(m.long(), [s], w, [1], 4), TypeError, "'mixed'"),
    (lambda m, s, w: gaea_ext.partial_channel_node(m, s, w, [1], 4), TypeError, "'states'"),
    (lambda m, s, w: gaea_ext.partial_channel_node(m, [s], w, [1], 4.0), TypeError, "'groups'"),
    (lambda m, s, w: gaea_ext.partial_channel_node(m, [s], w, [1.0], 4), TypeError, "'strides\\[0\\]'"),
    (lambda m, s, w: gaea_ext.partial_channel_node(m, [s], w.tolist(), [1], 4), TypeError, "'weights'"),
    (lambda m, s, w: gaea_ext.partial_channel_node(m, [s], w.long(), [1], 4), TypeError, "'weights'"),
])
def test_bad_input_names_the_argument(call, err, match):
    m = torch.randn(2, 2, 4, 4)
    s = torch.randn(2, 8, 4, 4)
    w = torch.rand(1)
    with pytest.raises(err, match=match):
        call(m, s, w)


def test_groups_is_explained_as_pc_darts_k():
    m = torch.randn(2, 2, 4, 4)
    s = torch.randn(2, 8, 4, 4)
    w = torch.rand(1)
    with pytest.raises(ValueError, match="'groups' \\(PC-DARTS' K: the ops see C/K channels\\) must be a positive"):
        gaea_ext.partial_channel_node(m, [s], w, [1], 0)
    with pytest.raises(TypeError, match="'groups' \\(PC-DARTS' K"):
        gaea_ext.partial_channel_node(m, [s], w, [1], "4")
    with pytest.raises(ValueError, match="'states\\[0\\]' must be \\[2, 6, H, W\\]: C = groups x mixed's channels "
                                         "\\(3 x 2\\), groups being PC-DARTS' K"):
        gaea_ext.partial_channel_node(m, [s], w, [1], 3)
    assert "PC-DARTS' K" in gaea_ext.partial_channel_node.__doc__
