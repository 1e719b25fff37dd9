"""The discrete NAS-Bench-201 network of one cell (``TinyNetwork``) and the copy of a
supernet's weights into it (docs/method.md §4.3)."""
import torch
import torch.nn as nn

from .arch import NODE_SLICES, ArchLike, format_arch, parse_arch
from .ops import ResNetBasicblock, build_macro, build_nb201_op, check_macro_args
from .supernet import NB201SuperNet

__all__ = ["NB201InferCell", "NB201Network", "copy_supernet_weights"]


class NB201InferCell(nn.Module):
    """Discrete cell of one arch (TinyNetwork ``InferCell``): one op per edge, affine BNs;
    node i = sum over j of op(node j); ``none`` edges add zero."""

    def __init__(self, arch: ArchLike, C: int):
        super().__init__()
        self.arch_ops = tuple(parse_arch(arch))
        self.edges = nn.ModuleList(build_nb201_op(o, C, C, 1, True, True) for o in self.arch_ops)

    def forward(self, x):
        nodes = [x]
        for i, (a, b) in enumerate(NODE_SLICES, start=1):
            out = self.edges[a](nodes[0])
            for e, j in zip(range(a + 1, b), range(1, i)):
                out = out + self.edges[e](nodes[j])
            nodes.append(out)
        return nodes[-1]


class NB201Network(nn.Module):
    """The NAS-Bench-201 ``TinyNetwork`` of one cell: stem, N cells at C, ResNet block, N cells
    at 2C, ResNet block, N cells at 4C, BN-ReLU, global average pool, Linear. Affine BNs.
    Forward returns logits."""

    def __init__(self, arch_str: ArchLike, C: int = 16, N: int = 5, num_classes: int = 10):
        super().__init__()
        check_macro_args(C, N, num_classes)
        self.arch_str = format_arch(arch_str)
        self.C, self.N, self.num_classes = C, N, num_classes
        self.stem, self.cells, C_prev = build_macro(C, N, lambda c: NB201InferCell(self.arch_str, c))
        self.lastact = nn.Sequential(nn.BatchNorm2d(C_prev), nn.ReLU(inplace=True))
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)

    def extra_repr(self) -> str:
        return f"arch={self.arch_str!r}, C={self.C}, N={self.N}"

    def forward(self, x):
        h = self.stem(x)
        for cell in self.cells:
            h = cell(h)
        h = self.global_pooling(self.lastact(h))
        return self.classifier(h.flatten(1))


def _copy_bn(src: nn.BatchNorm2d, dst: nn.BatchNorm2d) -> None:
    if src.track_running_stats and dst.track_running_stats:
        dst.running_mean.copy_(src.running_mean)
        dst.running_var.copy_(src.running_var)
        dst.num_batches_tracked.copy_(src.num_batches_tracked)
    if dst.affine:
        if src.affine:
            dst.weight.copy_(src.weight)
            dst.bias.copy_(src.bias)
        else:  # affine=False search BN == affine BN with weight 1, bias 0
            dst.weight.fill_(1.0)
            dst.bias.fill_(0.0)


def _copy_module(src: nn.Module, dst: nn.Module) -> None:
    src_mods, dst_mods = list(src.modules()), list(dst.modules())
    if [type(m) for m in src_mods] != [type(m) for m in dst_mods]:
        raise ValueError(f"copy_supernet_weights: structures differ: {type(src).__name__} vs {type(dst).__name__}")
    for s, d in zip(src_mods, dst_mods):
        if isinstance(s, nn.BatchNorm2d):
            _copy_bn(s, d)
        elif isinstance(s, (nn.Conv2d, nn.Linear)):
            if s.weight.shape != d.weight.shape:
                raise ValueError(f"copy_supernet_weights: shape mismatch {tuple(s.weight.shape)} vs {tuple(d.weight.shape)}")
            d.weight.copy_(s.weight)
            if d.bias is not None:
                d.bias.copy_(s.bias)


@torch.no_grad()
def copy_supernet_weights(supernet: NB201SuperNet, network: NB201Network) -> NB201Network:
    """Copy a supernet's weights into the discrete network of one cell: stem, ResNet blocks and
    head as they are; on each edge, the weights (and BN running statistics) of the op the
    network's cell chose. Affine BNs of the network get weight 1, bias 0 (the supernet's
    cell BNs are affine=False). Returns ``network``."""
    if (supernet.C, supernet.N) != (network.C, network.N) or supernet.num_classes != network.num_classes:
        raise ValueError("copy_supernet_weights: C, N and num_classes must match")
    _copy_module(supernet.stem, network.stem)
    _copy_module(supernet.lastact, network.lastact)
    _copy_module(supernet.classifier, network.classifier)
    for sc, nc in zip(supernet.cells, network.cells):
        if isinstance(sc, ResNetBasicblock):
            _copy_module(sc, nc)
            continue
        for e, op_name in enumerate(nc.arch_ops):
            if op_name == "none":
                continue
            if op_name not in supernet.op_names:
                raise ValueError(f"copy_supernet_weights: op {op_name!r} is not in the supernet's ops {list(supernet.op_names)}")
            _copy_module(sc.edges[e][supernet.op_names.index(op_name)], nc.edges[e])
    return network
