"""SearchConfig defaults (docs/method.md §5), release preset, JSON round trip, validation."""
import dataclasses
import json

import pytest

from gaea_nas.search.config import METHODS, PRESETS, SPACES, SearchConfig, default_config, release_notes

VALID = [(s, m) for s in SPACES for m in METHODS if not (s == "nb201" and m in ("pcdarts", "gaea-pcdarts"))]


def test_gaea_darts_on_nb201_table():
    c, notes = default_config("nb201", "gaea")
    assert (c.epochs, c.batch_size, c.lr, c.min_lr, c.momentum, c.weight_decay, c.grad_clip) == \
        (25, 64, 0.025, 0.001, 0.9, 3e-4, 5.0)
    assert c.arch_optimizer == "eg" and c.arch_kind == "simplex"
    assert (c.arch_lr, c.entropic_reg, c.min_value, c.order) == (0.1, 0.0, 1e-5, "clamp_then_normalize")
    assert not c.edge_weights and not c.adapt_lr and c.arch_grad_clip is None and c.arch_warmup_epochs == 0
    assert (c.channels, c.cells, c.exclude_none) == (16, 5, False)
    assert c.lr_schedule == "cosine" and c.scheduler_epochs == 25
    assert c.weight_lr(25) == pytest.approx(0.001)
    assert notes and all(isinstance(n, str) for n in notes)


def test_gaea_pcdarts_table():
    c, _ = default_config("darts", "gaea-pcdarts")
    assert (c.epochs, c.batch_size, c.lr, c.min_lr, c.weight_decay, c.objective, c.train_portion) == \
        (50, 256, 0.1, 0.0, 3e-4, "bilevel", 0.5)
    assert (c.arch_lr, c.edge_lr, c.edge_weights, c.arch_warmup_epochs) == (0.1, 0.1, True, 0)
    assert (c.channels, c.layers, c.partial_channels, c.exclude_none) == (16, 8, 4, False)
    assert c.arch_optimizer == "eg" and c.entropic_reg == 0.0


def test_gaea_gdas_table():
    c, _ = default_config("nb201", "gaea-gdas")
    assert c.batch_size == 64 and c.lr == 0.025 and c.min_lr == 0.001
    assert (c.arch_lr, c.entropic_reg, c.order) == (0.01, 0.01, "normalize_then_clamp")
    assert (c.tau_max, c.tau_min, c.tau_warmup_epochs, c.arch_warmup_epochs) == (10.0, 0.1, 50, 50)
    assert c.arch_kind == "gaea-gdas" and c.is_gdas
    assert c.tau(c.epochs - 1) == pytest.approx(0.1)  # default preset: the fixed denominator


def test_baselines_table():
    d, _ = default_config("darts", "darts")
    assert (d.epochs, d.batch_size, d.lr, d.min_lr, d.weight_decay, d.objective) == (50, 64, 0.025, 0.001, 3e-4, "bilevel")
    assert (d.arch_optimizer, d.arch_lr, d.arch_betas, d.arch_weight_decay) == ("adam", 3e-4, (0.5, 0.999), 1e-3)
    assert d.arch_kind == "softmax"
    p, _ = default_config("darts", "pcdarts")
    assert (p.batch_size, p.lr, p.arch_lr, p.arch_warmup_epochs, p.partial_channels, p.edge_weights) == \
        (256, 0.1, 6e-4, 15, 4, True)
    g, _ = default_config("nb201", "gdas")
    assert (g.epochs, g.nesterov, g.weight_decay, g.arch_optimizer, g.tau_warmup_epochs) == (250, True, 5e-4, "adam", 0)
    assert g.tau(0) == 10.0 and g.tau(249) == pytest.approx(0.1)
    n, _ = default_config("nb201", "darts")
    assert (n.epochs, n.nesterov, n.weight_decay) == (50, True, 5e-4)


def test_release_preset_nb201():
    c, notes = default_config("nb201", "gaea", "release")
    d, _ = default_config("nb201", "gaea")
    diff = {f.name for f in dataclasses.fields(c) if getattr(c, f.name) != getattr(d, f.name)}
    assert diff == {"preset", "lr_schedule", "scheduler_epochs", "channels", "exclude_none", "deterministic",
                    "search_sampling", "tau_release_denominator"}
    assert (c.lr_schedule, c.scheduler_epochs, c.channels, c.exclude_none) == ("cosine_power", 50, 24, True)
    assert c.weight_lr(24) == pytest.approx(0.0138, abs=5e-5)  # docs/method.md §5
    text = "\n".join(notes)
    assert "scheduler_epochs=50" in text and "0.01375" in text and "exclude_none" in text and "C=24" in text


def test_release_preset_gdas_quirks():
    c, notes = default_config("nb201", "gaea-gdas", "release", epochs=100)
    assert not c.exclude_none  # egdas yaml: exclude_zero false
    assert c.tau_release_denominator and c.tau(99) == pytest.approx(5.1, abs=0.05)
    assert c.weight_lr(50) == pytest.approx(0.0125)  # warm restart, peak halved
    text = "\n".join(notes)
    assert "tau denominator" in text and "warm restart" in text and "normalise then clamp" in text


def test_scheduler_epochs_follows_epochs_unless_set():
    assert default_config("nb201", "gaea", epochs=7)[0].scheduler_epochs == 7
    assert default_config("nb201", "gaea", epochs=7, scheduler_epochs=9)[0].scheduler_epochs == 9
    assert default_config("nb201", "gaea", "release", epochs=7)[0].scheduler_epochs == 50


@pytest.mark.parametrize("space, method", VALID)
@pytest.mark.parametrize("preset", PRESETS)
def test_json_round_trip(space, method, preset):
    c, _ = default_config(space, method, preset)
    text = c.to_json()
    back = SearchConfig.from_json(text)
    assert back == c and back.to_json() == text
    assert json.loads(text)["arch_betas"] == [0.5, 0.999]
    assert release_notes(back) == release_notes(c)


def test_frozen_and_replace():
    c, _ = default_config("nb201", "gaea")
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.epochs = 3
    assert c.replace(epochs=3).epochs == 3
    with pytest.raises(ValueError, match="epochs"):
        c.replace(epochs=-1)


@pytest.mark.parametrize("kw, field", [
    (dict(epochs=-1), "epochs"),
    (dict(epochs=0), "epochs"),
    (dict(epochs=2.5), "epochs"),
    (dict(batch_size=True), "batch_size"),
    (dict(objective="oracle"), "objective"),
    (dict(lr=0.0), "lr"),
    (dict(lr=float("nan")), "lr"),
    (dict(min_lr=0.5), "min_lr"),
    (dict(weight_decay=-1e-4), "weight_decay"),
    (dict(momentum=1.5), "momentum"),
    (dict(train_portion=1.0, objective="bilevel"), "train_portion"),
    (dict(train_portion=0.0), "train_portion"),
    (dict(order="sideways"), "order"),
    (dict(min_value=1.0), "min_value"),
    (dict(tau_min=20.0), "tau_min"),
    (dict(arch_betas=(0.5, 1.5)), "arch_betas"),
    (dict(arch_warmup_epochs=25), "arch_warmup_epochs"),
    (dict(partial_channels=4), "partial_channels"),
    (dict(exclude_none="yes"), "exclude_none"),
    (dict(lr_schedule="step"), "lr_schedule"),
    (dict(dataset=""), "dataset"),
    (dict(scheduler_epochs=0), "scheduler_epochs"),
])
def test_bad_values_name_the_field(kw, field):
    with pytest.raises(ValueError, match=rf"SearchConfig\.{field}"):
        default_config("nb201", "gaea", **kw)


def test_bad_space_method_preset():
    with pytest.raises(ValueError, match=r"SearchConfig\.method.*'sgas'"):
        default_config("nb201", "sgas")
    with pytest.raises(ValueError, match=r"SearchConfig\.space"):
        default_config("nasbench301", "gaea")
    with pytest.raises(ValueError, match=r"SearchConfig\.preset"):
        default_config("nb201", "gaea", "paper")
    with pytest.raises(ValueError, match=r"not available in space 'nb201'"):
        default_config("nb201", "gaea-pcdarts")
    with pytest.raises(ValueError, match=r"not available in space 'nb201'"):
        SearchConfig(space="nb201", method="pcdarts")
    with pytest.raises(ValueError, match=r"unknown field.*'colour'"):
        default_config("nb201", "gaea", colour="red")
    with pytest.raises(ValueError, match=r"partial_channels.*divide"):
        default_config("darts", "gaea-pcdarts", channels=18)


def test_from_json_errors():
    with pytest.raises(ValueError, match="invalid JSON"):
        SearchConfig.from_json("{nope")
    with pytest.raises(ValueError, match="unknown field"):
        SearchConfig.from_json(json.dumps({"space": "nb201", "wings": 2}))
    with pytest.raises(ValueError, match=r"SearchConfig\.method"):
        SearchConfig.from_json(json.dumps({"method": "random"}), partial=True)
    assert SearchConfig.from_json(json.dumps({"epochs": 3}), partial=True).epochs == 3


def _saved():
    return default_config("nb201", "gaea")[0].to_dict()


@pytest.mark.parametrize("key", ["space", "epochs", "arch_betas", "deterministic"])
def test_saved_config_missing_key_is_named(key):
    d = _saved()
    del d[key]
    with pytest.raises(ValueError, match=rf"SearchConfig\.{key}: missing"):
        SearchConfig.from_dict(d)
    with pytest.raises(ValueError, match=rf"SearchConfig\.{key}: missing"):
        SearchConfig.from_json(json.dumps(d))


@pytest.mark.parametrize("key, value", [
    ("epochs", "25"), ("epochs", None), ("lr", "0.1"), ("lr", [0.1]), ("arch_betas", 0.5),
    ("arch_betas", ["a", "b"]), ("arch_betas", {"b1": 0.5}), ("space", ["nb201"]), ("method", {}),
    ("dataset", 10), ("nesterov", 1), ("arch_grad_clip", "none"), ("seed", 1.5), ("order", None),
])
def test_saved_config_wrong_type_is_named(key, value):
    d = _saved()
    d[key] = value
    with pytest.raises(ValueError, match=rf"SearchConfig\.{key}"):
        SearchConfig.from_json(json.dumps(d))


@pytest.mark.parametrize("text", [b"\xff\xfe{", "[" * 100_000, '{"seed": 1' + "0" * 5000 + "}", 42, "null"])
def test_from_json_never_raises_other_types(text):
    with pytest.raises(ValueError, match="SearchConfig"):
        SearchConfig.from_json(text)
    with pytest.raises(ValueError, match="field names must be strings"):
        SearchConfig.from_dict({**_saved(), 3: 1})
