"""Bad input: one documented exception type per case, naming the argument, the same on every
backend (TypeError for a wrong type or dtype, ValueError for a wrong shape, length, value or
device); no crash, no in-place change."""

import pytest
import torch

import gaea_ext

def xs(device, k=3, shape=(4, 5), dtype=torch.float32):
    return [torch.randn(shape, device=device, dtype=dtype) for _ in range(k)]


def w(device, k=3, dtype=torch.float32):
    return torch.rand(k, device=device, dtype=dtype)


# ---------------------------------------------------------------------------------------------
# weighted_sum


# name -> (exception, make (inputs, weights))
WS_CASES = {
    "empty inputs": (ValueError, lambda d: ([], w(d, 0))),
    "shape mismatch": (ValueError, lambda d: (xs(d, 2) + [torch.randn(4, 6, device=d)], w(d))),
    "shape mismatch (broadcastable)": (ValueError, lambda d: (xs(d, 2) + [torch.randn(1, 5, device=d)], w(d))),
    "dtype mismatch": (TypeError, lambda d: (xs(d, 2) + [torch.randn(4, 5, device=d, dtype=torch.float64)], w(d))),
    "integer inputs": (TypeError, lambda d: ([torch.ones(4, 5, device=d, dtype=torch.int32)] * 3, w(d))),
    "int64 inputs": (TypeError, lambda d: ([torch.ones(4, 5, device=d, dtype=torch.int64)] * 3, w(d))),
    "bool inputs": (TypeError, lambda d: ([torch.ones(4, 5, device=d, dtype=torch.bool)] * 3, w(d))),
    "complex inputs": (TypeError, lambda d: ([torch.ones(4, 5, device=d, dtype=torch.complex64)] * 3, w(d))),
    "inputs not tensors": (TypeError, lambda d: ([1.0, 2.0, 3.0], w(d))),
    "inputs a tensor": (TypeError, lambda d: (torch.randn(3, 4, 5, device=d), w(d))),
}
WS_WEIGHT_CASES = {
    "too few weights": (ValueError, lambda d: (xs(d), w(d, 2))),
    "too many weights": (ValueError, lambda d: (xs(d), w(d, 4))),
    "column weights": (ValueError, lambda d: (xs(d), w(d, 3).reshape(3, 1))),
    "3-D weights": (ValueError, lambda d: (xs(d), w(d, 3).reshape(1, 1, 3))),
    "two-row weights": (ValueError, lambda d: (xs(d, 2), w(d, 4).reshape(2, 2))),
    "row of the wrong length": (ValueError, lambda d: (xs(d), w(d, 4).reshape(1, 4))),
    "0-d weight": (ValueError, lambda d: (xs(d, 1), torch.tensor(0.5, device=d))),
    "integer weights": (TypeError, lambda d: (xs(d), torch.ones(3, device=d, dtype=torch.int64))),
    "bool weights": (TypeError, lambda d: (xs(d), torch.ones(3, device=d, dtype=torch.bool))),
    "weights not a tensor": (TypeError, lambda d: (xs(d), [0.2, 0.3, 0.5])),
}


@pytest.mark.parametrize("case", list(WS_CASES))
def test_weighted_sum_bad_inputs(device, case):
    error, make = WS_CASES[case]
    inputs, weights = make(device)
    with pytest.raises(error, match="'inputs"):
        gaea_ext.weighted_sum(inputs, weights)


@pytest.mark.parametrize("case", list(WS_WEIGHT_CASES))
def test_weighted_sum_bad_weights(device, case):
    error, make = WS_WEIGHT_CASES[case]
    inputs, weights = make(device)
    with pytest.raises(error, match="'weights'"):
        gaea_ext.weighted_sum(inputs, weights)


# name -> (exception, make (inputs, weights)) for weights given as a list of tensors
WS_WEIGHT_LIST_CASES = {
    "a float among 0-d tensors": (TypeError, lambda d: (xs(d), [torch.tensor(0.2, device=d)] * 2 + [0.6])),
    "integer 0-d tensors": (TypeError, lambda d: (xs(d), [torch.tensor(1, device=d)] * 3)),
    "tensors of two elements": (ValueError, lambda d: (xs(d), [w(d, 2)] * 3)),
    "too few tensors": (ValueError, lambda d: (xs(d), [torch.tensor(0.5, device=d)] * 2)),
    "empty list": (ValueError, lambda d: (xs(d), [])),
    "two dtypes": (TypeError, lambda d: (xs(d), [torch.tensor(0.5, device=d)] * 2
                                         + [torch.tensor(0.5, device=d, dtype=torch.float64)])),
}


@pytest.mark.parametrize("case", list(WS_WEIGHT_LIST_CASES))
def test_weighted_sum_bad_weight_list(device, case):
    error, make = WS_WEIGHT_LIST_CASES[case]
    inputs, weights = make(device)
    with pytest.raises(error, match="^weighted_sum: 'weights"):
        gaea_ext.weighted_sum(inputs, weights)


def test_weighted_sum_wrong_length_message_says_expected_and_got(device):
    with pytest.raises(ValueError, match="'weights' must have one element per input \\(5\\), got 7"):
        gaea_ext.weighted_sum(xs(device, 5), w(device, 7))


def test_weighted_sum_inputs_on_meta_device():
    """Inputs on two devices (meta stands in for a second device on a CPU-only machine)."""
    inputs = xs("cpu", 2) + [torch.empty(4, 5, device="meta")]
    with pytest.raises(ValueError, match="'inputs' must share one device"):
        gaea_ext.weighted_sum(inputs, w("cpu"))


def test_weighted_sum_weight_on_meta_device():
    """A listed weight on another device (meta stands in for one on a CPU-only machine)."""
    weights = [torch.tensor(0.5), torch.empty((), device="meta"), torch.tensor(0.5)]
    with pytest.raises(ValueError, match="'weights\\[1\\]' must be on the inputs' device cpu"):
        gaea_ext.weighted_sum(xs("cpu"), weights)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA tests need a GPU")
def test_weighted_sum_device_mismatch():
    with pytest.raises(ValueError, match="'inputs' must share one device"):
        gaea_ext.weighted_sum(xs("cpu", 2) + xs("cuda", 1), w("cpu"))
    with pytest.raises(ValueError, match="'weights' must be on the inputs' device"):
        gaea_ext.weighted_sum(xs("cuda"), w("cpu"))
    with pytest.raises(ValueError, match="'weights' must be on the inputs' device"):
        gaea_ext.weighted_sum(xs("cpu"), w("cuda"))
    with pytest.raises(ValueError, match="'weights\\[1\\]' must be on the inputs' device"):
        gaea_ext.weighted_sum(xs("cpu"), [torch.tensor(0.5), torch.tensor(0.5, device="cuda"), torch.tensor(0.5)])


# ---------------------------------------------------------------------------------------------
# exp_grad_step_


def simplex(shape, device):
    return torch.randn(shape, dtype=torch.float64).softmax(-1).float().to(device)


def _nan(g):
    g[1, 2] = float("nan")
    return g


def _inf(g):
    g[0, 0] = -float("inf")
    return g


def _neg_row(p):
    p[1] = torch.tensor([0.5, 0.7, -0.2] + [0.0] * (p.shape[1] - 3))
    return p


def _zero_row(p):
    p[2] = 0.0
    return p


# name -> (exception, argument named in the message, mutate param, mutate grad, keyword overrides)
EG_CASES = {
    "grad shape": (ValueError, "grad", None, lambda g: g[:, :-1], {}),
    "grad transposed shape": (ValueError, "grad", None, lambda g: torch.randn(14, 3, device=g.device), {}),
    "grad integer": (TypeError, "grad", None, lambda g: g.long(), {}),
    "grad not a tensor": (TypeError, "grad", None, lambda g: g.tolist(), {}),
    "param integer": (TypeError, "param", lambda p: p.long(), None, {}),
    "param not a tensor": (TypeError, "param", lambda p: p.tolist(), None, {}),
    "segments sum short": (ValueError, "segments", None, None, {"segments": [2, 3, 4]}),
    "segments sum long": (ValueError, "segments", None, None, {"segments": [2, 3, 4, 6]}),
    "segments with 0": (ValueError, "segments", None, None, {"segments": [2, 3, 0, 4, 5]}),
    "segments negative": (ValueError, "segments", None, None, {"segments": [-1, 3, 4, 8]}),
    "segments empty": (ValueError, "segments", None, None, {"segments": []}),
    "segments of floats": (TypeError, "segments", None, None, {"segments": [2.0, 3.0, 4.0, 5.0]}),
    "segments not a sequence": (TypeError, "segments", None, None, {"segments": 14}),
    "negative lr": (ValueError, "lr", None, None, {"lr": -0.1}),
    "nan lr": (ValueError, "lr", None, None, {"lr": float("nan")}),
    "inf lr": (ValueError, "lr", None, None, {"lr": float("inf")}),
    "lr a string": (TypeError, "lr", None, None, {"lr": "0.1"}),
    "lr a bool": (TypeError, "lr", None, None, {"lr": True}),
    "min_value 1": (ValueError, "min_value", None, None, {"min_value": 1.0}),
    "min_value a string": (TypeError, "min_value", None, None, {"min_value": "1e-5"}),
    "negative entropic_reg": (ValueError, "entropic_reg", None, None, {"entropic_reg": -0.1}),
    "entropic_reg None": (TypeError, "entropic_reg", None, None, {"entropic_reg": None}),
    "nan grad": (ValueError, "grad", None, _nan, {}),
    "inf grad": (ValueError, "grad", None, _inf, {}),
    "negative entry in param row": (ValueError, "param", _neg_row, None, {}),
    "zero param row": (ValueError, "param", _zero_row, None, {}),
    "bad order": (ValueError, "order", None, None, {"order": "clamp_only"}),
    "order not a string": (TypeError, "order", None, None, {"order": 1}),
}


@pytest.mark.parametrize("case", list(EG_CASES))
def test_exp_grad_bad_input_leaves_param_unchanged(device, case):
    error, name, fix_p, fix_g, kw = EG_CASES[case]
    p = simplex((3, 14), device)
    g = torch.randn(3, 14, device=device)
    if fix_p:
        p = fix_p(p)
    if fix_g:
        g = fix_g(g)
    kw = dict(kw)
    lr = kw.pop("lr", 0.1)
    before = p.clone() if isinstance(p, torch.Tensor) else list(p)
    with pytest.raises(error, match=f"'{name}"):
        gaea_ext.exp_grad_step_(p, g, lr, **kw)
    if isinstance(p, torch.Tensor):
        assert torch.equal(p, before), "param changed although the call raised"


def test_exp_grad_segments_message_says_expected_and_got(device):
    p = simplex((3, 14), device)
    with pytest.raises(ValueError, match="'segments' must sum to the last dimension of param \\(14\\), "
                                         "got \\[2, 3, 4\\] \\(sum 9\\)"):
        gaea_ext.exp_grad_step_(p, torch.randn_like(p), 0.1, segments=[2, 3, 4])


@pytest.mark.parametrize("case", ["negative lr in list", "lr list length", "grad shape", "nan grad"])
def test_exp_grad_multi_bad_input(device, case):
    ps = [simplex((3, 14), device) for _ in range(3)]
    gs = [torch.randn(3, 14, device=device) for _ in range(3)]
    lr = [0.1, 0.1, 0.1]
    name = "lr"
    if case == "negative lr in list":
        lr[2] = -0.5
    elif case == "lr list length":
        lr = [0.1, 0.1]
    elif case == "grad shape":
        gs[2] = gs[2][:2]
        name = "grad"
    else:
        gs[2][0, 0] = float("nan")
        name = "grad"
    before = [p.clone() for p in ps]
    with pytest.raises(ValueError, match=f"'{name}"):
        gaea_ext.exp_grad_step_multi_(ps, gs, lr)
    assert all(torch.equal(p, b) for p, b in zip(ps, before))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA tests need a GPU")
def test_exp_grad_device_mismatch():
    p = simplex((3, 14), "cuda")
    before = p.clone()
    with pytest.raises(ValueError, match="'grad' must be on the param's device"):
        gaea_ext.exp_grad_step_(p, torch.randn(3, 14), 0.1)
    assert torch.equal(p, before)
