"""gaea_ext.optim.ExponentiatedGradient against the reference EG step (gaea_ext.reference):
steps, groups, adaptive lr, schedulers, state_dict, the status flags, bad hyper-parameters."""

import io
import math

import pytest
import torch

from gaea_ext import reference
from gaea_ext.exp_grad import INVALID_PARAM, NONFINITE_GRAD
from gaea_ext.optim import ExponentiatedGradient

SEG = [2, 3, 4, 5]


def simplex(shape, segments=None, device="cpu"):
    logits = torch.randn(shape, dtype=torch.float64)
    segments = segments or [shape[-1]]
    return torch.cat([s.softmax(-1) for s in logits.split(segments, -1)], -1).float().to(device)


def darts_params(device):
    """Two 14x8 alpha tensors and two 14-long edge-weight vectors, as in GAEA PC-DARTS."""
    alphas = [torch.nn.Parameter(simplex((14, 8), device=device)) for _ in range(2)]
    betas = [torch.nn.Parameter(simplex((14,), SEG, device=device)) for _ in range(2)]
    return alphas, betas


def set_grads(params, scale=3.0):
    for p in params:
        p.grad = torch.randn_like(p) * scale


def clones(params):
    return [p.detach().clone() for p in params]


def eg(p, grad, lr, **kw):
    """The expected step: the pure-PyTorch reference, independent of the kernels."""
    return reference.exp_grad_step(p, grad, lr, **kw)


CLOSE = dict(rtol=1e-5, atol=1e-8)  # float32 params: kernel and reference agree to a few ulps


def test_is_torch_optimizer_and_defaults(device):
    p = torch.nn.Parameter(simplex((3, 4), device=device))
    opt = ExponentiatedGradient([p])
    assert isinstance(opt, torch.optim.Optimizer)
    group = opt.param_groups[0]
    assert group["lr"] == 0.1
    assert group["min_value"] == 1e-5
    assert group["entropic_reg"] == 0.0
    assert group["order"] == "clamp_then_normalize"
    assert group["adaptive"] is False


@pytest.mark.parametrize("order", ["clamp_then_normalize", "normalize_then_clamp"])
def test_step_equals_functional(device, order):
    alphas, _ = darts_params(device)
    opt = ExponentiatedGradient(alphas, lr=0.3, min_value=1e-4, entropic_reg=0.01, order=order)
    for _ in range(3):
        set_grads(alphas)
        want = [eg(p.detach(), p.grad, 0.3, min_value=1e-4, entropic_reg=0.01, order=order) for p in alphas]
        opt.step()
        for p, w in zip(alphas, want):
            torch.testing.assert_close(p.detach(), w, **CLOSE)


def test_step_actually_changes_params(device):
    alphas, _ = darts_params(device)
    before = clones(alphas)
    set_grads(alphas)
    ExponentiatedGradient(alphas, lr=0.5).step()
    assert all(not torch.equal(p.detach(), b) for p, b in zip(alphas, before))


def test_param_groups_with_own_segments(device):
    alphas, betas = darts_params(device)
    opt = ExponentiatedGradient(
        [{"params": alphas}, {"params": betas, "segments": SEG, "min_value": 0.0, "lr": 0.2}],
        lr=0.1,
    )
    set_grads(alphas + betas)
    wa = [eg(p.detach(), p.grad, 0.1) for p in alphas]
    wb = [eg(p.detach(), p.grad, 0.2, segments=SEG, min_value=0.0) for p in betas]
    opt.step()
    for p, w in zip(alphas + betas, wa + wb):
        torch.testing.assert_close(p.detach(), w, **CLOSE)
    for b in betas:
        sums = torch.stack([s.double().sum() for s in b.detach().split(SEG)])
        torch.testing.assert_close(sums.cpu(), torch.ones(4, dtype=torch.float64), rtol=0, atol=1e-6)


def test_adaptive(device):
    alphas, _ = darts_params(device)
    set_grads(alphas, scale=20.0)
    want = [eg(p.detach(), p.grad, 0.1 / p.grad.abs().max().item()) for p in alphas]  # per tensor: lr / max|grad|
    ExponentiatedGradient(alphas, lr=0.1, adaptive=True).step()
    for p, w in zip(alphas, want):
        torch.testing.assert_close(p.detach(), w, **CLOSE)


def test_grad_none_is_skipped(device):
    alphas, betas = darts_params(device)
    params = alphas + betas
    set_grads(params[:2])
    before = clones(params)
    ExponentiatedGradient([{"params": alphas}, {"params": betas, "segments": SEG}], lr=0.5).step()
    assert not torch.equal(params[0].detach(), before[0])
    for p, b in zip(params[2:], before[2:]):
        assert torch.equal(p.detach(), b)


def test_all_grads_none_is_a_no_op(device):
    alphas, _ = darts_params(device)
    before = clones(alphas)
    ExponentiatedGradient(alphas).step()
    assert all(torch.equal(p.detach(), b) for p, b in zip(alphas, before))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nonfinite_grad_raises_without_modifying(device, bad):
    alphas, betas = darts_params(device)
    opt = ExponentiatedGradient([{"params": alphas}, {"params": betas, "segments": SEG}],
                                check_finite=True)
    set_grads(alphas + betas)
    betas[1].grad[3] = bad  # in the last group: the first group must not have been stepped either
    before = clones(alphas + betas)
    with pytest.raises(ValueError, match="'grad' holds NaN or Inf; no parameter was changed"):
        opt.step()
    for p, b in zip(alphas + betas, before):
        assert torch.equal(p.detach(), b)


def test_nonfinite_grad_unchecked_leaves_that_param(device):
    """check_finite=False: no exception; the param with the bad grad stays untouched, all stay finite."""
    alphas, _ = darts_params(device)
    opt = ExponentiatedGradient(alphas, check_finite=False)
    set_grads(alphas)
    alphas[0].grad[0, 0] = float("nan")
    before = clones(alphas)
    opt.step()
    assert torch.equal(alphas[0].detach(), before[0])
    assert torch.isfinite(alphas[1]).all()
    alphas[0].grad[0, 0] = 0.0  # the next clean step goes through
    opt.step()
    assert not torch.equal(alphas[0].detach(), before[0])


def test_lr_scheduler_changes_lr_used(device):
    alphas, _ = darts_params(device)
    lr0, T = 0.4, 4
    opt = ExponentiatedGradient(alphas, lr=lr0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=T, eta_min=0.01)
    for t in range(T + 1):
        lr_t = 0.01 + (lr0 - 0.01) * (1 + math.cos(math.pi * t / T)) / 2
        assert opt.param_groups[0]["lr"] == pytest.approx(lr_t)
        set_grads(alphas)
        want = [eg(p.detach(), p.grad, lr_t) for p in alphas]
        opt.step()
        sched.step()
        for p, w in zip(alphas, want):
            torch.testing.assert_close(p.detach(), w, **CLOSE)


def test_state_dict_round_trip(device):
    alphas, betas = darts_params(device)

    def make(a, b, lr):
        opt = ExponentiatedGradient([{"params": a}, {"params": b, "segments": SEG, "min_value": 0.0}],
                                    lr=lr, entropic_reg=0.02)
        return opt, torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)

    opt, sched = make(alphas, betas, 0.3)
    for _ in range(3):
        set_grads(alphas + betas)
        opt.step()
        sched.step()
    buf = io.BytesIO()
    torch.save({"opt": opt.state_dict(), "sched": sched.state_dict()}, buf)

    # fresh optimizer with different hyper-parameters, on copies of the params
    a2 = [torch.nn.Parameter(p.detach().clone()) for p in alphas]
    b2 = [torch.nn.Parameter(p.detach().clone()) for p in betas]
    opt2, sched2 = make(a2, b2, 0.9)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    opt2.load_state_dict(state["opt"])
    sched2.load_state_dict(state["sched"])
    for g1, g2 in zip(opt.param_groups, opt2.param_groups):
        assert {k: v for k, v in g1.items() if k != "params"} == {k: v for k, v in g2.items() if k != "params"}

    for _ in range(3):
        set_grads(alphas + betas)
        for p, q in zip(alphas + betas, a2 + b2):
            q.grad = p.grad.clone()
        opt.step()
        sched.step()
        opt2.step()
        sched2.step()
    for p, q in zip(alphas + betas, a2 + b2):
        assert torch.equal(p.detach(), q.detach())


def test_closure(device):
    alphas, _ = darts_params(device)
    opt = ExponentiatedGradient(alphas)

    def closure():
        opt.zero_grad()
        loss = sum((a * torch.arange(8.0, device=device)).sum() for a in alphas)
        loss.backward()
        return loss

    before = clones(alphas)
    loss = opt.step(closure)
    assert torch.is_tensor(loss)
    # the gradient grows with the op index, so p0/p7 grows by exp(0.1 * 7)
    ratio = (alphas[0][:, 0] / alphas[0][:, -1]) / (before[0][:, 0] / before[0][:, -1])
    torch.testing.assert_close(ratio.detach(), torch.full_like(ratio, math.exp(0.7)), rtol=1e-4, atol=0)


@pytest.mark.parametrize("kwargs,error,name", [
    ({"lr": -0.1}, ValueError, "lr"),
    ({"lr": "0.1"}, TypeError, "lr"),
    ({"segments": [3, 3]}, ValueError, "segments"),
    ({"segments": [7.0, 7.0]}, TypeError, "segments"),
    ({"order": "sideways"}, ValueError, "order"),
    ({"min_value": 1.5}, ValueError, "min_value"),
    ({"min_value": None}, TypeError, "min_value"),
    ({"entropic_reg": -1.0}, ValueError, "entropic_reg"),
])
def test_bad_hyperparameters(device, kwargs, error, name):
    p = torch.nn.Parameter(simplex((2, 14), device=device))
    before = p.detach().clone()
    with pytest.raises(error, match=f"'{name}'"):
        opt = ExponentiatedGradient([p], **kwargs)
        p.grad = torch.randn_like(p)
        opt.step()
    assert torch.equal(p.detach(), before)


# ---- the status flags: bit sets, combined with OR -------------------------------------


def _nan_grad_and_invalid_param(device):
    """Two groups stepped by two fused calls (their orders differ): a NaN grad in the first,
    a negative entry in a param of the second."""
    a, b = torch.nn.Parameter(simplex((3, 4), device=device)), torch.nn.Parameter(simplex((3, 4), device=device))
    set_grads([a, b])
    a.grad[0, 1] = float("nan")
    with torch.no_grad():
        b[2] = torch.tensor([0.5, 0.7, -0.2, 0.0], device=device)
    groups = [{"params": [a]}, {"params": [b], "order": "normalize_then_clamp"}]
    return [a, b], groups


def test_unchecked_step_reports_both_flags_of_two_calls(device):
    params, groups = _nan_grad_and_invalid_param(device)
    opt = ExponentiatedGradient(groups, check_finite=False)
    before = clones(params)
    opt.step()
    assert opt.found_nonfinite.dtype == torch.int32
    assert opt.found_nonfinite.item() == NONFINITE_GRAD | INVALID_PARAM == 3
    for p, b in zip(params, before):
        assert torch.equal(p.detach(), b)


def test_unchecked_flags_accumulate_over_steps(device):
    """Step 1 meets only an invalid param (2), step 2 only a NaN grad (1): both stay reported."""
    a = torch.nn.Parameter(simplex((3, 4), device=device))
    opt = ExponentiatedGradient([a], check_finite=False)
    with torch.no_grad():
        a[1] = torch.tensor([0.5, 0.7, -0.2, 0.0], device=device)
    set_grads([a])
    opt.step()
    assert opt.found_nonfinite.item() == INVALID_PARAM
    with torch.no_grad():
        a.copy_(simplex((3, 4), device=device))
    set_grads([a])
    a.grad[0, 0] = float("inf")
    opt.step()
    assert opt.found_nonfinite.item() == NONFINITE_GRAD | INVALID_PARAM


def test_checked_step_names_both_conditions_and_changes_nothing(device):
    params, groups = _nan_grad_and_invalid_param(device)
    opt = ExponentiatedGradient(groups, check_finite=True)
    before = clones(params)
    with pytest.raises(ValueError, match="'grad' holds NaN or Inf; 'param' must hold finite, non-negative"):
        opt.step()
    for p, b in zip(params, before):
        assert torch.equal(p.detach(), b)


def test_step_bumps_versions_and_stale_backward_raises(device):
    """A forward with the alphas, an optimizer step, then the backward of that forward: autograd
    raises its "modified by an inplace operation" error, as after torch.optim.SGD's step,
    instead of silently using the stepped alphas."""
    def run(make_optimizer):
        x = torch.ones(3, device=device, requires_grad=True)
        alpha = torch.nn.Parameter(torch.full((3,), 1.0 / 3.0, device=device))
        out = (x * alpha).sum()
        alpha.grad = torch.tensor([3.0, 0.0, -3.0], device=device)
        before = alpha._version
        make_optimizer([alpha]).step()
        assert alpha._version > before
        with pytest.raises(RuntimeError, match="modified by an inplace operation") as error:
            out.backward()
        return error.type

    assert run(ExponentiatedGradient) is run(lambda ps: torch.optim.SGD(ps, lr=1.0))


# ---- the first step warns when a param is not made of simplices -----------------------------


def _no_warning(opt):
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.step()


def test_warns_once_for_rows_that_are_not_simplices(device):
    """Positive but unnormalised rows (e.g. exp(logits)): one UserWarning at the first step."""
    a = torch.nn.Parameter(torch.rand(14, 8, device=device) + 0.5)
    opt = ExponentiatedGradient([a])
    set_grads([a])
    with pytest.warns(UserWarning, match="param_groups\\[0\\]\\['params'\\]\\[0\\].*not 1.*not logits") as record:
        opt.step()
    assert len([r for r in record if "ExponentiatedGradient" in str(r.message)]) == 1
    set_grads([a])
    _no_warning(opt)  # once per optimizer (and the rows are simplices by now)


def test_warns_for_logits_before_the_step_refuses_them(device):
    a = torch.nn.Parameter(torch.randn(14, 8, device=device))
    opt = ExponentiatedGradient([a])
    set_grads([a])
    with pytest.warns(UserWarning, match="not logits"), pytest.raises(ValueError, match="'param'"):
        opt.step()


def test_warns_for_edge_weights_without_segments(device):
    """PC-DARTS edge weights (each node's edges a simplex, 4 nodes in a row of 14) given
    without segments are one simplex of 14 to the step: the warning says to pass segments."""
    beta = torch.nn.Parameter(simplex((14,), SEG, device=device))
    opt = ExponentiatedGradient([beta])
    set_grads([beta])
    with pytest.warns(UserWarning, match="sums to 4, not 1.*segments=\\[2, 3, 4, 5\\]"):
        opt.step()
    beta = torch.nn.Parameter(simplex((14,), SEG, device=device))
    opt = ExponentiatedGradient([beta], segments=SEG)
    set_grads([beta])
    _no_warning(opt)


def test_warns_per_segment(device):
    beta = torch.nn.Parameter(simplex((2, 14), SEG, device=device))
    with torch.no_grad():
        beta[1, 2:5] *= 2.0  # the second segment of row 1 sums to 2
    opt = ExponentiatedGradient([beta], segments=SEG)
    set_grads([beta])
    with pytest.warns(UserWarning, match="a segment of a row of .*sums to 2"):
        opt.step()


def test_simplex_params_do_not_warn(device):
    alphas, betas = darts_params(device)
    opt = ExponentiatedGradient([{"params": alphas}, {"params": betas, "segments": SEG, "min_value": 0.0}])
    set_grads(alphas + betas)
    _no_warning(opt)
    unchecked = ExponentiatedGradient([torch.nn.Parameter(simplex((3, 5), device=device))], check_finite=False)
    set_grads(unchecked.param_groups[0]["params"])
    _no_warning(unchecked)
