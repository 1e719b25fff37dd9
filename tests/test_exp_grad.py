"""exp_grad_step_ / exp_grad_step_multi_: the EG formula (docs/method.md 2.2-2.6), invariants, stress."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import gaea_ext
from gaea_ext import reference
from conftest import cuda_limit, requires_kernels

ORDERS = ["clamp_then_normalize", "normalize_then_clamp"]


def eg_formula(p, g, lr, segments=None, min_value=1e-5, order="clamp_then_normalize",
               entropic_reg=0.0, adaptive=False):
    """Independent float64 EG step: u = p*exp(-lr*(g + reg*(log(k p)+1))), clamp/normalise per segment."""
    p, g = p.double(), g.double()
    if adaptive:
        lr = lr / g.abs().max()
    segments = list(segments) if segments else [p.shape[-1]]
    outs = []
    for ps, gs in zip(p.split(segments, -1), g.split(segments, -1)):
        k = ps.shape[-1]
        u = ps * torch.exp(-lr * (gs + entropic_reg * (torch.log(k * ps) + 1)))
        if order == "clamp_then_normalize":
            u = u.clamp_min(min_value)
            u = u / u.sum(-1, keepdim=True)
        else:
            u = u / u.sum(-1, keepdim=True)
            u = u.clamp_min(min_value)
        outs.append(u)
    return torch.cat(outs, -1)


def random_simplex(shape, segments=None, device="cpu", dtype=torch.float32, spread=2.0, gen=None):
    """Rows (or segments of rows) on the simplex, all entries positive."""
    logits = torch.randn(shape, generator=gen, dtype=torch.float64) * spread
    segments = list(segments) if segments else [shape[-1]]
    p = torch.cat([s.softmax(-1) for s in logits.split(segments, -1)], -1)
    return p.to(device=device, dtype=dtype)


def segment_sums(p, segments=None):
    segments = list(segments) if segments else [p.shape[-1]]
    return torch.stack([s.double().sum(-1) for s in p.split(segments, -1)], -1)


def tol(dtype):
    return dict(rtol=2e-5, atol=1e-12) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-300)


# ---------------------------------------------------------------------------------------------
# the formula, on random cases


@st.composite
def eg_cases(draw):
    lead = [draw(st.integers(1, 5)) for _ in range(draw(st.integers(0, 2)))]
    n_seg = draw(st.integers(1, 5))
    segments = [draw(st.integers(1, 9)) for _ in range(n_seg)]
    use_segments = n_seg > 1 or draw(st.booleans())
    shape = lead + [sum(segments)]
    return dict(
        shape=shape,
        segments=segments if use_segments and n_seg > 1 else None,
        lr=draw(st.sampled_from([0.0, 1e-3, 0.01, 0.1, 1.0, 3.0])),
        g_scale=draw(st.sampled_from([0.1, 1.0, 5.0])),
        min_value=draw(st.sampled_from([0.0, 1e-5, 1e-3])),
        order=draw(st.sampled_from(ORDERS)),
        entropic_reg=draw(st.sampled_from([0.0, 0.01, 0.3])),
        adaptive=draw(st.booleans()),
        dtype=draw(st.sampled_from([torch.float32, torch.float64])),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


@given(eg_cases())
def test_matches_formula(device, case):
    gen = torch.Generator().manual_seed(case["seed"])
    dtype, segments = case["dtype"], case["segments"]
    p = random_simplex(case["shape"], segments, device, dtype, gen=gen)
    g = (torch.randn(case["shape"], generator=gen, dtype=torch.float64) * case["g_scale"]).to(device, dtype)
    kw = dict(segments=segments, min_value=case["min_value"], order=case["order"],
              entropic_reg=case["entropic_reg"], adaptive=case["adaptive"])
    want = eg_formula(p, g, case["lr"], **kw)
    g_before = g.clone()
    ret = gaea_ext.exp_grad_step_(p, g, case["lr"], **kw)
    assert ret is p
    assert torch.equal(g, g_before), "grad was modified"
    torch.testing.assert_close(p.double().cpu(), want.cpu(), **tol(dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("order", ORDERS)
def test_reference_exp_grad_step_matches_formula(dtype, order):
    """gaea_ext.reference.exp_grad_step (out of place) is itself the formula."""
    p = random_simplex((7, 8), dtype=dtype)
    g = torch.randn(7, 8, dtype=dtype) * 3
    before = p.clone()
    got = reference.exp_grad_step(p, g, 0.3, min_value=1e-3, order=order, entropic_reg=0.05)
    assert torch.equal(p, before), "reference.exp_grad_step must be out of place"
    torch.testing.assert_close(got.double(), eg_formula(p, g, 0.3, min_value=1e-3, order=order,
                                                        entropic_reg=0.05), **tol(dtype))


# ---------------------------------------------------------------------------------------------
# invariants and specific options


def test_rows_sum_to_one_float32(device):
    p = random_simplex((64, 8), device=device)
    g = torch.randn(64, 8, device=device) * 10
    gaea_ext.exp_grad_step_(p, g, 0.1)
    assert (segment_sums(p) - 1).abs().max() <= 1e-6
    assert (p > 0).all()


def test_clamp_then_normalize_floor(device):
    """Clamp acts on the unnormalised product: an entry at the floor is min_value / sum(max(u, min_value))."""
    p = torch.tensor([[0.5, 0.25, 0.25]], device=device, dtype=torch.float64)
    g = torch.tensor([[0.0, 50.0, 60.0]], device=device, dtype=torch.float64)  # u_1, u_2 << 1e-5
    gaea_ext.exp_grad_step_(p, g, 1.0, min_value=1e-5)
    s = 0.5 + 2e-5
    want = torch.tensor([[0.5 / s, 1e-5 / s, 1e-5 / s]], dtype=torch.float64)
    torch.testing.assert_close(p.cpu(), want, rtol=1e-12, atol=0)


def test_normalize_then_clamp_floor(device):
    """GDAS order: normalise first, then clamp, so entries are >= min_value and the row may exceed 1."""
    p = torch.tensor([[0.5, 0.25, 0.25]], device=device, dtype=torch.float64)
    g = torch.tensor([[0.0, 50.0, 60.0]], device=device, dtype=torch.float64)
    gaea_ext.exp_grad_step_(p, g, 1.0, min_value=1e-5, order="normalize_then_clamp")
    u = torch.tensor([0.5, 0.25 * math.exp(-50), 0.25 * math.exp(-60)], dtype=torch.float64)
    want = (u / u.sum()).clamp_min(1e-5)[None]
    torch.testing.assert_close(p.cpu(), want, rtol=1e-12, atol=0)
    assert p.sum() > 1


@pytest.mark.parametrize("order", ORDERS)
def test_segments_normalise_independently(device, order):
    segments = [2, 3, 4, 5]
    p = random_simplex((3, 14), segments, device)
    g = torch.randn(3, 14, device=device) * 2
    want = eg_formula(p, g, 0.5, segments=segments, order=order)
    gaea_ext.exp_grad_step_(p, g, 0.5, segments=segments, order=order)
    torch.testing.assert_close(p.double(), want, **tol(torch.float32))
    sums = segment_sums(p, segments)
    if order == "clamp_then_normalize":
        assert (sums - 1).abs().max() <= 1e-6, sums
    # each segment is the step of that segment alone
    p2 = random_simplex((3, 14), segments, device)
    alone = [eg_formula(ps, gs, 0.5, order=order) for ps, gs in zip(p2.split(segments, -1), g.split(segments, -1))]
    gaea_ext.exp_grad_step_(p2, g, 0.5, segments=segments, order=order)
    for got, want_s in zip(p2.split(segments, -1), alone):
        torch.testing.assert_close(got.double(), want_s, **tol(torch.float32))


@requires_kernels
def test_more_segments_than_the_cuda_kernel_takes(device):
    """A few more segments in one row than the CUDA kernel takes per param (above its limit
    the wrapper takes the reference path): the same step everywhere."""
    segments = [2, 3] * (cuda_limit("exp_grad_segments") // 2 + 3)
    p = random_simplex((3, sum(segments)), segments, device)
    g = torch.randn(3, sum(segments), device=device)
    want = eg_formula(p, g, 0.5, segments=segments)
    gaea_ext.exp_grad_step_(p, g, 0.5, segments=segments)
    torch.testing.assert_close(p.double(), want, **tol(torch.float32))
    assert (segment_sums(p, segments) - 1).abs().max() <= 1e-6


def test_adaptive_equals_lr_over_max_abs_grad(device):
    p = random_simplex((14, 8), device=device, dtype=torch.float64)
    g = torch.randn(14, 8, device=device, dtype=torch.float64) * 7
    want = eg_formula(p, g, 0.1 / g.abs().max().item())
    gaea_ext.exp_grad_step_(p, g, 0.1, adaptive=True)
    torch.testing.assert_close(p.cpu(), want.cpu(), rtol=1e-12, atol=0)
    # the max is over the whole tensor, not per row
    r = random_simplex((14, 8), device=device, dtype=torch.float64)
    per_row = eg_formula(r, g / g.abs().amax(-1, keepdim=True), 0.1)
    gaea_ext.exp_grad_step_(r, g, 0.1, adaptive=True)
    assert not torch.allclose(r.cpu(), per_row.cpu())


@pytest.mark.parametrize("reg", [0.01, 0.5])
def test_entropic_reg(device, reg):
    p = random_simplex((6, 5), device=device, dtype=torch.float64)
    g = torch.randn(6, 5, device=device, dtype=torch.float64)
    lr = 0.2
    # derived form (docs/method.md 2.5), valid when nothing clamps: p^(1 - lr*reg) * exp(-lr*g), normalised
    u = p ** (1 - lr * reg) * torch.exp(-lr * g)
    derived = u / u.sum(-1, keepdim=True)
    want = eg_formula(p, g, lr, min_value=0.0, entropic_reg=reg)
    torch.testing.assert_close(want, derived, rtol=1e-12, atol=0)
    gaea_ext.exp_grad_step_(p, g, lr, min_value=0.0, entropic_reg=reg)
    torch.testing.assert_close(p, derived, rtol=1e-12, atol=0)


def test_entropic_reg_pulls_toward_uniform(device):
    p = torch.tensor([[0.7, 0.2, 0.1]], device=device, dtype=torch.float64)
    g = torch.zeros_like(p)
    gaea_ext.exp_grad_step_(p, g, 1.0, entropic_reg=0.5)
    want = torch.tensor([0.7, 0.2, 0.1], dtype=torch.float64) ** 0.5
    torch.testing.assert_close(p.cpu(), (want / want.sum())[None], rtol=1e-12, atol=0)


def test_min_value_zero_means_no_clamp(device):
    p = torch.full((2, 4), 0.25, device=device, dtype=torch.float64)
    g = torch.tensor([[0.0, 30.0, 40.0, 0.0], [0.0, 0.0, 0.0, 25.0]], device=device, dtype=torch.float64)
    want = eg_formula(p, g, 1.0, min_value=0.0)
    gaea_ext.exp_grad_step_(p, g, 1.0, min_value=0.0)
    torch.testing.assert_close(p.cpu(), want.cpu(), rtol=1e-12, atol=0)
    assert (p < 1e-5).any() and (p > 0).all()


def test_zero_lr_renormalises_only(device):
    p = torch.tensor([[0.2, 0.2, 0.6]], device=device) * 2
    gaea_ext.exp_grad_step_(p, torch.randn(1, 3, device=device), 0.0)
    torch.testing.assert_close(p.cpu(), torch.tensor([[0.2, 0.2, 0.6]]), rtol=1e-6, atol=0)


def test_non_contiguous_param(device):
    """A strided param (updated in place, so it must be contiguous) is refused with ValueError, untouched."""
    base = random_simplex((8, 6), device=device).t().contiguous()
    view = base.t()  # (8, 6), rows on a non-contiguous last dim
    g = torch.randn(8, 6, device=device)
    want = eg_formula(view, g, 0.3)
    before = base.clone()
    with pytest.raises(ValueError, match="'param' must be contiguous"):
        gaea_ext.exp_grad_step_(view, g, 0.3)
    assert torch.equal(base, before)
    # its contiguous copy takes the step
    p = view.contiguous()
    gaea_ext.exp_grad_step_(p, g, 0.3)
    torch.testing.assert_close(p.double(), want, **tol(torch.float32))


# ---------------------------------------------------------------------------------------------
# multi-tensor form


@pytest.mark.parametrize("adaptive", [False, True])
def test_multi_steps_each_param_by_the_formula(device, adaptive):
    """One fused call over params of different shapes, each with its own lr (adaptive: its
    own max|grad|): every param gets its own step, and the call returns the 0 flag."""
    segments = [2, 3, 4, 5]
    ps = [random_simplex((3, 14), segments, device), random_simplex((14,), segments, device),
          random_simplex((2, 2, 14), segments, device)]
    gs = [torch.randn(p.shape, device=device) * 3 for p in ps]
    lrs = [0.1, 0.2, 0.05]
    kw = dict(segments=segments, min_value=1e-4, order="normalize_then_clamp",
              entropic_reg=0.01, adaptive=adaptive)
    wants = [eg_formula(p, g, lr, **kw) for p, g, lr in zip(ps, gs, lrs)]
    ret = gaea_ext.exp_grad_step_multi_(ps, gs, lrs, **kw)
    # the status flag: 0-d int32 on the params' device, 0 = the step was applied
    assert isinstance(ret, torch.Tensor) and ret.shape == () and ret.dtype == torch.int32
    assert ret.device == ps[0].device and ret.item() == 0
    for p, want in zip(ps, wants):
        torch.testing.assert_close(p.double(), want, **tol(torch.float32))

    ps2 = [random_simplex((3, 14), segments, device) for _ in range(2)]
    wants2 = [eg_formula(p, g, 0.3, **kw) for p, g in zip(ps2, gs[:1] * 2)]
    gaea_ext.exp_grad_step_multi_(ps2, gs[:1] * 2, 0.3, **kw)  # scalar lr for every param
    for p, want in zip(ps2, wants2):
        torch.testing.assert_close(p.double(), want, **tol(torch.float32))


def test_multi_nonfinite_grad_changes_nothing(device):
    ps = [random_simplex((4, 5), device=device) for _ in range(3)]
    gs = [torch.randn(4, 5, device=device) for _ in range(3)]
    gs[1][2, 3] = float("inf")
    before = [p.clone() for p in ps]
    with pytest.raises(ValueError, match="'grad' holds NaN or Inf; no parameter was changed"):
        gaea_ext.exp_grad_step_multi_(ps, gs, 0.1)
    for p, b in zip(ps, before):
        assert torch.equal(p, b)


@pytest.mark.parametrize("check_finite", [False, True])
def test_multi_reports_nonfinite_grad_and_invalid_param_together(device, check_finite):
    """One param with a NaN grad, another with a negative entry, in one call: both bits of
    the flag (1 | 2 = 3), or both conditions in the message; nothing changes."""
    ps = [random_simplex((4, 5), device=device) for _ in range(3)]
    gs = [torch.randn(4, 5, device=device) for _ in range(3)]
    gs[0][1, 1] = float("nan")
    ps[2][3] = torch.tensor([0.5, 0.7, -0.2, 0.0, 0.0], device=device)
    before = [p.clone() for p in ps]
    if check_finite:
        with pytest.raises(ValueError, match="'grad' holds NaN or Inf; 'param' must hold finite"):
            gaea_ext.exp_grad_step_multi_(ps, gs, 0.1)
    else:
        flag = gaea_ext.exp_grad_step_multi_(ps, gs, 0.1, check_finite=False)
        assert flag.dtype == torch.int32 and flag.item() == 3
    for p, b in zip(ps, before):
        assert torch.equal(p, b)


# ---------------------------------------------------------------------------------------------
# stress: 10,000 steps with large gradients


def _run_steps(p, grads, lr, **kw):
    hist = torch.empty((grads.shape[0] + 1,) + tuple(p.shape), dtype=p.dtype, device=p.device)
    hist[0] = p
    for i in range(grads.shape[0]):
        gaea_ext.exp_grad_step_(p, grads[i], lr, **kw)
        hist[i + 1] = p
    return hist


STRESS_CASES = pytest.mark.parametrize(
    "shape,segments,lr,min_value,order,reg",
    [
        ((14, 8), None, 0.1, 1e-5, "clamp_then_normalize", 0.0),
        ((6, 5), None, 0.1, 1e-5, "normalize_then_clamp", 0.01),
        ((2, 14), [2, 3, 4, 5], 1e-3, 0.0, "clamp_then_normalize", 0.0),
    ],
    ids=["darts", "gdas", "edges"],
)


def _stays_valid(device, steps, shape, segments, lr, min_value, order, reg):
    """`steps` EG steps with gradients of scale 100: every state finite, positive, on its
    simplices, and every step the formula applied to the previous state."""
    gen = torch.Generator().manual_seed(7)
    grads = (torch.randn((steps,) + shape, generator=gen) * 100).to(device)
    p = random_simplex(shape, segments, device)
    hist = _run_steps(p, grads, lr, segments=segments, min_value=min_value, order=order, entropic_reg=reg)
    after = hist[1:]
    assert after.shape[0] == steps
    assert torch.isfinite(after).all()
    assert (after > 0).all(), "an entry reached 0"
    sums = segment_sums(after, segments)
    if order == "clamp_then_normalize":
        assert (sums - 1).abs().max().item() <= 1e-6
    else:
        assert (after >= min_value).all()
        assert sums.min().item() >= 1 - 1e-6 and sums.max().item() <= 1 + shape[-1] * min_value + 1e-6
    # every step is the formula applied to the previous state (float64, vectorised)
    want = eg_formula(hist[:-1], grads, lr, segments=segments, min_value=min_value, order=order,
                      entropic_reg=reg)
    torch.testing.assert_close(after.double(), want, rtol=1e-4, atol=1e-30)


@requires_kernels
@STRESS_CASES
def test_kernel_stays_valid_over_10000_steps(device, shape, segments, lr, min_value, order, reg):
    _stays_valid(device, 10_000, shape, segments, lr, min_value, order, reg)


@STRESS_CASES
def test_reference_path_stays_valid_over_1000_steps(device, monkeypatch, shape, segments, lr, min_value, order, reg):
    """The wrapper's pure-PyTorch path (what serves a device without kernels, or a call beyond
    the CUDA kernel's limits), forced here on every backend."""
    monkeypatch.setattr(gaea_ext.exp_grad, "use_reference", lambda device, **counts: True)
    _stays_valid(device, 1_000, shape, segments, lr, min_value, order, reg)


# ---------------------------------------------------------------------------------------------
# the raw op (extension only): flag instead of raising, no host sync


@requires_kernels
def test_raw_op_flags_nonfinite_grad(device):
    ps = [random_simplex((3, 4), device=device) for _ in range(2)]
    gs = [torch.randn(3, 4, device=device) for _ in range(2)]
    gs[0][1, 1] = float("nan")
    before = [p.clone() for p in ps]
    flag = torch.ops.gaea_ext.exp_grad_step_(ps, gs, [0.1, 0.1], [], [0, 0], [1e-5, 1e-5], [0.0, 0.0], False, False)
    assert flag.dim() == 0 and flag.dtype == torch.int32 and flag.device == ps[0].device
    assert int(flag) == 1
    assert torch.equal(ps[0], before[0])
    assert torch.isfinite(ps[1]).all()
    gs[0][1, 1] = 0.0
    ps = before
    want = [eg_formula(p, g, 0.1) for p, g in zip(ps, gs)]
    flag = torch.ops.gaea_ext.exp_grad_step_(ps, gs, [0.1, 0.1], [], [0, 0], [1e-5, 1e-5], [0.0, 0.0], False, False)
    assert int(flag) == 0
    for p, w in zip(ps, want):
        torch.testing.assert_close(p.double(), w, **tol(torch.float32))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA tests need a GPU")
@requires_kernels
def test_cuda_raw_op_no_host_sync():
    ps = [random_simplex((14, 8), device="cuda") for _ in range(2)] + [random_simplex((14,), [2, 3, 4, 5], "cuda")]
    gs = [torch.randn(p.shape, device="cuda") for p in ps]
    want = [eg_formula(p, g, 0.1, adaptive=True) for p, g in zip(ps[:2], gs[:2])]
    torch.cuda.set_sync_debug_mode("error")
    try:
        # alphas (adaptive lr) in one call, edge weights (per-node segments, no clamp) in another
        torch.ops.gaea_ext.exp_grad_step_(ps[:2], gs[:2], [0.1, 0.1], [], [0, 0], [1e-5, 1e-5], [0.0, 0.0], False, True)
        torch.ops.gaea_ext.exp_grad_step_(ps[2:], gs[2:], [0.1], [2, 3, 4, 5], [4], [0.0], [0.0], False, False)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for p, w in zip(ps, want):
        torch.testing.assert_close(p.double(), w, **tol(torch.float32))


def test_multi_per_param_options_in_one_call(device):
    """DARTS alphas (clamped, regularised) and per-node edge weights (segments, no clamp)
    in one fused call: each gets the step with its own options."""
    alpha = random_simplex((14, 8), device=device)
    beta = random_simplex((14,), [2, 3, 4, 5], device)
    ga, gb = torch.randn(14, 8, device=device), torch.randn(14, device=device)
    want_alpha = eg_formula(alpha, ga, 0.1, min_value=1e-5, entropic_reg=0.01)
    want_beta = eg_formula(beta, gb, 0.2, segments=[2, 3, 4, 5], min_value=0.0)
    gaea_ext.exp_grad_step_multi_(
        [alpha, beta], [ga, gb], [0.1, 0.2], segments=[None, [2, 3, 4, 5]],
        min_value=[1e-5, 0.0], entropic_reg=[0.01, 0.0],
    )
    torch.testing.assert_close(alpha.double(), want_alpha, **tol(torch.float32))
    torch.testing.assert_close(beta.double(), want_beta, **tol(torch.float32))
    for start, length in zip([0, 2, 5, 9], [2, 3, 4, 5]):
        torch.testing.assert_close(beta[start:start + length].sum(), torch.tensor(1.0, device=device))


def test_multi_per_param_options_bad_lengths(device):
    ps = [random_simplex((3, 4), device=device) for _ in range(2)]
    gs = [torch.randn(3, 4, device=device) for _ in range(2)]
    with pytest.raises(ValueError, match="min_value"):
        gaea_ext.exp_grad_step_multi_(ps, gs, 0.1, min_value=[1e-5])
    with pytest.raises(ValueError, match="segments"):
        gaea_ext.exp_grad_step_multi_(ps, gs, 0.1, segments=[None])
    with pytest.raises(ValueError, match="segments"):
        gaea_ext.exp_grad_step_multi_(ps, gs, 0.1, segments=[None, [2, 3]])


# ---------------------------------------------------------------------------------------------
# version counters: a step is an in-place write, and autograd sees it as PyTorch's own


def _inplace_error_of(write):
    """Forward with `w` (uniform 1/3), `write(w)` in place, then backward: the exception raised
    (None if the backward silently used the new values) and x's gradient."""
    x = torch.ones(3, requires_grad=True)
    w = torch.full((3,), 1.0 / 3.0, requires_grad=True)
    out = gaea_ext.weighted_sum([x, 2 * x, 3 * x], w).sum() + (x * w).sum()
    write(w)
    try:
        out.backward()
    except RuntimeError as error:
        return error, None
    return None, x.grad


@pytest.mark.parametrize("path", ["kernels", "reference"])
@pytest.mark.parametrize("op", ["exp_grad_step_", "exp_grad_step_multi_"])
def test_step_bumps_version_and_backward_raises(device, monkeypatch, path, op):
    """Forward with a param, an EG step on it, then backward: autograd raises its own
    "modified by an inplace operation" error, as after PyTorch's in-place ops, instead of
    silently using the stepped weights; the step bumps the param's version counter."""
    if path == "reference":
        monkeypatch.setattr(gaea_ext.exp_grad, "use_reference", lambda device, **counts: True)
    grad = torch.tensor([3.0, 0.0, -3.0])

    def step(w):
        before = w._version
        if op == "exp_grad_step_":
            gaea_ext.exp_grad_step_(w, grad, 1.0)
        else:
            other = torch.full((2, 4), 0.25)
            other_before = other._version
            gaea_ext.exp_grad_step_multi_([w, other], [grad, torch.randn(2, 4)], 1.0)
            assert other._version > other_before
        assert w._version > before
        assert not torch.allclose(w.detach(), torch.full((3,), 1.0 / 3.0))  # the step did write

    def native(w):
        with torch.no_grad():
            w.mul_(1.0)

    want, _ = _inplace_error_of(native)
    got, x_grad = _inplace_error_of(step)
    assert want is not None and "modified by an inplace operation" in str(want)
    assert got is not None, f"backward used the stepped weights silently (x.grad = {x_grad})"
    assert type(got) is type(want)
    assert "modified by an inplace operation" in str(got)


@requires_kernels
def test_raw_op_bumps_version_of_every_param(device):
    """torch.ops.gaea_ext.exp_grad_step_ itself (whatever kernel serves it) bumps each written
    param's version counter, and not the grads'."""
    ps = [torch.full((2, 4), 0.25, device=device), torch.full((6,), 0.5, device=device)]
    gs = [torch.randn(2, 4, device=device), torch.randn(6, device=device)]
    before = [p._version for p in ps]
    grad_before = [g._version for g in gs]
    torch.ops.gaea_ext.exp_grad_step_(ps, gs, [0.1, 0.1], [3, 3], [0, 2], [1e-5, 1e-5], [0.0, 0.0], False, False)
    assert all(p._version > v for p, v in zip(ps, before))
    assert [g._version for g in gs] == grad_before
