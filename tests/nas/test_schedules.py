"""Weight-LR schedules and the GDAS temperature (gaea_nas.search.schedules) against
docs/method.md §2.3 and §5, torch's CosineAnnealingLR and written-out values."""
import math

import pytest
import torch

from gaea_nas.search.schedules import cosine_lr, cosine_power_lr, gdas_tau


def _opt(lr=0.025):
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr, momentum=0.9)


def test_cosine_matches_torch_and_endpoints():
    ours = [cosine_lr(e, 0.025, 0.001, 25) for e in range(25)]
    opt = _opt()
    ref = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=25, eta_min=0.001)
    theirs = []
    for _ in range(25):
        theirs.append(opt.param_groups[0]["lr"])
        opt.step()
        ref.step()
    assert ours == pytest.approx(theirs, rel=1e-12, abs=1e-15)
    assert ours[0] == 0.025
    assert cosine_lr(25, 0.025, 0.001, 25) == pytest.approx(0.001)
    assert cosine_lr(40, 0.025, 0.001, 25) == pytest.approx(0.001)  # flat after the horizon
    assert cosine_lr(25, 0.1, 0.0, 50) == pytest.approx(0.05)


def test_release_quirk_25_epochs_under_50_epoch_horizon():
    # docs/method.md §5: with the README's 25 NB201 epochs the LR only falls to about 0.0138
    assert cosine_power_lr(0, 0.025, 0.001, 50) == pytest.approx(0.025)
    assert cosine_power_lr(24, 0.025, 0.001, 50) == pytest.approx(0.0138, abs=5e-5)
    # the plain cosine over the run's own 25 epochs ends far lower
    assert cosine_lr(24, 0.025, 0.001, 25) < 0.0012


def test_power1_one_cycle_equals_cosine_within_horizon():
    for e in range(50):
        assert cosine_power_lr(e, 0.025, 0.001, 50) == pytest.approx(cosine_lr(e, 0.025, 0.001, 50))


def test_warm_restart_halves_peak():
    # more than 50 epochs (GDAS): restart every 50 with the peak halved
    assert cosine_power_lr(50, 0.025, 0.001, 50) == pytest.approx(0.0125)
    assert cosine_power_lr(100, 0.025, 0.001, 50) == pytest.approx(0.00625)
    assert cosine_power_lr(75, 0.025, 0.001, 50) == pytest.approx(0.001 + (0.0125 - 0.001) * 0.5)
    assert cosine_power_lr(49, 0.025, 0.001, 50) < cosine_power_lr(50, 0.025, 0.001, 50)


def test_power_not_one_formula():
    p = 10.0
    f = 0.5 * (1 + math.cos(math.pi * 10 / 40))
    want = 0.0 + 0.1 * (p ** (f + 1) - p) / (p ** 2 - p)
    assert cosine_power_lr(10, 0.1, 0.0, 40, power=p) == pytest.approx(want)
    assert cosine_power_lr(0, 0.1, 0.0, 40, power=p) == pytest.approx(0.1)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_bad_horizon(bad):
    with pytest.raises(ValueError, match="scheduler_epochs"):
        cosine_lr(0, 0.1, 0.0, bad)
    with pytest.raises(ValueError, match="scheduler_epochs"):
        cosine_power_lr(0, 0.1, 0.0, bad)


@pytest.mark.parametrize("epochs, final", [(100, 5.1), (150, 3.4), (250, 2.1)])
def test_gdas_tau_release_denominator_quirk(epochs, final):
    # docs/method.md §2.3: final tau about 5.1 / 3.4 / 2.1 with a 50-epoch warm-up
    taus = [gdas_tau(e, epochs, 10.0, 0.1, warmup=50) for e in range(epochs)]
    assert taus[-1] == pytest.approx(final, abs=0.05)
    assert all(t == 10.0 for t in taus[:51])
    assert all(a >= b for a, b in zip(taus, taus[1:]))
    fixed = gdas_tau(epochs - 1, epochs, 10.0, 0.1, warmup=50, release_denominator=False)
    assert fixed == pytest.approx(0.1)


def test_gdas_tau_without_warmup_is_upstream_linear_anneal():
    taus = [gdas_tau(e, 250, 10.0, 0.1, warmup=0) for e in range(250)]
    assert taus[0] == 10.0 and taus[-1] == pytest.approx(0.1)
    steps = [a - b for a, b in zip(taus, taus[1:])]
    assert max(steps) == pytest.approx(min(steps)) == pytest.approx(9.9 / 249)
    assert gdas_tau(0, 1) == 10.0  # one-epoch run: no division by zero
    with pytest.raises(ValueError, match="epochs"):
        gdas_tau(0, 0)
