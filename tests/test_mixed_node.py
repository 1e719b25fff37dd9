"""gaea_ext.mixed_op / mixed_node / mixed_terms against the reference: forward, backward,
gradcheck, opcheck, random shapes (hypothesis), layouts, dtypes, max-pool ties, what autograd
saves, determinism and bad input."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import gaea_ext
from gaea_ext import reference
from conftest import assert_same_across_threads, cuda_limit, requires_kernels

ALL_KINDS = ["none", "skip", "avg_pool_3x3", "max_pool_3x3", "tensor", "ones"]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
TOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 2e-2, torch.bfloat16: 1e-1}


def _node(shape, dtype, device, edges=2, kinds=ALL_KINDS, layout=torch.contiguous_format, grad=True):
    """Random edges with distinct values (no max-pool ties) and one conv-like output per 'tensor'."""
    xs = [torch.randn(*shape, dtype=torch.float64, device=device).to(dtype).contiguous(memory_format=layout)
          for _ in range(edges)]
    outs = [[torch.randn(*shape, dtype=torch.float64, device=device).to(dtype).contiguous(memory_format=layout)
             for k in kinds if k == "tensor"] for _ in range(edges)]
    w = torch.rand(edges, len(kinds), dtype=torch.float32, device=device)
    if grad:
        for t in xs + [o for os in outs for o in os] + [w]:
            t.requires_grad_()
    return xs, outs, w


def _flat(xs, outs, kinds):
    outputs, sources, k_all = [], [], []
    for j, os in enumerate(outs):
        used = 0
        for k in kinds:
            if k == "tensor":
                sources.append(len(outputs) + used)
                used += 1
            else:
                sources.append(j)
            k_all.append(k)
        outputs.extend(os)
    return outputs, k_all, sources


def _check(xs, outs, w, kinds, tol):
    out = gaea_ext.mixed_node([(x, o, kinds) for x, o in zip(xs, outs)], w)
    outputs, k_all, sources = _flat(xs, outs, kinds)
    ref = reference.mixed_node(xs, outputs, w.reshape(-1), k_all, sources)
    assert out.dtype == xs[0].dtype and out.shape == xs[0].shape
    torch.testing.assert_close(out.double(), ref.double(), rtol=tol, atol=tol)
    g = torch.randn_like(out)
    leaves = [t for t in xs + outputs + [w] if t.requires_grad]
    got = torch.autograd.grad(out, leaves, g, allow_unused=True)
    # the reference's graph leaves out unused inputs (and is empty for an all-`none` node)
    want = torch.autograd.grad(ref, leaves, g, allow_unused=True) if ref.requires_grad else [None] * len(leaves)
    for a, b, leaf in zip(got, want, leaves):
        a = torch.zeros_like(leaf) if a is None else a
        b = torch.zeros_like(leaf) if b is None else b
        torch.testing.assert_close(a.double(), b.double(), rtol=tol, atol=tol * max(1.0, float(b.abs().max())))
    return out


@requires_kernels
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_reference_every_kind_and_dtype(device, dtype):
    xs, outs, w = _node((2, 3, 7, 9), dtype, device, edges=3)
    _check(xs, outs, w, ALL_KINDS, TOL[dtype])


@requires_kernels
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 1, 1, 5), (1, 2, 4, 1), (3, 2, 2, 2), (2, 5, 13, 11)])
def test_odd_shapes(device, shape):
    xs, outs, w = _node(shape, torch.float64, device)
    _check(xs, outs, w, ALL_KINDS, 1e-10)


@requires_kernels
@pytest.mark.parametrize("limit", ["mixed_node_terms", "mixed_node_xs"])
def test_beyond_the_cuda_limits(device, limit):
    """One term, or one x, more than the CUDA kernel takes per call (above its limits the
    wrapper takes the reference path): the same results everywhere."""
    if limit == "mixed_node_terms":  # 5 kinds per edge, within the xs limit
        kinds = ["none", "skip", "avg_pool_3x3", "max_pool_3x3", "tensor"]
        edges = cuda_limit("mixed_node_terms") // len(kinds) + 1
        assert edges <= cuda_limit("mixed_node_xs")
    else:  # one kind per edge, within the terms limit
        kinds = ["avg_pool_3x3"]
        edges = cuda_limit("mixed_node_xs") + 1
        assert edges <= cuda_limit("mixed_node_terms")
    _check(*_node((1, 2, 3, 4), torch.float64, device, edges=edges, kinds=kinds), kinds, 1e-10)


@requires_kernels
@pytest.mark.parametrize("rows", ["one_row", "two_rows", "several_rows"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_weight_gradients_of_many_terms(device, dtype, rows):
    """5 weight-gradient terms per edge (all but `none`), as many as one row of the CUDA
    backward's blocks reduces in registers (dot_row_bytes of them), just more, and several
    rows' worth."""
    per_row = cuda_limit("dot_row_bytes") // (8 if dtype == torch.float64 else 4)
    edges = {"one_row": max(1, per_row // 5), "two_rows": per_row // 5 + 1, "several_rows": 3 * per_row // 5 + 1}[rows]
    assert edges * len(ALL_KINDS) <= cuda_limit("mixed_node_terms") and edges <= cuda_limit("mixed_node_xs")
    _check(*_node((2, 3, 5, 6), dtype, device, edges=edges), ALL_KINDS, TOL[dtype])


@requires_kernels
def test_channels_last_and_non_contiguous(device):
    xs, outs, w = _node((2, 4, 6, 5), torch.float32, device, layout=torch.channels_last)
    out = _check(xs, outs, w, ALL_KINDS, 2e-5)
    assert out.is_contiguous(memory_format=torch.channels_last)
    base = torch.randn(2, 4, 5, 6, dtype=torch.float64, device=device)
    x = base.transpose(2, 3).requires_grad_(False)  # non-contiguous view
    y = torch.randn(2, 4, 6, 5, dtype=torch.float64, device=device)[:, :, :, :].transpose(0, 0)
    w = torch.rand(3, dtype=torch.float64, device=device, requires_grad=True)
    got = gaea_ext.mixed_op(x, [y], w, ["avg_pool_3x3", "tensor", "max_pool_3x3"])
    want = reference.mixed_node([x], [y], w, ["avg_pool_3x3", "tensor", "max_pool_3x3"], [0, 0, 0])
    torch.testing.assert_close(got, want)


@requires_kernels
def test_gradcheck_float64(device):
    kinds = ["skip", "avg_pool_3x3", "max_pool_3x3", "tensor", "none"]
    x = torch.randn(2, 2, 5, 4, dtype=torch.float64, device=device, requires_grad=True)
    y = torch.randn(2, 2, 5, 4, dtype=torch.float64, device=device, requires_grad=True)
    w = torch.rand(len(kinds), dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, y, w: gaea_ext.mixed_op(x, [y], w, kinds), (x, y, w))


@requires_kernels
@pytest.mark.parametrize("need", [(True, True, True), (True, False, True), (False, True, False), (False, False, True)])
def test_opcheck(device, need):
    x = torch.randn(2, 3, 5, 6, device=device, requires_grad=need[0])
    y = torch.randn(2, 3, 5, 6, device=device, requires_grad=need[1])
    w = torch.rand(4, device=device, requires_grad=need[2])
    args = ([x, x * 2], [y], w, [1, 2, 3, 4], [0, 1, 0, 0])
    torch.library.opcheck(torch.ops.gaea_ext.mixed_node.default, args)
    g = torch.randn(2, 3, 5, 6, device=device)
    torch.library.opcheck(torch.ops.gaea_ext.mixed_node_backward.default,
                          (g, [x.detach(), x.detach()], [y.detach()], w.detach(), [1, 2, 3, 4], [0, 1, 0, 0],
                           None, [True, False], [True], True, False))


@st.composite
def cases(draw):
    n = draw(st.integers(1, 3))
    c = draw(st.integers(1, 4))
    h = draw(st.integers(1, 9))
    w = draw(st.integers(1, 9))
    edges = draw(st.integers(1, 3))
    kinds = draw(st.lists(st.sampled_from(ALL_KINDS), min_size=1, max_size=6))
    dtype = draw(st.sampled_from(DTYPES))
    layout = draw(st.sampled_from([torch.contiguous_format, torch.channels_last]))
    return (n, c, h, w), edges, kinds, dtype, layout


@requires_kernels
@given(cases())
def test_random_nodes_match_reference(case):
    shape, edges, kinds, dtype, layout = case
    xs, outs, w = _node(shape, dtype, "cpu", edges=edges, kinds=kinds, layout=layout)
    _check(xs, outs, w, kinds, TOL[dtype])


@requires_kernels
def test_max_pool_ties_route_like_pytorch(device):
    x = torch.zeros(1, 1, 4, 4, device=device, dtype=torch.float64)  # every window is a tie
    x[0, 0, 2, 2] = -1.0
    x.requires_grad_()
    w = torch.ones(1, dtype=torch.float64, device=device)
    g = torch.arange(16.0, dtype=torch.float64, device=device).view(1, 1, 4, 4)
    got, = torch.autograd.grad(gaea_ext.mixed_op(x, [], w, ["max_pool_3x3"]), x, g)
    want, = torch.autograd.grad(F.max_pool2d(x, 3, 1, 1), x, g)
    assert torch.equal(got, want)


def _tied_plane(H, W, seed, nans):
    """Values in {-1, 0, 1} (ties in almost every window), optionally with a few NaNs."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(-1, 2, (2, 3, H, W), generator=gen).double()
    if nans:
        x.view(-1)[torch.randint(0, x.numel(), (nans,), generator=gen)] = float("nan")
    return x, torch.randn(x.shape, generator=gen, dtype=torch.float64)


@requires_kernels
@given(st.integers(1, 7), st.integers(1, 7), st.integers(0, 2), st.integers(0, 2**31 - 1))
def test_max_pool_routing_with_ties_and_nans_matches_pytorch(H, W, nans, seed):
    x, g = _tied_plane(H, W, seed, nans)
    x.requires_grad_()
    w = torch.tensor([0.7], dtype=torch.float64, requires_grad=True)
    got_x, got_w = torch.autograd.grad(gaea_ext.mixed_op(x, [], w, ["max_pool_3x3"]), (x, w), g)
    pooled = F.max_pool2d(x, 3, 1, 1)
    want_x, = torch.autograd.grad(0.7 * pooled, x, g)
    # every window's grad lands on PyTorch's chosen cell (a misrouted one is off by O(1); the
    # CUDA kernel scales a cell's summed grads once, hence last-bit differences)
    torch.testing.assert_close(got_x, want_x, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got_w, (pooled * g).sum().view(1), equal_nan=True)


@requires_kernels
def test_saves_only_inputs_and_outputs():
    saved = []

    def pack(t):
        saved.append(t)
        return t

    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    convs = [torch.randn(2, 3, 8, 8, requires_grad=True) for _ in range(2)]
    w = torch.rand(5, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        gaea_ext.mixed_op(x, convs, w, ["none", "skip", "tensor", "tensor", "avg_pool_3x3"])
    ptrs = {t.data_ptr() for t in saved}
    assert ptrs and ptrs <= {x.data_ptr(), w.data_ptr(), *(c.data_ptr() for c in convs)}  # no pooled tensor
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        gaea_ext.mixed_op(x, convs, w.detach(), ["none", "skip", "tensor", "tensor", "max_pool_3x3"])
    # without a weight gradient the conv outputs are not kept either
    assert {t.data_ptr() for t in saved} <= {x.data_ptr(), w.data_ptr()}


@requires_kernels
def test_backward_is_deterministic_across_threads():
    xs, outs, w = _node((4, 8, 16, 16), torch.float32, "cpu", edges=3)
    g = torch.randn(4, 8, 16, 16)

    def grads():
        out = gaea_ext.mixed_node([(x, o, ALL_KINDS) for x, o in zip(xs, outs)], w)
        return torch.autograd.grad(out, [w, *xs], g)

    assert_same_across_threads(grads)


@requires_kernels
def test_compiles_without_graph_breaks():
    x = torch.randn(2, 3, 6, 6, requires_grad=True)
    y = torch.randn(2, 3, 6, 6, requires_grad=True)
    w = torch.rand(3, requires_grad=True)

    kinds = ["avg_pool_3x3", "tensor", "max_pool_3x3"]

    def f(x, y, w):
        return gaea_ext.mixed_op(x, [y], w, kinds).square().sum()

    def f_reference(x, y, w):
        return reference.mixed_node([x], [y], w, kinds, [0, 0, 0]).square().sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x, y, w), f_reference(x, y, w))
    ga = torch.autograd.grad(compiled(x, y, w), [x, y, w])
    gb = torch.autograd.grad(f_reference(x, y, w), [x, y, w])
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("call,err,match", [
    (lambda x, w: gaea_ext.mixed_op(x, [], w[:1], ["conv"]), ValueError, "kinds\\[0\\]"),
    (lambda x, w: gaea_ext.mixed_op(x, [], w[:1], ["tensor"]), ValueError, "more 'tensor' kinds"),
    (lambda x, w: gaea_ext.mixed_op(x, [x], w[:1], ["skip"]), ValueError, "1 outputs but 0"),
    (lambda x, w: gaea_ext.mixed_op(x, [], w, ["skip"]), ValueError, "'weights'"),
    (lambda x, w: gaea_ext.mixed_op(x[0], [], w[:1], ["skip"]), ValueError, "4-D"),
    (lambda x, w: gaea_ext.mixed_op(x.int(), [], w[:1], ["skip"]), TypeError, "float16"),
    (lambda x, w: gaea_ext.mixed_op(x, [x.double()], w[:2], ["skip", "tensor"]), TypeError, "outputs\\[0\\]"),
    (lambda x, w: gaea_ext.mixed_op(x, [x[:, :1]], w[:2], ["skip", "tensor"]), ValueError, "shape"),
    (lambda x, w: gaea_ext.mixed_op(x, [], w.long()[:1], ["skip"]), TypeError, "floating"),
    (lambda x, w: gaea_ext.mixed_op(x, [], w[:1], "skip"), TypeError, "string"),
    (lambda x, w: gaea_ext.mixed_node([], w), ValueError, "at least one edge"),
    (lambda x, w: gaea_ext.mixed_terms([x], [x, x], w[:2], ["tensor", "tensor"], [0, 0]), ValueError, "exactly one"),
    (lambda x, w: gaea_ext.mixed_terms([x], [], w[:1], [1], [0]), TypeError, "kinds\\[0\\]"),
    (lambda x, w: gaea_ext.mixed_terms([x], [], w[:1], ["skip"], [0.0]), TypeError, "sources\\[0\\]"),
    (lambda x, w: gaea_ext.mixed_terms([x], [], w[:1], ["skip"], [3]), ValueError, "sources\\[0\\]"),
    (lambda x, w: gaea_ext.mixed_terms(x, [], w[:1], ["skip"], [0]), TypeError, "'xs'"),
    (lambda x, w: gaea_ext.mixed_op(x, [], w.tolist()[:1], ["skip"]), TypeError, "'weights'"),
])
def test_bad_input_names_the_argument(call, err, match):
    x = torch.randn(2, 3, 4, 4)
    w = torch.rand(3)
    with pytest.raises(err, match=match):
        call(x, w)


# ---- porting DARTS code: kinds, weight forms, errors naming the function called -------------

DARTS_PRIMITIVES = ["none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5",
                    "dil_conv_3x3", "dil_conv_5x5"]


def test_darts_op_names_are_unknown_kinds_listed_first():
    """DARTS' op names as kinds, with one output per conv: the unknown kind is reported (not
    the outputs/'tensor' count), with the valid kinds and what to use instead."""
    x = torch.randn(2, 3, 4, 4)
    convs = [torch.randn(2, 3, 4, 4) for _ in range(4)]
    w = torch.rand(len(DARTS_PRIMITIVES))
    with pytest.raises(ValueError) as error:
        gaea_ext.mixed_op(x, convs, w, DARTS_PRIMITIVES)
    message = str(error.value)
    assert message.startswith("mixed_op: 'kinds[3]' is 'skip_connect', an unknown kind")
    for kind in reference.MIXED_KINDS:
        assert repr(kind) in message
    assert "use 'skip'" in message
    with pytest.raises(ValueError, match="'kinds\\[0\\]' is 'sep_conv_3x3', an unknown kind.*"
                                         "run as modules.*kind 'tensor'"):
        gaea_ext.mixed_op(x, convs[:1], w[:2], ["sep_conv_3x3", "skip"])


def test_unknown_kind_is_reported_before_other_errors():
    x = torch.randn(2, 3, 4, 4)
    # outputs, weights and x are all wrong too: the kind is what is reported
    with pytest.raises(ValueError, match="^mixed_node: edges\\[1\\] 'kinds\\[1\\]' is 'dil_conv_5x5'"):
        gaea_ext.mixed_node([(x, [], ["skip"]), (x[0], [x, x], ["none", "dil_conv_5x5"])], torch.rand(7))
    with pytest.raises(ValueError, match="^mixed_terms: 'kinds\\[0\\]' is 'conv'"):
        gaea_ext.mixed_terms([x[0]], [], torch.rand(2), ["conv"], [0])


@pytest.mark.parametrize("name,call,err", [
    ("mixed_op", lambda x, w: gaea_ext.mixed_op(x[0], [], w[:1], ["skip"]), ValueError),
    ("mixed_op", lambda x, w: gaea_ext.mixed_op(x, [], w, ["skip"]), ValueError),
    ("mixed_op", lambda x, w: gaea_ext.mixed_op(x, [x.double()], w[:2], ["skip", "tensor"]), TypeError),
    ("mixed_op", lambda x, w: gaea_ext.mixed_op(x, [x], w[:1], ["skip"]), ValueError),
    ("mixed_op", lambda x, w: gaea_ext.mixed_op(x, x, w[:1], ["tensor"]), TypeError),
    ("mixed_op", lambda x, w: gaea_ext.mixed_op(x, [], w[:1], ["avg_pool_3x3_bn"]), ValueError),
    ("mixed_node", lambda x, w: gaea_ext.mixed_node([(x, [], ["skip"]), (x[:, :1], [], ["skip"])], w[:2]),
     ValueError),
    ("mixed_node", lambda x, w: gaea_ext.mixed_node([(x, [], ["skip"])], w), ValueError),
    ("mixed_node", lambda x, w: gaea_ext.mixed_node([(x, [], ["max_pool_3x3_bn"])], w[:1], [w]), ValueError),
    ("mixed_terms", lambda x, w: gaea_ext.mixed_terms([x[0]], [], w[:1], ["skip"], [0]), ValueError),
    ("mixed_terms", lambda x, w: gaea_ext.mixed_terms([x], [], w, ["skip"], [0]), ValueError),
])
def test_errors_name_the_function_called(name, call, err):
    x = torch.randn(2, 3, 4, 4)
    w = torch.rand(3)
    with pytest.raises(err, match=f"^{name}: "):
        call(x, w)


def test_errors_name_the_arguments_as_the_caller_knows_them():
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match="^mixed_op: 'x' must be 4-D"):
        gaea_ext.mixed_op(x[0], [], torch.rand(1), ["skip"])
    with pytest.raises(ValueError, match="^mixed_node: 'edges\\[1\\]\\[0\\]' must have edges\\[0\\]\\[0\\]'s shape"):
        gaea_ext.mixed_node([(x, [], ["skip"]), (x[:, :2], [], ["skip"])], torch.rand(2))
    with pytest.raises(TypeError, match="^mixed_node: 'edges\\[1\\]\\[1\\]\\[0\\]' must have edges\\[0\\]\\[0\\]'s dtype"):
        gaea_ext.mixed_node([(x, [], ["skip"]), (x, [x.double()], ["tensor"])], torch.rand(2))


def test_weights_as_a_row_or_a_list_of_scalars(device):
    kinds = ["skip", "avg_pool_3x3", "tensor", "max_pool_3x3"]
    x = torch.randn(2, 3, 5, 5, device=device, requires_grad=True)
    y = torch.randn(2, 3, 5, 5, device=device, requires_grad=True)
    alpha = torch.randn(1, 4, device=device, requires_grad=True)
    want = reference.mixed_node([x], [y], torch.softmax(alpha, dim=-1).reshape(-1), kinds, [0, 0, 0, 0])
    g = torch.randn_like(want)
    want_grads = torch.autograd.grad(want, [x, y, alpha], g)
    for form in (lambda r: r, lambda r: list(r[0]), lambda r: tuple(w.reshape(1) for w in r[0])):
        got = gaea_ext.mixed_op(x, [y], form(torch.softmax(alpha, dim=-1)), kinds)
        torch.testing.assert_close(got, want)
        for a, b in zip(torch.autograd.grad(got, [x, y, alpha], g), want_grads):
            torch.testing.assert_close(a, b)
    # a node: a list with one 0-d tensor per kind of every edge
    row = torch.softmax(alpha, dim=-1).detach()
    got = gaea_ext.mixed_node([(x, [y], kinds), (y, [x], kinds)], list(torch.cat([row[0], row[0].flip(0)])))
    want = (reference.mixed_node([x], [y], row.reshape(-1), kinds, [0] * 4)
            + reference.mixed_node([y], [x], row.reshape(-1).flip(0), kinds, [0] * 4))
    torch.testing.assert_close(got, want)


@requires_kernels
def test_gradcheck_weight_list(device):
    kinds = ["skip", "max_pool_3x3", "tensor"]
    x = torch.randn(2, 2, 4, 3, dtype=torch.float64, device=device, requires_grad=True)
    y = torch.randn(2, 2, 4, 3, dtype=torch.float64, device=device, requires_grad=True)
    ws = [torch.rand((), dtype=torch.float64, device=device, requires_grad=True) for _ in kinds]
    assert torch.autograd.gradcheck(lambda x, y, a, b, c: gaea_ext.mixed_op(x, [y], [a, b, c], kinds),
                                    (x, y, *ws))
