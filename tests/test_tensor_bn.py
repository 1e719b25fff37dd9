"""The "tensor_bn" kind of gaea_ext.mixed_node (a precomputed output followed by
BatchNorm2d(affine=False), normalised inside the kernel), gaea_ext.tensor_batch_norm (the
one-pass norm of a batched conv output whose channel blocks belong to several BatchNorms),
and term tensors given as channel slices of a batched output, read in place: against the
reference and nn.BatchNorm2d (train and eval mode, running statistics), gradcheck,
gradgradcheck, opcheck, dtypes, odd sizes, layouts, no copies, and bad input."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import gaea_ext
from gaea_ext import reference
from conftest import requires_kernels

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
TOL = {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 3e-2, torch.bfloat16: 2e-1}
LAYOUTS = [torch.contiguous_format, torch.channels_last]
TENSOR_BN = reference.MIXED_KINDS.index("tensor_bn")


def _batched(N, E, C, H, W, dtype, device, layout):
    """A batched conv output [N, E * C, H, W] (in `layout`) and its E edge slices (views)."""
    Y = torch.randn(N, E * C, H, W, dtype=torch.float64, device=device).to(dtype).contiguous(memory_format=layout)
    return Y, [Y[:, e * C:(e + 1) * C] for e in range(E)]


def _random_norm(C, dtype, device):
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    return torch.stack([torch.randn(C, device=device, dtype=acc), torch.rand(C, device=device, dtype=acc) + 0.5])


def _assert_grads_close(got, want, leaves, tol):
    for a, b, leaf in zip(got, want, leaves):
        a = torch.zeros_like(leaf) if a is None else a
        b = torch.zeros_like(leaf) if b is None else b
        torch.testing.assert_close(a.double(), b.double(), rtol=tol, atol=tol * max(1.0, float(b.abs().max())))


def _node_against_reference(x, outs, w, kinds, norms, tol):
    """mixed_op(x, outs, w, kinds, norms) against the reference: output and every gradient."""
    got = gaea_ext.mixed_op(x, outs, w, kinds, norms)
    sources, used = [], 0
    for k in kinds:
        sources.append(used if k in reference.OUTPUT_KINDS else 0)
        used += k in reference.OUTPUT_KINDS
    want = reference.mixed_node([x], outs, w, kinds, sources, torch.stack(norms) if norms else None)
    torch.testing.assert_close(got.double(), want.double(), rtol=tol, atol=tol)
    g = torch.randn_like(got)
    leaves = [t for t in [x, w, *outs, *norms] if t.requires_grad]
    _assert_grads_close(torch.autograd.grad(got, leaves, g, allow_unused=True),
                        torch.autograd.grad(want, leaves, g, allow_unused=True), leaves, tol)
    return got


# ---- the kind, on slices of a batched output ----------------------------------------------


@requires_kernels
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_tensor_bn_on_slices_matches_reference(device, dtype, layout):
    """Odd sizes; two tensor_bn terms and a tensor term, all slices of one batched output."""
    N, C, H, W = 3, 5, 7, 3
    x = torch.randn(N, C, H, W, dtype=torch.float64, device=device).to(dtype).contiguous(memory_format=layout)
    Y, (y0, y1, y2) = _batched(N, 3, C, H, W, dtype, device, layout)
    Y.requires_grad_()
    x.requires_grad_()
    w = torch.rand(6, device=device, requires_grad=True)
    norms = [_random_norm(C, dtype, device).requires_grad_() for _ in range(3)]
    kinds = ["tensor_bn", "skip", "tensor", "avg_pool_3x3_bn", "tensor_bn", "ones"]
    out = _node_against_reference(x, [y0, y1, y2], w, kinds, norms, TOL[dtype])
    assert out.is_contiguous(memory_format=layout)


@requires_kernels
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 3, 1, 4), (2, 3, 5, 1), (1, 2, 9, 11)])
def test_tensor_bn_degenerate_planes(device, shape):
    """Planes of one row, one column or one cell, in place as slices of NCHW and channels_last."""
    N, C, H, W = shape
    for layout in LAYOUTS:
        Y, (y0, y1) = _batched(N, 2, C, H, W, torch.float64, device, layout)
        x = torch.randn(N, C, H, W, dtype=torch.float64, device=device)
        w = torch.rand(3, dtype=torch.float64, device=device, requires_grad=True)
        norms = [_random_norm(C, torch.float64, device).requires_grad_()]
        _node_against_reference(x, [y0.requires_grad_(False), y1], w, ["tensor", "tensor_bn", "max_pool_3x3"], norms,
                                1e-9)


@requires_kernels
def test_tensor_bn_gradcheck_and_gradgradcheck(device):
    kinds = ["tensor_bn", "avg_pool_3x3_bn", "tensor", "skip"]
    N, C, H, W = 1, 2, 3, 3
    x = torch.randn(N, C, H, W, dtype=torch.float64, device=device, requires_grad=True)
    Y = torch.randn(N, 2 * C, H, W, dtype=torch.float64, device=device).contiguous(memory_format=torch.channels_last)
    Y.requires_grad_()
    w = torch.rand(len(kinds), dtype=torch.float64, device=device, requires_grad=True)
    n0, n1 = (_random_norm(C, torch.float64, device).requires_grad_() for _ in range(2))

    def f(x, Y, w, n0, n1):
        return gaea_ext.mixed_op(x, [Y[:, :C], Y[:, C:]], w, kinds, [n0, n1])

    assert torch.autograd.gradcheck(f, (x, Y, w, n0, n1))
    assert torch.autograd.gradgradcheck(f, (x, Y, w, n0, n1), fast_mode=True)


@requires_kernels
def test_tensor_bn_opcheck(device):
    N, C, H, W = 2, 3, 4, 5
    x = torch.randn(N, C, H, W, device=device)
    Y, (y0, y1) = _batched(N, 2, C, H, W, torch.float32, device, torch.channels_last)
    w = torch.rand(3, device=device)
    norm = torch.rand(2, 2, C, device=device) + 0.5
    args = ([x], [y0, y1], w, [TENSOR_BN, 4, 5], [0, 1, 0], norm)
    torch.library.opcheck(torch.ops.gaea_ext.mixed_node.default, args)
    g = torch.randn(N, C, H, W, device=device)
    # the other ops: schema and fake kernel (their autograd wiring is kind-independent and
    # opchecked in test_pool_batch_norm.py)
    quick = ("test_schema", "test_faketensor")
    torch.library.opcheck(torch.ops.gaea_ext.mixed_node_backward.default,
                          (g, *args, [True], [True, True], True, True), test_utils=quick)
    Z = torch.randn(N, 2 * C, H, W, device=device).contiguous(memory_format=torch.channels_last)
    for z in (Z, Z[:, C:]):
        torch.library.opcheck(torch.ops.gaea_ext.pool_stats.default, (z, TENSOR_BN), test_utils=quick)
        stats = gaea_ext.pool_stats(z, "tensor_bn")
        torch.library.opcheck(torch.ops.gaea_ext.pool_stats_backward.default,
                              (torch.randn_like(stats), z, stats, TENSOR_BN), test_utils=quick)


@requires_kernels
def test_tensor_bn_backward_for_the_norm_alone(device):
    """Only the norm needs a gradient (no weight gradient): the backward still reads the output."""
    N, C, H, W = 2, 3, 4, 4
    x = torch.randn(N, C, H, W, device=device)
    y = torch.randn(N, C, H, W, device=device) * 3 + 1
    w = torch.rand(2, device=device)
    norm = _random_norm(C, torch.float32, device).requires_grad_()
    _node_against_reference(x, [y], w, ["tensor_bn", "skip"], [norm], 1e-4)


# ---- no copy of a term tensor -------------------------------------------------------------

_COPY_OPS = {"aten::clone", "aten::copy_", "aten::contiguous", "aten::_to_copy"}


def _copies_inside_gaea_ops(fn, shape):
    """The copy ops of tensors of `shape` that run inside a gaea_ext op while fn() runs."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
        fn()
    found = []
    for event in prof.events():
        if event.name not in _COPY_OPS or not any(list(s) == list(shape) for s in event.input_shapes):
            continue
        parent = event.cpu_parent
        while parent is not None and not parent.name.startswith("gaea_ext::"):
            parent = parent.cpu_parent
        if parent is not None:
            found.append((event.name, parent.name))
    return found


@requires_kernels
@pytest.mark.parametrize("layout", LAYOUTS)
def test_slices_are_read_in_place(layout):
    N, C, H, W = 2, 3, 6, 5
    x = torch.randn(N, C, H, W)  # contiguous: a channels_last x is copied (the pools read NCHW planes)
    Y, (y0, y1) = _batched(N, 2, C, H, W, torch.float32, "cpu", layout)
    assert not y0.is_contiguous() and not y0.is_contiguous(memory_format=torch.channels_last)
    w = torch.rand(3, requires_grad=True)
    bns = [nn.BatchNorm2d(C, affine=False), nn.BatchNorm2d(C, affine=False)]
    norm = _random_norm(C, torch.float32, "cpu").requires_grad_()

    def node():
        out = gaea_ext.mixed_op(x, [y0, y1], w, ["tensor", "tensor_bn", "skip"], [norm])
        torch.autograd.grad(out, [w, norm], torch.randn_like(out))

    def stats():
        n = gaea_ext.tensor_batch_norm(Y.requires_grad_(), bns)
        torch.autograd.grad(n, Y, torch.randn_like(n))
        Y.requires_grad_(False)

    assert _copies_inside_gaea_ops(node, (N, C, H, W)) == []
    assert _copies_inside_gaea_ops(stats, (N, 2 * C, H, W)) == []
    # the check sees a copy where there is one: a spatially transposed output has uneven planes
    z = torch.randn(N, C, W, H).transpose(2, 3)
    copies = _copies_inside_gaea_ops(lambda: gaea_ext.mixed_op(x, [z], w[:1], ["tensor"]), (N, C, H, W))
    assert copies and all(parent == "gaea_ext::mixed_node" for _, parent in copies)


# ---- tensor_batch_norm: exactly BatchNorm2d(affine=False) per channel block ----------------


def _modules(device, dtype=torch.float64):
    """Three BatchNorms of 2, 3 and 1 features with different momenta and eps, and copies."""
    specs = [(2, 0.1, 1e-5), (3, None, 1e-3), (1, 0.3, 1e-5)]
    ours = [nn.BatchNorm2d(c, eps=e, momentum=m, affine=False).to(device, dtype) for c, m, e in specs]
    theirs = [nn.BatchNorm2d(c, eps=e, momentum=m, affine=False).to(device, dtype) for c, m, e in specs]
    return ours, theirs


@requires_kernels
@pytest.mark.parametrize("layout", LAYOUTS)
def test_tensor_batch_norm_is_batchnorm2d_per_block(device, layout):
    ours, theirs = _modules(device)
    for step in range(4):
        if step == 3:
            for bn in ours + theirs:
                bn.eval()
        Y = (torch.randn(3, 6, 5, 7, dtype=torch.float64, device=device) * (step + 1) + step)
        Y = Y.contiguous(memory_format=layout).requires_grad_()
        norm = gaea_ext.tensor_batch_norm(Y, ours)
        assert norm.shape == (2, 6) and norm.dtype == torch.float64
        got = (Y - norm[0].reshape(1, -1, 1, 1)) * norm[1].reshape(1, -1, 1, 1)
        want = torch.cat([bn(block) for bn, block in zip(theirs, Y.split([2, 3, 1], dim=1))], dim=1)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        g = torch.randn_like(got)
        torch.testing.assert_close(torch.autograd.grad(got, Y, g)[0], torch.autograd.grad(want, Y, g)[0],
                                   rtol=1e-10, atol=1e-10)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a.running_mean, b.running_mean, rtol=1e-14, atol=1e-14)
        torch.testing.assert_close(a.running_var, b.running_var, rtol=1e-14, atol=1e-14)
        assert int(a.num_batches_tracked) == int(b.num_batches_tracked) == 3


@requires_kernels
@pytest.mark.parametrize("dtype", DTYPES)
def test_tensor_batch_norm_dtypes_match_reference(device, dtype):
    bn = nn.BatchNorm2d(4, affine=False).to(device)
    Y = torch.randn(3, 8, 5, 3, dtype=torch.float64, device=device).to(dtype)[:, 4:].requires_grad_()
    got = gaea_ext.tensor_batch_norm(Y, bn)
    stats = reference.pool_stats(Y, "tensor_bn")
    want = torch.stack([stats[0], torch.rsqrt(stats[1] + bn.eps)])
    assert got.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    torch.testing.assert_close(got, want, rtol=TOL[dtype], atol=TOL[dtype])
    g = torch.randn_like(got)
    torch.testing.assert_close(torch.autograd.grad(got, Y, g)[0].double(), torch.autograd.grad(want, Y, g)[0].double(),
                               rtol=TOL[dtype], atol=TOL[dtype] * 10)


@requires_kernels
def test_tensor_batch_norm_gradcheck(device):
    bns = [nn.BatchNorm2d(2, affine=False), nn.BatchNorm2d(1, affine=False)]
    for bn in bns:
        bn.to(device, torch.float64)
    Y = torch.randn(2, 3, 3, 4, dtype=torch.float64, device=device).contiguous(memory_format=torch.channels_last)
    assert torch.autograd.gradcheck(lambda Y: gaea_ext.tensor_batch_norm(Y, bns), (Y.requires_grad_(),))
    assert torch.autograd.gradgradcheck(lambda Y: gaea_ext.tensor_batch_norm(Y, bns), (Y,), fast_mode=True)


@requires_kernels
@pytest.mark.parametrize("momentum", [0.1, None])
def test_batched_edges_are_the_darts_ops(device, momentum):
    """A node whose E edges' convs run as one batched conv: tensor_bn terms on the output's
    slices with the slices of one tensor_batch_norm, against DARTS' per-edge
    Sequential(conv, BatchNorm2d(affine=False)); outputs, gradients, running statistics, train
    and eval mode. The modules themselves as norms give the same."""
    E, N, C, H, W = 3, 2, 2, 5, 4
    dt = torch.float64
    conv = nn.Conv2d(C, E * C, 3, padding=1, bias=False).to(device, dt)
    ours = [nn.BatchNorm2d(C, affine=False, momentum=momentum).to(device, dt) for _ in range(E)]
    mods = [nn.BatchNorm2d(C, affine=False, momentum=momentum).to(device, dt) for _ in range(E)]
    theirs = [nn.BatchNorm2d(C, affine=False, momentum=momentum).to(device, dt) for _ in range(E)]
    w = torch.rand(E, 2, dtype=dt, device=device, requires_grad=True)
    for step in range(3):
        if step == 2:
            for bn in ours + mods + theirs:
                bn.eval()
        x = (torch.randn(N, C, H, W, dtype=dt, device=device) + step).requires_grad_()
        Y = conv(x)
        norm = gaea_ext.tensor_batch_norm(Y, ours)
        slices = [Y[:, e * C:(e + 1) * C] for e in range(E)]
        edges = [(x, [slices[e]], ["tensor_bn", "skip"]) for e in range(E)]
        got = gaea_ext.mixed_node(edges, w, [norm[:, e * C:(e + 1) * C] for e in range(E)])
        got_modules = gaea_ext.mixed_node(edges, w, mods)
        want = sum(w[e, 0] * theirs[e](slices[e]) + w[e, 1] * x for e in range(E))
        torch.testing.assert_close(got, want)
        torch.testing.assert_close(got_modules, want)
        g = torch.randn_like(got)
        leaves = [x, w, conv.weight]
        _assert_grads_close(torch.autograd.grad(got, leaves, g, retain_graph=True),
                            torch.autograd.grad(want, leaves, g, retain_graph=True), leaves, 1e-9)
        _assert_grads_close(torch.autograd.grad(got_modules, leaves, g, retain_graph=True),
                            torch.autograd.grad(want, leaves, g),
                            leaves, 1e-9)
    for a, m, b in zip(ours, mods, theirs):
        for bn in (a, m):
            torch.testing.assert_close(bn.running_mean, b.running_mean, rtol=1e-14, atol=1e-14)
            torch.testing.assert_close(bn.running_var, b.running_var, rtol=1e-14, atol=1e-14)
            assert int(bn.num_batches_tracked) == int(b.num_batches_tracked) == 2


# ---- bad input ------------------------------------------------------------------------------


def _eval(bn):
    return bn.eval()


@pytest.mark.parametrize("call,err,match", [
    (lambda Y: gaea_ext.tensor_batch_norm(Y, [nn.BatchNorm2d(2, affine=False), _eval(nn.BatchNorm2d(2, affine=False))]),
     ValueError, "^tensor_batch_norm: 'bns' must all normalise in one mode"),
    (lambda Y: gaea_ext.tensor_batch_norm(Y, [nn.BatchNorm2d(2, affine=False)]), ValueError, "'bns'.*sum to x's 4"),
    (lambda Y: gaea_ext.tensor_batch_norm(Y, [nn.BatchNorm2d(4)]), ValueError, "'bns\\[0\\]' must have affine=False"),
    (lambda Y: gaea_ext.tensor_batch_norm(Y, [nn.ReLU()]), TypeError, "'bns\\[0\\]' must be a BatchNorm2d"),
    (lambda Y: gaea_ext.tensor_batch_norm(Y, []), ValueError, "'bns' must hold at least one"),
    (lambda Y: gaea_ext.tensor_batch_norm(Y, torch.ones(2)), TypeError, "'bns'"),
    (lambda Y: gaea_ext.tensor_batch_norm(Y[0], nn.BatchNorm2d(4, affine=False)), ValueError, "'x' must be 4-D"),
    (lambda Y: gaea_ext.tensor_batch_norm(Y.long(), nn.BatchNorm2d(4, affine=False)), TypeError, "'x'"),
    (lambda Y: gaea_ext.tensor_batch_norm(Y[:1, :, :1, :1], nn.BatchNorm2d(4, affine=False)), ValueError,
     "one value per channel"),
    (lambda Y: gaea_ext.mixed_op(Y, [Y], torch.rand(1), ["tensor_bn"]), ValueError, "'norms'.*required"),
    (lambda Y: gaea_ext.mixed_op(Y, [], torch.rand(1), ["tensor_bn"], [torch.rand(2, 4)]), ValueError,
     "more 'tensor' kinds \\(1, 'tensor_bn' included\\)"),
    (lambda Y: gaea_ext.mixed_op(Y, [Y], torch.rand(1), ["tensor_bn"], [nn.BatchNorm2d(3, affine=False)]), ValueError,
     "'norms\\[0\\]' is a BatchNorm2d of 3 features"),
])
def test_bad_input_names_the_argument(call, err, match):
    Y = torch.randn(2, 4, 3, 3)
    with pytest.raises(err, match=match):
        call(Y)


def test_refusals_change_no_running_statistics():
    good = nn.BatchNorm2d(2, affine=False)
    with pytest.raises(ValueError, match="'bns'"):
        gaea_ext.tensor_batch_norm(torch.randn(2, 4, 3, 3), [good, _eval(nn.BatchNorm2d(2, affine=False))])
    assert int(good.num_batches_tracked) == 0 and torch.equal(good.running_mean, torch.zeros(2))


# ---- gaea_ext.nn: a Sequential ending in Conv2d, BatchNorm2d(affine=False) --------------------


@requires_kernels
def test_mixed_op_module_runs_conv_bn_sequentials_as_tensor_bn():
    import copy

    C = 3
    ops = [nn.Sequential(nn.ReLU(), nn.Conv2d(C, C, 3, padding=1, bias=False), nn.BatchNorm2d(C, affine=False)),
           nn.Identity(),
           nn.Sequential(nn.MaxPool2d(3, 1, 1), nn.BatchNorm2d(C, affine=False)),
           nn.Sequential(nn.Conv2d(C, C, 1), nn.BatchNorm2d(C))]  # affine: runs as a module
    theirs = copy.deepcopy(ops)
    mixed = gaea_ext.nn.MixedOp(ops).double()
    for op in theirs:
        op.double()
    assert mixed.kinds == ["tensor_bn", "skip", "max_pool_3x3_bn", "tensor"]
    w = torch.rand(4, dtype=torch.float64, requires_grad=True)
    for step in range(3):
        if step == 2:
            mixed.eval()
            for op in theirs:
                op.eval()
        x = torch.randn(2, C, 5, 4, dtype=torch.float64, requires_grad=True)
        got = mixed(x, w)
        want = sum(wk * op(x) for wk, op in zip(w, theirs))
        torch.testing.assert_close(got, want)
        g = torch.randn_like(got)
        ours_leaves, their_leaves = [x, w, ops[0][1].weight], [x, w, theirs[0][1].weight]
        _assert_grads_close(torch.autograd.grad(got, ours_leaves, g), torch.autograd.grad(want, their_leaves, g),
                            ours_leaves, 1e-9)
    for ours_bn, their_bn in ((ops[0][2], theirs[0][2]), (ops[2][1], theirs[2][1])):
        torch.testing.assert_close(ours_bn.running_mean, their_bn.running_mean, rtol=1e-14, atol=1e-14)
        torch.testing.assert_close(ours_bn.running_var, their_bn.running_var, rtol=1e-14, atol=1e-14)
        assert int(ours_bn.num_batches_tracked) == int(their_bn.num_batches_tracked) == 2
