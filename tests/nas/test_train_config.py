"""gaea train's protocols, config resolution and ARCH sources (no training here)."""
import json
import math

import pytest

from gaea_nas.spaces.darts.genotypes import DARTS_V2, PUBLISHED, parse_genotype
from gaea_nas.train import (PROTOCOLS, PROTOCOL_SOURCES, TrainConfig, TrainOptions, build_network,
                            canonical_genotype, protocols_for_space, resolve_arch, resolve_config)

NB201_CELL = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"


def _darts(protocol="darts", **kw):
    return resolve_config("darts", canonical_genotype(DARTS_V2), protocol, **kw)


def test_every_protocol_has_sources_and_resolves():
    assert set(PROTOCOLS) == set(PROTOCOL_SOURCES)
    for name in PROTOCOLS:
        space = "nb201" if name == "nb201" else "darts"
        arch = NB201_CELL if space == "nb201" else canonical_genotype(DARTS_V2)
        cfg = resolve_config(space, arch, name)
        assert cfg.protocol == name and TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert protocols_for_space("nb201") == ("nb201",)
    assert "nb201" not in protocols_for_space("darts")


def test_darts_cifar_protocol_values():
    c = _darts()
    assert (c.channels, c.layers, c.auxiliary_weight, c.batch_size, c.epochs) == (36, 20, 0.4, 96, 600)
    assert (c.lr, c.momentum, c.weight_decay, c.grad_clip, c.cutout, c.drop_path) == (0.025, 0.9, 3e-4, 5.0, 16, 0.2)
    assert _darts("pcdarts").drop_path == _darts("gaea").drop_path == 0.3
    # the scheduler is stepped after each epoch: epoch 0 trains at the base rate, epoch 300 at half
    assert c.lr_at(0) == 0.025 and math.isclose(c.lr_at(300), 0.0125) and c.lr_at(599) > 0
    assert c.drop_path_at(0) == 0 and math.isclose(c.drop_path_at(300), 0.1)


def _pcdarts_reference_lr(epoch, base=0.5, epochs=250):
    """yuhuixu1993/PC-DARTS train_imagenet.py: adjust_lr, then the 5-epoch warm-up."""
    if epochs - epoch > 5:
        lr = base * (epochs - 5 - epoch) / (epochs - 5)
    else:
        lr = base * (epochs - epoch) / ((epochs - 5) * 5)
    if epoch < 5:
        lr = lr * (epoch + 1) / 5.0
    return lr


def test_imagenet_protocol_schedules():
    d = _darts("imagenet-darts")
    assert (d.channels, d.layers, d.batch_size, d.epochs, d.weight_decay, d.label_smoothing) == (48, 14, 128, 250, 3e-5, 0.1)
    assert d.network == "imagenet" and d.drop_path == 0 and d.color_jitter == (0.4, 0.4, 0.4, 0.2)
    assert [d.lr_at(e) for e in (0, 1, 10)] == [0.1, 0.1 * 0.97, 0.1 * 0.97 ** 10]
    p = _darts("imagenet-pcdarts")
    assert (p.batch_size, p.lr, p.warmup_epochs) == (1024, 0.5, 5)
    for e in range(250):
        assert math.isclose(p.lr_at(e), _pcdarts_reference_lr(e), rel_tol=1e-12), e
    g = _darts("imagenet-gaea")
    assert g.ema_decay == 0.999 and g.lr_at(7) == p.lr_at(7)


def test_nb201_protocol_values():
    c = resolve_config("nb201", NB201_CELL)
    assert c.protocol == "nb201" and (c.channels, c.cells, c.batch_size, c.epochs) == (16, 5, 256, 200)
    assert c.nesterov and (c.lr, c.weight_decay, c.min_lr, c.cutout, c.auxiliary_weight) == (0.1, 5e-4, 0, 0, 0)
    assert c.lr_at(0) == 0.1 and c.lr_at(200) == 0


def test_overrides_and_their_errors():
    c = _darts(epochs=3, drop_path=0.5)
    assert c.epochs == 3 and c.drop_path == 0.5
    with pytest.raises(ValueError, match="not a TrainConfig field"):
        _darts(learning_rate=0.1)
    with pytest.raises(ValueError, match="cannot be set"):
        _darts(network="nb201")
    with pytest.raises(ValueError, match="drop_path"):
        _darts(drop_path=1.5)
    with pytest.raises(ValueError, match="nb201"):
        resolve_config("darts", canonical_genotype(DARTS_V2), "nb201")
    with pytest.raises(ValueError, match="protocol"):
        resolve_config("nb201", NB201_CELL, "darts")
    with pytest.raises(ValueError, match="missing"):
        TrainConfig.from_dict({k: v for k, v in _darts().to_dict().items() if k != "lr"})
    with pytest.raises(ValueError, match="amp"):
        TrainOptions(amp="fp8")


def test_arch_sources(tmp_path):
    for name in ("DARTS_V1", "DARTS_V2", "PC_DARTS_cifar", "PC_DARTS_image", "GAEA_PC_DARTS_image"):
        spec = resolve_arch(name)
        assert spec.space == "darts" and spec.name == name and spec.genotype() == parse_genotype(spec.arch)
        assert list(spec.genotype().normal) == [tuple(p) for p in PUBLISHED[name].normal]
    pasted = resolve_arch(repr(DARTS_V2))  # as DARTS code prints it
    assert pasted.arch == resolve_arch("DARTS_V2").arch and pasted.name is None
    assert "range" not in resolve_arch("PC_DARTS_cifar").arch  # concats as lists
    nb = resolve_arch(NB201_CELL)
    assert nb.space == "nb201" and nb.arch == NB201_CELL
    run = tmp_path / "search-run"
    run.mkdir()
    with pytest.raises(FileNotFoundError, match="result.json"):
        resolve_arch(str(run))
    (run / "result.json").write_text(json.dumps({"arch": NB201_CELL, "space": "nb201"}))
    spec = resolve_arch(str(run))
    assert spec.arch == NB201_CELL and spec.origin.startswith("run:")
    (run / "result.json").write_text("{not json")
    with pytest.raises(ValueError, match="result.json"):
        resolve_arch(str(run))


@pytest.mark.parametrize("text", [
    "Genotype(normal=__import__('os').system('echo pwned'), normal_concat=[2], reduce=[], reduce_concat=[2])",
    "Genotype(normal=[('sep_conv_3x3', 0)] * 8, normal_concat=[2, 3, 4, 5], reduce=[], reduce_concat=[2])",
    "Genotype(normal=[('conv_9x9', 0), ('sep_conv_3x3', 1)], normal_concat=[2], reduce=[('skip_connect', 0), "
    "('skip_connect', 1)], reduce_concat=[2])",
    "|nor_conv_3x3~0|+|bogus~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|",
    "ResNet50",
    "",
])
def test_bad_arch_text_is_refused_without_evaluating_it(text):
    with pytest.raises(ValueError):
        resolve_arch(text)


def test_networks_and_parameter_counts():
    """The protocol's network of a published cell has its published size (aux head excluded)."""
    from gaea_nas.costs import count_parameters
    net = build_network(_darts(), 10)
    assert 3.3e6 < count_parameters(net) < 3.4e6  # DARTS_V2: 3.3M
    assert net.drop_path_prob == 0 and hasattr(net, "auxiliary_head")
    pc = resolve_config("darts", resolve_arch("PC_DARTS_cifar").arch, "pcdarts")
    assert 3.6e6 < count_parameters(build_network(pc, 10)) < 3.7e6  # PC-DARTS: 3.6M
    imagenet = build_network(_darts("imagenet-darts"), 1000)
    assert type(imagenet).__name__ == "NetworkImageNet" and 4.7e6 < count_parameters(imagenet) < 4.8e6  # 4.7M
    nb = build_network(resolve_config("nb201", NB201_CELL), 10)
    assert type(nb).__name__ == "NB201Network"
