"""gaea_ext.baselines (the eager formulations the profiler times) compute what the fused ops
compute: each against gaea_ext.reference, in float64."""
import pytest
import torch
import torch.nn as nn

from gaea_ext import baselines, reference

NB201_KINDS = ["none", "skip", "tensor", "tensor", "avg_pool_3x3"]
DARTS_KINDS = ["none", "max_pool_3x3_bn", "avg_pool_3x3_bn", "skip", "tensor", "tensor", "tensor", "tensor"]


def _simplex(shape, segments=None):
    logits = torch.randn(shape, dtype=torch.float64)
    segments = segments or [shape[-1]]
    return torch.cat([s.softmax(-1) for s in logits.split(segments, -1)], -1)


def _flat(convs, kinds):
    """mixed_node's flat form of a node whose edge e has the outputs convs[e]."""
    outputs, sources, all_kinds = [], [], []
    for e, cs in enumerate(convs):
        used = 0
        for k in kinds:
            sources.append(len(outputs) + used if k == "tensor" else e)
            used += k == "tensor"
            all_kinds.append(k)
        outputs.extend(cs)
    return outputs, all_kinds, sources


def test_eager_weighted_sum():
    xs = [torch.randn(3, 4, dtype=torch.float64) for _ in range(5)]
    w = torch.rand(5, dtype=torch.float64)
    torch.testing.assert_close(baselines.eager_weighted_sum(xs, w), reference.weighted_sum(xs, w))


def test_eager_nb201_node():
    xs = [torch.randn(2, 3, 5, 6, dtype=torch.float64) for _ in range(3)]
    convs = [[torch.randn(2, 3, 5, 6, dtype=torch.float64) for _ in range(2)] for _ in range(3)]
    w = torch.rand(3, len(NB201_KINDS), dtype=torch.float64)
    outputs, kinds, sources = _flat(convs, NB201_KINDS)
    want = reference.mixed_node(xs, outputs, w.reshape(-1), kinds, sources)
    torch.testing.assert_close(baselines.eager_nb201_node(xs, convs, w), want)


def test_eager_darts_node_in_training_mode():
    C = 3
    xs = [torch.randn(2, C, 5, 6, dtype=torch.float64) for _ in range(2)]
    convs = [[torch.randn(2, C, 5, 6, dtype=torch.float64) for _ in range(4)] for _ in range(2)]
    w = torch.rand(2, len(DARTS_KINDS), dtype=torch.float64)
    bns = [[nn.BatchNorm2d(C, affine=False).double() for _ in range(2)] for _ in range(2)]
    norms = []  # batch statistics of each pool: [mean, 1/sqrt(var + eps)]
    for x, (bn_max, bn_avg) in zip(xs, bns):
        for kind, bn in (("max_pool_3x3", bn_max), ("avg_pool_3x3", bn_avg)):
            mean, var = reference.pool_stats(x, kind)
            norms.append(torch.stack([mean, torch.rsqrt(var + bn.eps)]))
    outputs, kinds, sources = _flat(convs, DARTS_KINDS)
    want = reference.mixed_node(xs, outputs, w.reshape(-1), kinds, sources, torch.stack(norms))
    torch.testing.assert_close(baselines.eager_darts_node(xs, convs, w, bns), want)


@pytest.mark.parametrize("min_value", [1e-5, 1e-3])
def test_exp_grad_step_release_is_the_clamped_eg_step(min_value):
    p = _simplex((14, 8))
    g = torch.randn(14, 8, dtype=torch.float64) * 3
    want = reference.exp_grad_step(p, g, 0.1, min_value=min_value)
    got = baselines.exp_grad_step_release(p.clone(), g, 0.1, min_value=min_value)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)


def test_edge_step_release_is_the_segmented_eg_step_without_clamp():
    segments = [2, 3, 4, 5]
    beta = torch.tensor([1 / 2] * 2 + [1 / 3] * 3 + [1 / 4] * 4 + [1 / 5] * 5, dtype=torch.float64)
    g = torch.randn(14, dtype=torch.float64) * 4
    want = reference.exp_grad_step(beta, g, 0.1, segments=segments, min_value=0.0)
    got = baselines.edge_step_release(beta.clone(), g, 0.1, segments)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    sums = torch.stack([s.sum() for s in got.split(segments)])
    torch.testing.assert_close(sums, torch.ones(4, dtype=torch.float64))
