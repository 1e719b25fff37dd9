"""The BatchNorm-followed pool kinds of gaea_ext.mixed_node ("avg_pool_3x3_bn",
"max_pool_3x3_bn"), gaea_ext.pool_stats and gaea_ext.pool_batch_norm: against the reference
and against torch.nn.BatchNorm2d(affine=False) after a real pool (train and eval mode,
running statistics, momentum=None), gradcheck, opcheck, random shapes, layouts, dtypes,
what autograd saves, determinism and bad input."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import gaea_ext
from gaea_ext import reference
from conftest import assert_same_across_threads, cuda_limit, requires_kernels

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
TOL = {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 3e-2, torch.bfloat16: 2e-1}
POOLS = ["avg_pool_3x3", "max_pool_3x3"]


def _pool(kind, x):
    if kind.startswith("avg"):
        return F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)
    return F.max_pool2d(x, 3, 1, 1)


def _assert_grads_close(got, want, tol, leaves=None):
    for k, (a, b) in enumerate(zip(got, want)):
        if leaves is not None:  # unused leaves (e.g. x in an all-`tensor` node) have no grad
            a = torch.zeros_like(leaves[k]) if a is None else a
            b = torch.zeros_like(leaves[k]) if b is None else b
        torch.testing.assert_close(a.double(), b.double(), rtol=tol, atol=tol * max(1.0, float(b.abs().max())))


# ---- pool_stats ---------------------------------------------------------------------


@requires_kernels
@pytest.mark.parametrize("kind", POOLS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_pool_stats_matches_reference(device, kind, dtype):
    x = torch.randn(3, 4, 7, 9, dtype=torch.float64, device=device).to(dtype).requires_grad_()
    got = gaea_ext.pool_stats(x, kind)
    want = reference.pool_stats(x, kind)
    assert got.dtype == (torch.float64 if dtype == torch.float64 else torch.float32) and got.shape == (2, 4)
    torch.testing.assert_close(got, want, rtol=TOL[dtype], atol=TOL[dtype])
    g = torch.randn_like(got)
    _assert_grads_close(torch.autograd.grad(got, x, g), torch.autograd.grad(want, x, g), TOL[dtype])


@requires_kernels
@pytest.mark.parametrize("kind", POOLS)
def test_pool_stats_gradcheck_and_opcheck(device, kind):
    x = torch.randn(2, 3, 5, 4, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: gaea_ext.pool_stats(x, kind), (x,))
    code = reference.MIXED_KINDS.index(kind)
    torch.library.opcheck(torch.ops.gaea_ext.pool_stats.default, (x, code))
    stats = gaea_ext.pool_stats(x.detach(), kind)
    torch.library.opcheck(torch.ops.gaea_ext.pool_stats_backward.default,
                          (torch.randn_like(stats), x.detach(), stats, code))


@requires_kernels
@given(st.integers(1, 7), st.integers(1, 7), st.integers(0, 2**31 - 1))
def test_pool_stats_max_backward_with_ties_matches_pytorch(H, W, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(-1, 2, (2, 3, H, W), generator=gen).double().requires_grad_()  # ties everywhere
    g = torch.randn(2, 3, generator=gen, dtype=torch.float64)
    got, = torch.autograd.grad(gaea_ext.pool_stats(x, "max_pool_3x3"), x, g)
    pooled = F.max_pool2d(x, 3, 1, 1)
    want, = torch.autograd.grad(torch.stack([pooled.mean((0, 2, 3)), pooled.var((0, 2, 3), unbiased=False)]), x, g)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@requires_kernels
def test_pool_stats_layouts_and_large_offsets(device):
    base = torch.randn(2, 5, 6, 7, dtype=torch.float64, device=device) + 1e3  # mean far from 0: no cancellation
    for x in (base.contiguous(memory_format=torch.channels_last), base.transpose(2, 3), base[:, 1:4]):
        for kind in POOLS:
            got = gaea_ext.pool_stats(x, kind)
            torch.testing.assert_close(got, reference.pool_stats(x, kind), rtol=1e-9, atol=1e-9)
    x32 = base.float()
    got = gaea_ext.pool_stats(x32, "avg_pool_3x3")
    torch.testing.assert_close(got[1].double(), reference.pool_stats(base, "avg_pool_3x3")[1], rtol=1e-4, atol=1e-6)


# ---- mixed_node with BN kinds -------------------------------------------------------


def _bn_node(shape, dtype, device, kinds, layout=torch.contiguous_format):
    x = torch.randn(*shape, dtype=torch.float64, device=device).to(dtype).contiguous(memory_format=layout)
    outs = [torch.randn(*shape, dtype=torch.float64, device=device).to(dtype).contiguous(memory_format=layout)
            for k in kinds if k == "tensor"]
    w = torch.rand(len(kinds), dtype=torch.float32, device=device)
    C = shape[1]
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    norms = [torch.stack([torch.randn(C, device=device, dtype=acc), torch.rand(C, device=device, dtype=acc) + 0.5])
             for k in kinds if k in reference.BN_KINDS]
    for t in [x, w, *outs, *norms]:
        t.requires_grad_()
    return x, outs, w, norms


def _check_bn(x, outs, w, norms, kinds, tol):
    got = gaea_ext.mixed_op(x, outs, w, kinds, norms)
    sources = []
    used = 0
    for k in kinds:
        sources.append(used if k == "tensor" else 0)
        used += k == "tensor"
    want = reference.mixed_node([x], outs, w, kinds, sources, torch.stack(norms) if norms else None)
    torch.testing.assert_close(got.double(), want.double(), rtol=tol, atol=tol)
    g = torch.randn_like(got)
    leaves = [x, w, *outs, *norms]
    _assert_grads_close(torch.autograd.grad(got, leaves, g, allow_unused=True),
                        torch.autograd.grad(want, leaves, g, allow_unused=True), tol, leaves)
    return got


@requires_kernels
@pytest.mark.parametrize("dtype", DTYPES)
def test_bn_kinds_match_reference(device, dtype):
    kinds = ["avg_pool_3x3_bn", "tensor", "max_pool_3x3_bn", "skip", "ones", "avg_pool_3x3"]
    _check_bn(*_bn_node((2, 3, 6, 5), dtype, device, kinds), kinds, TOL[dtype])


@requires_kernels
@pytest.mark.parametrize("passes", ["one_pass", "two_passes", "several_passes"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_many_bn_terms(device, dtype, passes):
    """BN terms plus sum(g) as per-plane sums: as many as one pass of the CUDA backward keeps
    in registers (dot_row_bytes of them), just more, and several passes' worth."""
    per_pass = cuda_limit("dot_row_bytes") // (8 if dtype == torch.float64 else 4)
    pairs = {"one_pass": (per_pass - 1) // 2, "two_passes": per_pass // 2, "several_passes": per_pass + 2}[passes]
    kinds = ["avg_pool_3x3_bn", "max_pool_3x3_bn"] * pairs + ["tensor"]
    assert len(kinds) <= cuda_limit("mixed_node_terms")
    _check_bn(*_bn_node((2, 3, 5, 4), dtype, device, kinds), kinds, TOL[dtype])


@requires_kernels
def test_bn_kinds_gradcheck(device):
    kinds = ["max_pool_3x3_bn", "avg_pool_3x3_bn", "tensor", "ones"]
    x, outs, w, norms = _bn_node((2, 2, 4, 5), torch.float64, device, kinds)
    w = w.detach().double().requires_grad_()
    assert torch.autograd.gradcheck(lambda x, y, w, n0, n1: gaea_ext.mixed_op(x, [y], w, kinds, [n0, n1]),
                                    (x, outs[0], w, *norms))


@requires_kernels
def test_bn_kinds_opcheck(device):
    x = torch.randn(2, 3, 5, 6, device=device)
    y = torch.randn(2, 3, 5, 6, device=device)
    w = torch.rand(4, device=device)
    norm = torch.rand(2, 2, 3, device=device) + 0.5
    args = ([x], [y], w, [5, 4, 6, 7], [0, 0, 0, 0], norm)
    torch.library.opcheck(torch.ops.gaea_ext.mixed_node.default, args)
    g = torch.randn(2, 3, 5, 6, device=device)
    torch.library.opcheck(torch.ops.gaea_ext.mixed_node_backward.default,
                          (g, [x], [y], w, [5, 4, 6, 7], [0, 0, 0, 0], norm, [True], [True], True, True))


@st.composite
def bn_cases(draw):
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 8)), draw(st.integers(1, 8)))
    kinds = draw(st.lists(st.sampled_from(["avg_pool_3x3_bn", "max_pool_3x3_bn", "tensor", "skip", "ones", "none",
                                           "avg_pool_3x3"]), min_size=1, max_size=5))
    dtype = draw(st.sampled_from(DTYPES))
    layout = draw(st.sampled_from([torch.contiguous_format, torch.channels_last]))
    return shape, kinds, dtype, layout


@requires_kernels
@given(bn_cases())
def test_random_bn_nodes_match_reference(case):
    shape, kinds, dtype, layout = case
    x, outs, w, norms = _bn_node(shape, dtype, "cpu", kinds, layout)
    _check_bn(x, outs, w, norms, kinds, TOL[dtype])


# ---- pool_batch_norm: exactly BatchNorm2d(affine=False) after the pool ------------------


def _pair(C, momentum=0.1):
    ours, theirs = nn.BatchNorm2d(C, affine=False, momentum=momentum), nn.BatchNorm2d(C, affine=False, momentum=momentum)
    return ours, theirs


@requires_kernels
@pytest.mark.parametrize("kind", POOLS)
@pytest.mark.parametrize("momentum", [0.1, None])
def test_pool_batch_norm_is_batchnorm_after_the_pool(device, kind, momentum):
    C = 3
    ours, theirs = _pair(C, momentum)
    ours.to(device, torch.float64), theirs.to(device, torch.float64)
    w = torch.tensor([0.7, 0.3], dtype=torch.float64, device=device, requires_grad=True)
    for step in range(3):
        x = (torch.randn(4, C, 6, 6, dtype=torch.float64, device=device) * (step + 1)).requires_grad_()
        y = torch.randn(4, C, 6, 6, dtype=torch.float64, device=device)
        norm = gaea_ext.pool_batch_norm(x, kind, ours)
        got = gaea_ext.mixed_op(x, [y], w, [kind + "_bn", "tensor"], [norm])
        want = w[0] * theirs(_pool(kind, x)) + w[1] * y
        torch.testing.assert_close(got, want)
        g = torch.randn_like(got)
        _assert_grads_close(torch.autograd.grad(got, [x, w], g), torch.autograd.grad(want, [x, w], g), 1e-9)
    torch.testing.assert_close(ours.running_mean, theirs.running_mean)
    torch.testing.assert_close(ours.running_var, theirs.running_var)
    assert int(ours.num_batches_tracked) == int(theirs.num_batches_tracked) == 3
    ours.eval(), theirs.eval()
    x = torch.randn(2, C, 5, 5, dtype=torch.float64, device=device, requires_grad=True)
    got = gaea_ext.mixed_op(x, [], w[:1], [kind + "_bn"], [gaea_ext.pool_batch_norm(x, kind, ours)])
    want = w[0] * theirs(_pool(kind, x))
    torch.testing.assert_close(got, want)
    _assert_grads_close(torch.autograd.grad(got.sum(), x), torch.autograd.grad(want.sum(), x), 1e-9)


@requires_kernels
@pytest.mark.parametrize("kind", POOLS)
def test_pool_batch_norm_with_shared_stats_equals_two_passes(device, kind):
    """Two BatchNorms of one pool (two DARTS edges leaving one node) from one statistics pass:
    the same norms, running statistics and input gradient as one pass each."""
    x = torch.randn(3, 4, 7, 5, dtype=torch.float64, device=device)
    bns = [nn.BatchNorm2d(4, affine=False).to(device, torch.float64) for _ in range(4)]
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    stats = gaea_ext.pool_stats(a, kind)
    shared = [gaea_ext.pool_batch_norm(a, kind, bn, stats=stats) for bn in bns[:2]]
    separate = [gaea_ext.pool_batch_norm(b, kind, bn) for bn in bns[2:]]
    for got, want in zip(shared, separate):
        torch.testing.assert_close(got, want)
    for bn, ref in zip(bns[:2], bns[2:]):
        torch.testing.assert_close(bn.running_mean, ref.running_mean)
        torch.testing.assert_close(bn.running_var, ref.running_var)
    g = [torch.randn_like(shared[0]) for _ in shared]
    torch.testing.assert_close(torch.autograd.grad(shared, a, g)[0], torch.autograd.grad(separate, b, g)[0])
    with pytest.raises(ValueError, match="'stats'"):
        gaea_ext.pool_batch_norm(a, kind, bns[0], stats=stats[:, :2])
    with pytest.raises(ValueError, match="'stats'"):
        gaea_ext.pool_batch_norm(a, kind, bns[0], stats=stats.float())


@requires_kernels
def test_saves_no_pooled_tensor():
    saved = []

    def pack(t):
        saved.append(t)
        return t

    bn = nn.BatchNorm2d(3, affine=False)
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    y = torch.randn(2, 3, 8, 8, requires_grad=True)
    w = torch.rand(3, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        norm = gaea_ext.pool_batch_norm(x, "avg_pool_3x3", bn)
        gaea_ext.mixed_op(x, [y], w, ["avg_pool_3x3_bn", "tensor", "max_pool_3x3"], [norm])
    big = [t for t in saved if t.numel() == x.numel()]
    assert big and {t.data_ptr() for t in big} <= {x.data_ptr(), y.data_ptr()}


@requires_kernels
def test_bn_backward_is_deterministic_across_threads():
    kinds = ["avg_pool_3x3_bn", "max_pool_3x3_bn", "ones", "skip"]
    x, outs, w, norms = _bn_node((4, 8, 12, 12), torch.float32, "cpu", kinds)
    g = torch.randn(4, 8, 12, 12)

    def grads():
        return torch.autograd.grad(gaea_ext.mixed_op(x, outs, w, kinds, norms), [x, w, *norms], g) + \
            torch.autograd.grad(gaea_ext.pool_stats(x, "max_pool_3x3"), x, torch.ones(2, 8))

    assert_same_across_threads(grads)


@requires_kernels
def test_bn_kinds_compile_without_graph_breaks():
    bn = nn.BatchNorm2d(3, affine=False)
    x = torch.randn(2, 3, 6, 6, requires_grad=True)
    w = torch.rand(2, requires_grad=True)

    def f(x, w):
        norm = gaea_ext.pool_batch_norm(x, "max_pool_3x3", bn)
        return gaea_ext.mixed_op(x, [], w, ["max_pool_3x3_bn", "ones"], [norm]).square().sum()

    def f_reference(x, w):  # BatchNorm2d(affine=False) in training mode after the real pool
        pooled = F.max_pool2d(x, 3, 1, 1)
        normed = F.batch_norm(pooled, None, None, training=True, eps=bn.eps)
        return (w[0] * normed + w[1]).square().sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    ga = torch.autograd.grad(compiled(x, w), [x, w])
    gb = torch.autograd.grad(f_reference(x, w), [x, w])
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("call,err,match", [
    (lambda x, w, n: gaea_ext.mixed_op(x, [], w[:1], ["avg_pool_3x3_bn"]), ValueError, "'norms'.*required"),
    (lambda x, w, n: gaea_ext.mixed_op(x, [], w[:1], ["avg_pool_3x3_bn"], [n[:, :2]]), ValueError, "norms\\[0\\]"),
    (lambda x, w, n: gaea_ext.mixed_op(x, [], w[:1], ["avg_pool_3x3_bn"], [n, n]), ValueError, "one tensor per BN"),
    (lambda x, w, n: gaea_ext.mixed_op(x, [], w[:1], ["skip"], [n]), ValueError, "must be empty"),
    (lambda x, w, n: gaea_ext.mixed_op(x, [], w[:1], ["avg_pool_3x3_bn"], [n.long()]), TypeError, "floating"),
    (lambda x, w, n: gaea_ext.pool_stats(x, "skip"), ValueError, "'kind'"),
    (lambda x, w, n: gaea_ext.pool_stats(x[0], "avg_pool_3x3"), ValueError, "4-D"),
    (lambda x, w, n: gaea_ext.pool_batch_norm(x, "avg_pool_3x3", nn.BatchNorm2d(3)), ValueError, "affine=False"),
    (lambda x, w, n: gaea_ext.pool_batch_norm(x, "avg_pool_3x3", nn.BatchNorm2d(4, affine=False)), ValueError, "'x'"),
    (lambda x, w, n: gaea_ext.pool_batch_norm(x, "avg_pool_3x3", nn.ReLU()), TypeError, "'bn'"),
    (lambda x, w, n: gaea_ext.pool_stats(x, 2), TypeError, "'kind'"),
    (lambda x, w, n: gaea_ext.pool_stats(x.tolist(), "avg_pool_3x3"), TypeError, "'x'"),
    (lambda x, w, n: gaea_ext.pool_stats(x.long(), "avg_pool_3x3"), TypeError, "'x'"),
    (lambda x, w, n: gaea_ext.pool_batch_norm(x.tolist(), "avg_pool_3x3", nn.BatchNorm2d(3, affine=False)),
     TypeError, "'x'"),
])
def test_bad_input_names_the_argument(call, err, match):
    x = torch.randn(2, 3, 4, 4)
    w = torch.rand(3)
    n = torch.rand(2, 3)
    with pytest.raises(err, match=match):
        call(x, w, n)


# ---- BatchNorm modules as norms: the op applies each to its own term -------------------


@requires_kernels
@pytest.mark.parametrize("momentum", [0.1, None])
def test_bn_modules_as_norms_are_the_darts_pools(device, momentum):
    """norms = the pools' BatchNorm2d(affine=False) modules: the same output, gradients and
    running statistics as DARTS' nn.Sequential(pool, BatchNorm2d), in train and eval mode."""
    C = 3
    kinds = ["max_pool_3x3_bn", "tensor", "avg_pool_3x3_bn", "skip"]
    ours = [nn.BatchNorm2d(C, affine=False, momentum=momentum).to(device, torch.float64) for _ in range(2)]
    theirs = [nn.BatchNorm2d(C, affine=False, momentum=momentum).to(device, torch.float64) for _ in range(2)]
    w = torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=torch.float64, device=device, requires_grad=True)

    def darts(x, y):
        return (w[0] * theirs[0](_pool("max", x)) + w[1] * y + w[2] * theirs[1](_pool("avg", x)) + w[3] * x)

    for step in range(3):
        if step == 2:
            for bn in ours + theirs:
                bn.eval()
        x = (torch.randn(4, C, 6, 5, dtype=torch.float64, device=device) * (step + 1) + step).requires_grad_()
        y = torch.randn(4, C, 6, 5, dtype=torch.float64, device=device)
        got = gaea_ext.mixed_op(x, [y], w, kinds, ours)
        want = darts(x, y)
        torch.testing.assert_close(got, want)
        g = torch.randn_like(got)
        _assert_grads_close(torch.autograd.grad(got, [x, w], g), torch.autograd.grad(want, [x, w], g), 1e-9)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a.running_mean, b.running_mean)
        torch.testing.assert_close(a.running_var, b.running_var)
        assert int(a.num_batches_tracked) == int(b.num_batches_tracked) == 2


@requires_kernels
def test_bn_modules_follow_their_own_edges_and_mix_with_tensors(device):
    """mixed_node: each module normalises its own edge's pool (edge by edge), next to a [2, C] norm."""
    C = 2
    x0, x1 = (torch.randn(3, C, 5, 5, device=device) * s for s in (1.0, 4.0))
    bn0, bn1 = (nn.BatchNorm2d(C, affine=False).to(device) for _ in range(2))
    ref0, ref1 = (nn.BatchNorm2d(C, affine=False).to(device) for _ in range(2))
    norm = torch.stack([torch.randn(C, device=device), torch.rand(C, device=device) + 0.5])
    w = torch.rand(2, 2, device=device)
    got = gaea_ext.mixed_node([(x0, [], ["avg_pool_3x3_bn", "max_pool_3x3_bn"]),
                               (x1, [], ["max_pool_3x3_bn", "none"])], w, [bn0, norm, bn1])
    max0 = (_pool("max", x0) - norm[0].reshape(1, C, 1, 1)) * norm[1].reshape(1, C, 1, 1)
    want = w[0, 0] * ref0(_pool("avg", x0)) + w[0, 1] * max0 + w[1, 0] * ref1(_pool("max", x1))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(bn1.running_mean, ref1.running_mean)
    torch.testing.assert_close(bn0.running_var, ref0.running_var)


def test_bn_module_refusals_change_no_running_statistics():
    x = torch.randn(2, 3, 4, 4)
    good = nn.BatchNorm2d(3, affine=False)
    with pytest.raises(ValueError, match="^mixed_op: 'norms\\[1\\]' is a BatchNorm2d with affine=True"):
        gaea_ext.mixed_op(x, [], torch.rand(2), ["avg_pool_3x3_bn", "max_pool_3x3_bn"], [good, nn.BatchNorm2d(3)])
    with pytest.raises(ValueError, match="^mixed_op: 'norms\\[1\\]' is a BatchNorm2d of 4 features, but x has 3"):
        gaea_ext.mixed_op(x, [], torch.rand(2), ["avg_pool_3x3_bn", "max_pool_3x3_bn"],
                          [good, nn.BatchNorm2d(4, affine=False)])
    with pytest.raises(TypeError, match="^mixed_node: 'norms\\[0\\]' must be a \\[2, C\\] tensor or a BatchNorm2d"):
        gaea_ext.mixed_node([(x, [], ["avg_pool_3x3_bn"])], torch.rand(1), [nn.ReLU()])
    with pytest.raises(ValueError, match="^mixed_terms: 'norms' must hold one tensor per BN term \\(1; a \\[2, C\\] tensor or the term's BatchNorm module\\), got 2"):
        gaea_ext.mixed_terms([x], [], torch.rand(1), ["avg_pool_3x3_bn"], [0], [good, good])
    assert int(good.num_batches_tracked) == 0
    assert torch.equal(good.running_mean, torch.zeros(3)) and torch.equal(good.running_var, torch.ones(3))


@requires_kernels
def test_bn_module_norms_and_weight_list_compile_without_graph_breaks():
    bn, theirs = nn.BatchNorm2d(3, affine=False), nn.BatchNorm2d(3, affine=False)
    x = torch.randn(2, 3, 6, 6, requires_grad=True)
    w = torch.rand(2, requires_grad=True)

    def f(x, w):
        return gaea_ext.mixed_op(x, [], list(w), ["max_pool_3x3_bn", "ones"], [bn]).square().sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    ga = torch.autograd.grad(compiled(x, w), [x, w])
    gb = torch.autograd.grad((w[0] * theirs(F.max_pool2d(x, 3, 1, 1)) + w[1]).square().sum(), [x, w])
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(bn.running_mean, theirs.running_mean)
    torch.testing.assert_close(bn.running_var, theirs.running_var)
