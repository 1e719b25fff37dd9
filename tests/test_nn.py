"""gaea_ext.nn against the code it replaces: DARTS- and PC-DARTS-style search networks written
here in the style of the original repositories (op classes, ``OPS``, ``MixedOp``, ``Cell``, a
tiny ``Network``), each compared with its port in float64: forward, every gradient (network
weights, inputs, architecture parameters), BatchNorm buffers, train and eval mode, stride 1
and 2, every weight form. The kinds the kernel receives are recorded at the dispatcher."""
import collections
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import gaea_ext
from gaea_ext import reference

from conftest import ON_REFERENCES, requires_kernels

# ---------------------------------------------------------------------------------------------
# The peers' code: DARTS-style candidate ops and search network.

PRIMITIVES = ["none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5",
              "dil_conv_3x3", "dil_conv_5x5"]


class ReLUConvBN(nn.Module):
    def __init__(self, C_in, C_out, kernel_size, stride, padding, affine=True):
        super().__init__()
        self.op = nn.Sequential(nn.ReLU(inplace=False),
                                nn.Conv2d(C_in, C_out, kernel_size, stride=stride, padding=padding, bias=False),
                                nn.BatchNorm2d(C_out, affine=affine))

    def forward(self, x):
        return self.op(x)


class DilConv(nn.Module):
    def __init__(self, C_in, C_out, kernel_size, stride, padding, dilation, affine=True):
        super().__init__()
        self.op = nn.Sequential(nn.ReLU(inplace=False),
                                nn.Conv2d(C_in, C_in, kernel_size, stride, padding, dilation, groups=C_in, bias=False),
                                nn.Conv2d(C_in, C_out, 1, bias=False),
                                nn.BatchNorm2d(C_out, affine=affine))

    def forward(self, x):
        return self.op(x)


class SepConv(nn.Module):
    def __init__(self, C_in, C_out, kernel_size, stride, padding, affine=True):
        super().__init__()
        self.op = nn.Sequential(nn.ReLU(inplace=False),
                                nn.Conv2d(C_in, C_in, kernel_size, stride, padding, groups=C_in, bias=False),
                                nn.Conv2d(C_in, C_in, 1, bias=False),
                                nn.BatchNorm2d(C_in, affine=affine),
                                nn.ReLU(inplace=False),
                                nn.Conv2d(C_in, C_in, kernel_size, 1, padding, groups=C_in, bias=False),
                                nn.Conv2d(C_in, C_out, 1, bias=False),
                                nn.BatchNorm2d(C_out, affine=affine))

    def forward(self, x):
        return self.op(x)


class Identity(nn.Module):
    def forward(self, x):
        return x


class Zero(nn.Module):
    def __init__(self, stride):
        super().__init__()
        self.stride = stride

    def forward(self, x):
        if self.stride == 1:
            return x.mul(0.)
        return x[:, :, ::self.stride, ::self.stride].mul(0.)


class FactorizedReduce(nn.Module):
    def __init__(self, C_in, C_out, affine=True):
        super().__init__()
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, bias=False)
        self.conv_2 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(C_out, affine=affine)

    def forward(self, x):
        x = self.relu(x)
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(x[:, :, 1:, 1:])], dim=1))


OPS = {
    "none": lambda C, stride, affine: Zero(stride),
    "avg_pool_3x3": lambda C, stride, affine: nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False),
    "max_pool_3x3": lambda C, stride, affine: nn.MaxPool2d(3, stride=stride, padding=1),
    "skip_connect": lambda C, stride, affine: Identity() if stride == 1 else FactorizedReduce(C, C, affine=affine),
    "sep_conv_3x3": lambda C, stride, affine: SepConv(C, C, 3, stride, 1, affine=affine),
    "sep_conv_5x5": lambda C, stride, affine: SepConv(C, C, 5, stride, 2, affine=affine),
    "dil_conv_3x3": lambda C, stride, affine: DilConv(C, C, 3, stride, 2, 2, affine=affine),
    "dil_conv_5x5": lambda C, stride, affine: DilConv(C, C, 5, stride, 4, 2, affine=affine),
}


class MixedOp(nn.Module):
    def __init__(self, C, stride):
        super().__init__()
        self._ops = nn.ModuleList()
        for primitive in PRIMITIVES:
            op = OPS[primitive](C, stride, False)
            if "pool" in primitive:
                op = nn.Sequential(op, nn.BatchNorm2d(C, affine=False))
            self._ops.append(op)

    def forward(self, x, weights):
        return sum(w * op(x) for w, op in zip(weights, self._ops))


class Cell(nn.Module):
    def __init__(self, steps, multiplier, C_prev_prev, C_prev, C, reduction, reduction_prev, mixed_op=MixedOp):
        super().__init__()
        self.reduction = reduction
        if reduction_prev:
            self.preprocess0 = FactorizedReduce(C_prev_prev, C, affine=False)
        else:
            self.preprocess0 = ReLUConvBN(C_prev_prev, C, 1, 1, 0, affine=False)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0, affine=False)
        self._steps = steps
        self._multiplier = multiplier
        self._ops = nn.ModuleList()
        for i in range(self._steps):
            for j in range(2 + i):
                stride = 2 if reduction and j < 2 else 1
                self._ops.append(mixed_op(C, stride))

    def forward(self, s0, s1, weights):
        s0 = self.preprocess0(s0)
        s1 = self.preprocess1(s1)
        states = [s0, s1]
        offset = 0
        for i in range(self._steps):
            s = sum(self._ops[offset + j](h, weights[offset + j]) for j, h in enumerate(states))
            offset += len(states)
            states.append(s)
        return torch.cat(states[-self._multiplier:], dim=1)


class Network(nn.Module):
    def __init__(self, C, num_classes, layers, steps=4, multiplier=4, stem_multiplier=3, cell=Cell, mixed_op=MixedOp):
        super().__init__()
        self._steps = steps
        C_curr = stem_multiplier * C
        self.stem = nn.Sequential(nn.Conv2d(3, C_curr, 3, padding=1, bias=False), nn.BatchNorm2d(C_curr))
        C_prev_prev, C_prev, C_curr = C_curr, C_curr, C
        self.cells = nn.ModuleList()
        reduction_prev = False
        for i in range(layers):
            if i in [layers // 3, 2 * layers // 3]:
                C_curr *= 2
                reduction = True
            else:
                reduction = False
            c = cell(steps, multiplier, C_prev_prev, C_prev, C_curr, reduction, reduction_prev, mixed_op=mixed_op)
            reduction_prev = reduction
            self.cells.append(c)
            C_prev_prev, C_prev = C_prev, multiplier * C_curr
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)
        k = sum(1 for i in range(steps) for n in range(2 + i))
        self.alphas_normal = nn.Parameter(1e-3 * torch.randn(k, len(PRIMITIVES)))
        self.alphas_reduce = nn.Parameter(1e-3 * torch.randn(k, len(PRIMITIVES)))

    def forward(self, input):
        s0 = s1 = self.stem(input)
        for cell in self.cells:
            weights = F.softmax(self.alphas_reduce if cell.reduction else self.alphas_normal, dim=-1)
            s0, s1 = s1, cell(s0, s1, weights)
        out = self.global_pooling(s1)
        return self.classifier(out.view(out.size(0), -1))


# The PC-DARTS-style edge and cell (partial channels K = 4, bypass, channel shuffle, edge weights).

def channel_shuffle(x, groups):
    batchsize, num_channels, height, width = x.data.size()
    channels_per_group = num_channels // groups
    x = x.view(batchsize, groups, channels_per_group, height, width)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(batchsize, -1, height, width)


class PCMixedOp(nn.Module):
    def __init__(self, C, stride):
        super().__init__()
        self._ops = nn.ModuleList()
        self.mp = nn.MaxPool2d(2, 2)
        self.k = 4
        for primitive in PRIMITIVES:
            op = OPS[primitive](C // self.k, stride, False)
            if "pool" in primitive:
                op = nn.Sequential(op, nn.BatchNorm2d(C // self.k, affine=False))
            self._ops.append(op)

    def forward(self, x, weights):
        dim_2 = x.shape[1]
        xtemp = x[:, :dim_2 // self.k, :, :]
        xtemp2 = x[:, dim_2 // self.k:, :, :]
        temp1 = sum(w * op(xtemp) for w, op in zip(weights, self._ops))
        if temp1.shape[2] == x.shape[2]:
            ans = torch.cat([temp1, xtemp2], dim=1)
        else:
            ans = torch.cat([temp1, self.mp(xtemp2)], dim=1)
        return channel_shuffle(ans, self.k)


class PCCell(Cell):
    def forward(self, s0, s1, weights, weights2):
        s0 = self.preprocess0(s0)
        s1 = self.preprocess1(s1)
        states = [s0, s1]
        offset = 0
        for i in range(self._steps):
            s = sum(weights2[offset + j] * self._ops[offset + j](h, weights[offset + j]) for j, h in enumerate(states))
            offset += len(states)
            states.append(s)
        return torch.cat(states[-self._multiplier:], dim=1)


class PCNetwork(Network):
    def __init__(self, C, num_classes, layers, cell=PCCell, mixed_op=PCMixedOp, **kwargs):
        super().__init__(C, num_classes, layers, cell=cell, mixed_op=mixed_op, **kwargs)
        k = self.alphas_normal.shape[0]
        self.betas_normal = nn.Parameter(1e-3 * torch.randn(k))
        self.betas_reduce = nn.Parameter(1e-3 * torch.randn(k))

    def _edge_weights(self, betas):
        start, n = 0, 2
        pieces = []
        for _ in range(self._steps):
            pieces.append(F.softmax(betas[start:start + n], dim=-1))
            start, n = start + n, n + 1
        return torch.cat(pieces)

    def forward(self, input):
        s0 = s1 = self.stem(input)
        for cell in self.cells:
            if cell.reduction:
                weights, weights2 = F.softmax(self.alphas_reduce, dim=-1), self._edge_weights(self.betas_reduce)
            else:
                weights, weights2 = F.softmax(self.alphas_normal, dim=-1), self._edge_weights(self.betas_normal)
            s0, s1 = s1, cell(s0, s1, weights, weights2)
        out = self.global_pooling(s1)
        return self.classifier(out.view(out.size(0), -1))


# ---------------------------------------------------------------------------------------------
# The ports (docs/porting.md): the MixedOp class on gaea_ext.nn.MixedOp, or one MixedNode per node.

class PortedMixedOp(gaea_ext.nn.MixedOp):  # the peer's MixedOp with its base swapped and no forward
    def __init__(self, C, stride):
        super().__init__()
        self._ops = nn.ModuleList()
        for primitive in PRIMITIVES:
            op = OPS[primitive](C, stride, False)
            if "pool" in primitive:
                op = nn.Sequential(op, nn.BatchNorm2d(C, affine=False))
            self._ops.append(op)


class WeightedSumMixedOp(MixedOp):  # the flat op: every op runs as a module, one fused sum
    def forward(self, x, weights):
        return gaea_ext.weighted_sum([op(x) for op in self._ops], weights)


class NodeCell(Cell):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._nodes = gaea_ext.nn.MixedNode.of_cell(self._ops, self._steps)

    def forward(self, s0, s1, weights):
        s0 = self.preprocess0(s0)
        s1 = self.preprocess1(s1)
        states = [s0, s1]
        offset = 0
        for i in range(self._steps):
            s = self._nodes[i](states, weights[offset:offset + len(states)])
            offset += len(states)
            states.append(s)
        return torch.cat(states[-self._multiplier:], dim=1)


class PCNodeCell(PCCell):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._nodes = gaea_ext.nn.PartialChannelNode.of_cell(self._ops, self._steps, groups=4)

    def forward(self, s0, s1, weights, weights2):
        s0 = self.preprocess0(s0)
        s1 = self.preprocess1(s1)
        states = [s0, s1]
        offset = 0
        for i in range(self._steps):
            s = self._nodes[i](states, weights[offset:offset + len(states)], weights2[offset:offset + len(states)])
            offset += len(states)
            states.append(s)
        return torch.cat(states[-self._multiplier:], dim=1)


def darts_network(level: str, C: int = 4, layers: int = 3, seed: int = 0) -> nn.Module:
    """The DARTS-style network at a porting level: original, weighted_sum, MixedOp, MixedNode."""
    kw = {"original": {}, "weighted_sum": {"mixed_op": WeightedSumMixedOp}, "MixedOp": {"mixed_op": PortedMixedOp},
          "MixedNode": {"cell": NodeCell}}[level]
    torch.manual_seed(seed)
    return Network(C, 10, layers, **kw)


def pc_darts_network(level: str, C: int = 8, layers: int = 3, seed: int = 0) -> nn.Module:
    """The PC-DARTS-style network: original or PartialChannelNode."""
    kw = {"original": {}, "PartialChannelNode": {"cell": PCNodeCell}}[level]
    torch.manual_seed(seed)
    return PCNetwork(C, 10, layers, **kw)


# ---------------------------------------------------------------------------------------------
# Helpers.

TOL = dict(rtol=1e-9, atol=1e-10)  # float64; only the summation order differs

class RecordKinds(TorchDispatchMode):
    """Counts the term kinds of every ``gaea_ext::mixed_node`` call, the calls, and the
    ``weighted_sum`` / ``partial_channel_node`` calls."""

    def __init__(self):
        super().__init__()
        self.kinds = collections.Counter()
        self.calls = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.gaea_ext.mixed_node.default:
            self.calls["mixed_node"] += 1
            for code in args[3]:
                self.kinds[reference.MIXED_KINDS[code]] += 1
        elif func is torch.ops.gaea_ext.weighted_sum.default:
            self.calls["weighted_sum"] += 1
        elif func is torch.ops.gaea_ext.partial_channel_node.default:
            self.calls["partial_channel_node"] += 1
        return func(*args, **(kwargs or {}))


def _assert_same_state(a: nn.Module, b: nn.Module, grads: bool = True):
    """Same parameters, buffers and (with `grads`) gradients, key by key."""
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        torch.testing.assert_close(sb[k], sa[k], **TOL, msg=lambda m: f"{k}: {m}")
    if grads:
        for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
            assert (pa.grad is None) == (pb.grad is None), name
            if pa.grad is not None:
                torch.testing.assert_close(pb.grad, pa.grad, **TOL, msg=lambda m: f"{name}.grad: {m}")


def _run(net: nn.Module, x: torch.Tensor, target: torch.Tensor):
    x = x.clone().requires_grad_(True)
    out = net(x)
    F.cross_entropy(out, target).backward()
    return out, x.grad


def _compare_networks(original: nn.Module, ported: nn.Module, size: int = 8, steps: int = 2):
    original.double()
    ported.double()
    _assert_same_state(original, ported, grads=False)  # same construction, same state_dict keys
    torch.manual_seed(1)
    for _ in range(steps):  # two training steps: running statistics and num_batches_tracked move
        x = torch.randn(2, 3, size, size, dtype=torch.float64)
        target = torch.randint(0, 10, (2,))
        original.zero_grad(set_to_none=True)
        ported.zero_grad(set_to_none=True)
        out_a, gx_a = _run(original, x, target)
        out_b, gx_b = _run(ported, x, target)
        torch.testing.assert_close(out_b, out_a, **TOL)
        torch.testing.assert_close(gx_b, gx_a, **TOL)
        _assert_same_state(original, ported)
    original.eval()
    ported.eval()
    with torch.no_grad():
        torch.testing.assert_close(ported(x), original(x), **TOL)


# ---------------------------------------------------------------------------------------------
# Whole networks.

@pytest.mark.parametrize("level", ["weighted_sum", "MixedOp", "MixedNode"])
def test_darts_network_port_matches_original(level):
    _compare_networks(darts_network("original"), darts_network(level))


def test_pc_darts_network_port_matches_original():
    _compare_networks(pc_darts_network("original"), pc_darts_network("PartialChannelNode"))


# Kinds per cell of the 3-layer networks (cell 0 normal, cells 1 and 2 reductions): a normal cell
# has 14 stride-1 edges (none, max+BN, avg+BN and skip in the kernel, 4 convs as modules); a
# reduction cell 8 stride-2 edges (none in the kernel, 7 ops as modules) and 6 stride-1 edges.
NORMAL = {"none": 14, "max_pool_3x3_bn": 14, "avg_pool_3x3_bn": 14, "skip": 14, "tensor": 56}
REDUCE = {"none": 8 + 6, "max_pool_3x3_bn": 6, "avg_pool_3x3_bn": 6, "skip": 6, "tensor": 8 * 7 + 6 * 4}
NETWORK_KINDS = {k: NORMAL[k] + 2 * REDUCE[k] for k in NORMAL}


@requires_kernels
def test_network_kinds_reach_the_kernel():
    assert NETWORK_KINDS == {"none": 42, "max_pool_3x3_bn": 26, "avg_pool_3x3_bn": 26, "skip": 26, "tensor": 216}
    x = torch.randn(2, 3, 8, 8)
    for level, calls in (("MixedOp", {"mixed_node": 3 * 14}), ("MixedNode", {"mixed_node": 3 * 4}),
                         ("weighted_sum", {"weighted_sum": 3 * 14})):
        net = darts_network(level)
        with RecordKinds() as rec:
            net(x)
        assert dict(rec.calls) == calls, level
        assert dict(rec.kinds) == ({} if level == "weighted_sum" else NETWORK_KINDS), level
    net = pc_darts_network("PartialChannelNode")
    with RecordKinds() as rec:
        net(torch.randn(2, 3, 8, 8))
    assert dict(rec.calls) == {"mixed_node": 12, "partial_channel_node": 12}
    assert dict(rec.kinds) == NETWORK_KINDS


def test_ported_mixed_op_kinds_and_state_dict():
    m = PortedMixedOp(4, 1)
    assert m.kinds is None  # Identity and Zero are probed at the first forward
    m(torch.randn(2, 4, 5, 5), torch.full((8,), 1 / 8))
    assert m.kinds == ["none", "max_pool_3x3_bn", "avg_pool_3x3_bn", "skip"] + ["tensor"] * 4
    m2 = PortedMixedOp(4, 2)
    m2(torch.randn(2, 4, 6, 6), torch.full((8,), 1 / 8))
    assert m2.kinds == ["none"] + ["tensor"] * 7
    assert list(m.state_dict()) == list(MixedOp(4, 1).state_dict())
    assert m.kinds == gaea_ext.nn.darts_kinds(PRIMITIVES, 1) and m2.kinds == gaea_ext.nn.darts_kinds(PRIMITIVES, 2)


# ---------------------------------------------------------------------------------------------
# One mixed op / one node, every weight form, stride 1 and 2.

def _weight_form(w: torch.Tensor, form: str):
    return {"1d": w, "row": w.reshape(1, -1), "list": list(w.unbind(0))}[form]


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("form", ["1d", "row", "list"])
def test_mixed_op_matches_peer(stride, form):
    torch.manual_seed(0)
    peer = MixedOp(4, stride).double()
    for op in peer._ops:  # momentum None (cumulative averages) on the pools' BatchNorms
        if isinstance(op, nn.Sequential):
            op[1].momentum = None
    ported_peer = copy.deepcopy(peer)
    fused = gaea_ext.nn.MixedOp(ported_peer._ops)
    assert fused.ops is ported_peer._ops  # the same modules, registered
    assert [id(p) for p in fused.parameters()] == [id(p) for p in ported_peer.parameters()]
    alpha = torch.randn(8, dtype=torch.float64, requires_grad=True)
    alpha2 = alpha.detach().clone().requires_grad_(True)
    for _ in range(2):
        x = torch.randn(2, 4, 6, 6, dtype=torch.float64)
        xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        ya = peer(xa, F.softmax(alpha, -1))
        yb = fused(xb, _weight_form(F.softmax(alpha2, -1), form))
        torch.testing.assert_close(yb, ya, **TOL)
        g = torch.randn_like(ya)
        ya.backward(g)
        yb.backward(g)
        torch.testing.assert_close(xb.grad, xa.grad, **TOL)
    torch.testing.assert_close(alpha2.grad, alpha.grad, **TOL)
    _assert_same_state(peer, ported_peer)
    peer.eval()
    fused.eval()
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64)
    torch.testing.assert_close(fused(x, F.softmax(alpha, -1)), peer(x, F.softmax(alpha, -1)), **TOL)


@pytest.mark.parametrize("form", ["tensor", "rows"])
@pytest.mark.parametrize("edge_weights", [False, True])
def test_mixed_node_reduction_node_matches_peer(form, edge_weights):
    """A reduction cell's third node: two stride-2 edges and one stride-1 edge, one call."""
    torch.manual_seed(0)
    edges = [MixedOp(4, 2), MixedOp(4, 2), MixedOp(4, 1)]
    peer = nn.ModuleList(edges).double()
    ported = copy.deepcopy(peer)
    node = gaea_ext.nn.MixedNode(ported)
    xs = [torch.randn(2, 4, 8, 8, dtype=torch.float64), torch.randn(2, 4, 8, 8, dtype=torch.float64),
          torch.randn(2, 4, 4, 4, dtype=torch.float64)]
    xa = [x.clone().requires_grad_(True) for x in xs]
    xb = [x.clone().requires_grad_(True) for x in xs]
    alpha = torch.randn(3, 8, dtype=torch.float64, requires_grad=True)
    beta = torch.randn(3, dtype=torch.float64, requires_grad=True)
    w = F.softmax(alpha, -1)
    ew = F.softmax(beta, -1) if edge_weights else torch.ones(3, dtype=torch.float64)
    ya = sum(ew[j] * peer[j](xa[j], w[j]) for j in range(3))
    w = F.softmax(alpha, -1)  # a graph of its own for the port
    weights = w if form == "tensor" else [list(w[0].unbind(0)), w[1].reshape(1, -1), w[2]]
    with RecordKinds() as rec:
        yb = node(xb, weights, F.softmax(beta, -1) if edge_weights else None)
    if not ON_REFERENCES:  # the kernel's one call, with the fused kinds
        assert dict(rec.calls) == {"mixed_node": 1}
        assert dict(rec.kinds) == {"none": 3, "max_pool_3x3_bn": 1, "avg_pool_3x3_bn": 1, "skip": 1, "tensor": 18}
    torch.testing.assert_close(yb, ya, **TOL)
    g = torch.randn_like(ya)
    (ga_alpha, ga_beta, *ga_x) = torch.autograd.grad(ya, [alpha, beta] + xa, g, allow_unused=True)
    (gb_alpha, gb_beta, *gb_x) = torch.autograd.grad(yb, [alpha, beta] + xb, g, allow_unused=True)
    torch.testing.assert_close(gb_alpha, ga_alpha, **TOL)
    if edge_weights:
        torch.testing.assert_close(gb_beta, ga_beta, **TOL)
    for a, b in zip(ga_x, gb_x):
        torch.testing.assert_close(b, a, **TOL)
    _assert_same_state(peer, ported, grads=False)


@pytest.mark.parametrize("stride", [1, 2])
def test_partial_channel_edge_matches_peer(stride):
    """A one-edge PartialChannelNode is the PC-DARTS MixedOp."""
    torch.manual_seed(0)
    peer = PCMixedOp(8, stride).double()
    ported = copy.deepcopy(peer)
    edge = gaea_ext.nn.PartialChannelNode([ported], groups=ported.k)
    x = torch.randn(2, 8, 6, 6, dtype=torch.float64)
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    alpha = torch.randn(8, dtype=torch.float64, requires_grad=True)
    ya = peer(xa, F.softmax(alpha, -1))
    yb = edge([xb], F.softmax(alpha, -1).reshape(1, 8))
    torch.testing.assert_close(yb, ya, **TOL)
    g = torch.randn_like(ya)
    ga = torch.autograd.grad(ya, [alpha, xa], g)
    gb = torch.autograd.grad(yb, [alpha, xb], g)
    for a, b in zip(ga, gb):
        torch.testing.assert_close(b, a, **TOL)
    _assert_same_state(peer, ported, grads=False)


def test_probe_leaves_rng_and_behaviour_decides():
    class Halve(nn.Module):  # parameter-free, neither identity nor zero
        def forward(self, x):
            return x * 0.5

    class Noise(nn.Module):  # random: never fused
        def forward(self, x):
            return x + torch.randn_like(x)

    hooked = nn.Identity()
    hooked.register_forward_hook(lambda m, i, o: o * 2)
    ops = [Identity(), Zero(1), Zero(2), Halve(), Noise(), nn.Dropout(0.0), hooked, nn.Sequential(),
           nn.AvgPool2d(3, 1, 1), nn.AvgPool2d(3, 1, 1, count_include_pad=False), nn.MaxPool2d(3, 1, 1),
           nn.Sequential(nn.MaxPool2d(3, 1, 1), nn.BatchNorm2d(4, affine=True))]
    m = gaea_ext.nn.MixedOp(ops)
    x = torch.zeros(2, 4, 6, 6)
    torch.manual_seed(5)
    expected_next = torch.rand(())
    torch.manual_seed(5)
    m.resolve_kinds(x)
    assert torch.rand(()) == expected_next  # the probe used its own generator
    assert m.kinds == ["skip", "none", "none", "tensor", "tensor", "tensor", "tensor", "skip", "tensor",
                       "avg_pool_3x3", "max_pool_3x3", "tensor"]


def test_all_none_mixed_op_keeps_the_output_shape():
    m = gaea_ext.nn.MixedOp([Zero(2), Zero(2)])
    y = m(torch.randn(2, 4, 6, 6), torch.tensor([0.5, 0.5]))
    assert y.shape == (2, 4, 3, 3) and not y.any()


# ---------------------------------------------------------------------------------------------
# Helpers for porters.

def test_darts_kinds_and_segments():
    assert gaea_ext.nn.darts_kinds(stride=1) == ["none", "max_pool_3x3_bn", "avg_pool_3x3_bn", "skip"] + ["tensor"] * 4
    assert gaea_ext.nn.darts_kinds(stride=1, search=False)[1:3] == ["max_pool_3x3", "avg_pool_3x3"]
    assert gaea_ext.nn.darts_kinds(stride=2) == ["none"] + ["tensor"] * 7
    assert gaea_ext.nn.node_segments(4) == [2, 3, 4, 5]
    assert gaea_ext.nn.node_segments(3, num_inputs=1) == [1, 2, 3]
    with pytest.raises(ValueError, match="unknown DARTS op 'conv_7x1'"):
        gaea_ext.nn.darts_kind("conv_7x1")


def test_simplex_parameters():
    alpha = gaea_ext.nn.simplex_parameter(14, 8)
    assert isinstance(alpha, nn.Parameter) and alpha.shape == (14, 8)
    torch.testing.assert_close(alpha.sum(-1), torch.ones(14))
    beta = gaea_ext.nn.simplex_parameter(14, segments=gaea_ext.nn.node_segments(4), dtype=torch.float64)
    expected = torch.tensor([1 / 2] * 2 + [1 / 3] * 3 + [1 / 4] * 4 + [1 / 5] * 5, dtype=torch.float64)
    torch.testing.assert_close(beta.detach(), expected)
    p = torch.zeros(2, 5, requires_grad=True)
    assert gaea_ext.nn.init_simplex_(p, [2, 3]) is p
    torch.testing.assert_close(p.detach()[0], torch.tensor([0.5, 0.5, 1 / 3, 1 / 3, 1 / 3]))
    with pytest.raises(ValueError, match="summing to the last dimension"):
        gaea_ext.nn.init_simplex_(torch.zeros(5), [2, 2])


def test_arch_grads_only():
    net = darts_network("MixedNode").double()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    target = torch.tensor([1, 2])
    arch = [net.alphas_normal, net.alphas_reduce]
    grads = gaea_ext.nn.arch_grads(F.cross_entropy(net(x), target), arch)
    assert all(p.grad is None for n, p in net.named_parameters() if "alphas" not in n)
    assert [g is p.grad for g, p in zip(grads, arch)] == [True, True]
    reference_net = darts_network("MixedNode").double()
    F.cross_entropy(reference_net(x), target).backward()
    torch.testing.assert_close(net.alphas_normal.grad, reference_net.alphas_normal.grad, **TOL)
    torch.testing.assert_close(net.alphas_reduce.grad, reference_net.alphas_reduce.grad, **TOL)
    unused = torch.zeros(3, requires_grad=True)
    loss = F.cross_entropy(net(x), target)
    gaea_ext.nn.arch_grads(loss, [net.alphas_normal, unused], accumulate=True)
    assert torch.equal(unused.grad, torch.zeros(3))
    torch.testing.assert_close(net.alphas_normal.grad, 2 * reference_net.alphas_normal.grad, **TOL)


# ---------------------------------------------------------------------------------------------
# Misuse: clear errors, raised before anything runs.

def test_misuse_raises_clear_errors():
    m = gaea_ext.nn.MixedOp(MixedOp(4, 1)._ops)
    x = torch.randn(2, 4, 5, 5)
    with pytest.raises(ValueError, match=r"one weight per op \(8\).*got shape \(7,\)"):
        m(x, torch.rand(7))
    with pytest.raises(ValueError, match=r"one weight per op \(8\).*got shape \(2, 8\)"):
        m(x, torch.rand(2, 8))
    with pytest.raises(ValueError, match=r"one weight per op \(8\), got a list of 3"):
        m(x, list(torch.rand(3)))
    with pytest.raises(TypeError, match="floating point"):
        m(x, torch.ones(8, dtype=torch.long))
    with pytest.raises(TypeError, match=r"'ops\[1\]' must be an nn.Module"):
        gaea_ext.nn.MixedOp([nn.Identity(), "conv"])
    with pytest.raises(TypeError, match="single Conv2d"):
        gaea_ext.nn.MixedOp(nn.Conv2d(4, 4, 3))
    with pytest.raises(ValueError, match="at least one op"):
        gaea_ext.nn.MixedOp([])
    with pytest.raises(ValueError, match="must share one shape"):
        gaea_ext.nn.MixedOp([nn.Identity(), nn.Conv2d(4, 4, 3)])(x, torch.rand(2))
    node = gaea_ext.nn.MixedNode([MixedOp(4, 1), MixedOp(4, 1)])
    with pytest.raises(ValueError, match=r"one input per edge \(2\), got 3"):
        node([x, x, x], torch.rand(2, 8))
    with pytest.raises(ValueError, match=r"must be \[2, 8\].*got shape \(3, 8\)"):
        node([x, x], torch.rand(3, 8))
    with pytest.raises(ValueError, match=r"one row per edge \(2\), got 1"):
        node([x, x], [torch.rand(8)])
    with pytest.raises(ValueError, match=r"one weight per edge \(2\)"):
        node([x, x], torch.rand(2, 8), torch.rand(3))
    with pytest.raises(TypeError, match="not a tensor"):
        node(x, torch.rand(2, 8))
    with pytest.raises(ValueError, match="at least one edge"):
        gaea_ext.nn.MixedNode([])
    with pytest.raises(ValueError, match="need 14 edges, got 13"):
        gaea_ext.nn.MixedNode.of_cell([MixedOp(4, 1)] * 13, 4)
    pc = gaea_ext.nn.PartialChannelNode([PCMixedOp(8, 1)], groups=4)
    with pytest.raises(ValueError, match="not divisible by groups=4"):
        pc([torch.randn(2, 6, 5, 5)], torch.rand(1, 8))
    with pytest.raises(ValueError, match="positive int"):
        gaea_ext.nn.PartialChannelNode([PCMixedOp(8, 1)], groups=0)


def test_porting_levels_benchmark_runs(tmp_path, monkeypatch):
    """benchmarks/porting_levels.py (docs/porting.md's table) at a tiny size."""
    import json
    import pathlib
    import runpy
    import sys

    script = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "porting_levels.py"
    out = tmp_path / "levels.json"
    monkeypatch.setattr(sys, "argv", [str(script), "--batch", "2", "--C", "8", "--size", "8", "--runs", "1",
                                      "--iters", "1", "--json", str(out)])
    threads = torch.get_num_threads()
    try:
        runpy.run_path(str(script), run_name="__main__")
    finally:
        torch.set_num_threads(threads)
    rows = {r["level"]: r for r in json.loads(out.read_text())["rows"]}
    assert list(rows) == ["original", "weighted_sum", "MixedOp", "MixedNode", "MixedNode, arch grads only",
                          "PC-DARTS original", "PC-DARTS PartialChannelNode"]
    if not ON_REFERENCES:  # the kernels keep no pool, skip, bypass or shuffle tensor
        assert rows["MixedNode"]["saved_mib"] < rows["original"]["saved_mib"]
        assert rows["PC-DARTS PartialChannelNode"]["saved_mib"] < rows["PC-DARTS original"]["saved_mib"]
    assert all(r["median"] > 0 for r in rows.values())
