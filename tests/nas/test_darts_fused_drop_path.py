"""DiscreteCell's fused drop path (gaea_ext.drop_path_sum) against the per-op drop_path: the same
network, masks and gradients in float64; the fused path runs no drop_path and no elementwise
mul/div/add on activations; model.drop_path_prob is the only switch a training loop needs."""
import copy

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import gaea_ext
import gaea_nas.spaces.darts.networks as networks
from gaea_nas.spaces.darts import NetworkCIFAR


class OpCounts(TorchDispatchMode):
    """Counts the aten / gaea_ext ops run, and the elementwise mul/div/add on tensors of 2+ dims."""

    ELEMENTWISE = {"aten::mul", "aten::mul_", "aten::div", "aten::div_", "aten::add", "aten::add_"}

    def __init__(self):
        super().__init__()
        self.ops, self.elementwise = {}, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name
        self.ops[name] = self.ops.get(name, 0) + 1
        if name in self.ELEMENTWISE and any(isinstance(a, torch.Tensor) and a.dim() >= 2 for a in args):
            self.elementwise += 1
        return func(*args, **(kwargs or {}))


def pair(drop_path_prob=0.3):
    """A small CIFAR network in float64, fused, and its copy with the per-op drop path."""
    torch.manual_seed(0)
    fused = NetworkCIFAR(C=8, num_classes=10, layers=5, auxiliary=True, genotype="DARTS_V2",
                         drop_path_prob=drop_path_prob).double()
    unfused = copy.deepcopy(fused)
    for cell in unfused.cells:
        cell.fused_drop_path = False
    return fused, unfused


def step(model, x, y, seed):
    """Forward (seeded: the masks), the DARTS loss with the auxiliary head at 0.4, backward."""
    torch.manual_seed(seed)
    logits, aux = model(x)
    loss = torch.nn.functional.cross_entropy(logits, y) + 0.4 * torch.nn.functional.cross_entropy(aux, y)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    return logits, aux, grads


def test_fused_cell_equals_unfused_in_float64():
    fused, unfused = pair()
    assert all(cell.fused_drop_path for cell in fused.cells)
    x = torch.randn(6, 3, 32, 32, dtype=torch.float64)
    y = torch.randint(0, 10, (6,))
    got, want = step(fused, x, y, seed=3), step(unfused, x, y, seed=3)
    for a, b in zip(got[:2], want[:2]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    for a, b in zip(got[2], want[2]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
    # the masks matter: another seed gives other logits
    other = step(fused, x, y, seed=4)
    assert not torch.allclose(other[0], got[0])


@pytest.mark.skipif(gaea_ext.backend("cpu") == "reference", reason="counts the kernels' calls")
def test_fused_path_runs_no_drop_path_nor_elementwise_ops(monkeypatch):
    """Per node one gaea_ext::sample_weighted_sum, no drop_path, no mul/div/add on activations
    (the per-op path runs them: the count can fail)."""
    fused, unfused = pair()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with OpCounts() as counts:
        unfused(x)
    assert counts.elementwise > 0 and "gaea_ext::sample_weighted_sum" not in counts.ops

    def refuse(*args):
        raise AssertionError("drop_path called on the fused path")

    monkeypatch.setattr(networks, "drop_path", refuse)
    with OpCounts() as counts:
        fused(x)
    nodes = sum(cell._steps for cell in fused.cells)
    assert counts.ops["gaea_ext::sample_weighted_sum"] == nodes
    assert counts.elementwise == 0, counts.ops


def test_drop_path_prob_is_the_switch():
    """model.drop_path_prob, set per epoch by a training loop, reaches every cell; at 0 and in
    eval mode the nodes are plain sums on both paths."""
    fused, unfused = pair(drop_path_prob=0.0)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    plain = fused(x)[0]
    torch.testing.assert_close(plain, unfused(x)[0], rtol=0, atol=0)
    fused.drop_path_prob = unfused.drop_path_prob = 0.5
    torch.manual_seed(1)
    a = fused(x)[0]
    torch.manual_seed(1)
    b = unfused(x)[0]
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert not torch.allclose(a, plain)
    with OpCounts() as counts:
        evaluated = fused.eval()(x)[0]
    assert "gaea_ext::sample_weighted_sum" not in counts.ops
    assert not any(name.startswith("aten::bernoulli") for name in counts.ops)
    torch.testing.assert_close(evaluated, unfused.eval()(x)[0], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("fused_drop_path", [True, False])
def test_constructor_flag(fused_drop_path):
    model = NetworkCIFAR(C=8, layers=3, auxiliary=False, fused_drop_path=fused_drop_path)
    assert all(cell.fused_drop_path is fused_drop_path for cell in model.cells)


@pytest.mark.parametrize("fused_drop_path", [True, False])
def test_tensor_drop_prob_equals_float_bitwise(fused_drop_path):
    """The networks pass drop_path_prob to the cells as a 0-d float64 tensor: in eager mode on
    the CPU the same masks (same draws from the generator) and bitwise the same outputs as the
    float, in float32."""
    torch.manual_seed(0)
    model = NetworkCIFAR(C=4, num_classes=3, layers=1, auxiliary=False, fused_drop_path=fused_drop_path)
    cell = model.cells[0]
    s = torch.randn(4, 12, 8, 8)
    torch.manual_seed(2)
    want, after_float = cell(s, s, 0.3), torch.rand(1)
    torch.manual_seed(2)
    got, after_tensor = cell(s, s, torch.tensor(0.3, dtype=torch.float64)), torch.rand(1)
    assert torch.equal(got, want) and torch.equal(after_float, after_tensor)
    model.drop_path_prob = 0.3
    assert model.drop_path_prob == 0.3 and model._drop_prob_for_cells().item() == 0.3
    model.half()  # the probability is not rounded with the weights
    assert model._drop_prob_for_cells().dtype == torch.float64 and model._drop_prob_for_cells().item() == 0.3
    assert "_drop_path_bits" not in model.state_dict()
    with pytest.raises(ValueError, match="drop_path_prob must be in"):
        model.drop_path_prob = 1.0


@pytest.mark.parametrize("fused_drop_path", [True, False])
def test_compiled_network_is_not_recompiled_when_drop_path_prob_changes(fused_drop_path):
    """A training loop sets model.drop_path_prob every epoch: the compiled network reads it as
    a tensor, so each new value reuses the graph (error_on_recompile) and gives the eager
    network's result for the same seed."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = NetworkCIFAR(C=4, num_classes=3, layers=1, auxiliary=False, drop_path_prob=0.1,
                         fused_drop_path=fused_drop_path)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    x = torch.randn(4, 3, 8, 8)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for p in (0.1, 0.25, 0.6):
            model.drop_path_prob = p
            torch.manual_seed(5)
            got = compiled(x)[0]
            torch.manual_seed(5)
            want = model(x)[0]
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
            got.sum().backward()
    torch._dynamo.reset()
