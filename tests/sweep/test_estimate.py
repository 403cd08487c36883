"""sweep --dry-run's time estimate: measured step times where a network has one, else MACs."""

import pytest

from shallowkern.sweep import presets
from shallowkern.sweep.config import TrialConfig


def _lenet(d1, seed=0, **over):
    return TrialConfig("lenet", d1=d1, k=2.8, recipe="lab", seed=seed,
                       overrides={"epochs": 10, **over})


def test_step_key_names_the_network_not_the_seed_or_recipe():
    assert presets.step_key(_lenet(16, seed=2)) == "lenet d1=16 k=2.8"
    assert presets.step_key(_lenet(16, lr_step=4)) == presets.step_key(_lenet(16))
    vgg = TrialConfig("vgg16", width=0.25, batch_norm=True, recipe="lab", seed=1)
    assert presets.step_key(vgg) == "vgg16 width=0.25 bn"


def test_measured_step_time_gives_the_estimate():
    cfg = _lenet(16)
    n = 45000  # the lab recipe holds out 5,000 of CIFAR-10's 50,000 training images
    t = presets.estimate_time([cfg], step_ms={"lenet d1=16 k=2.8": 20.0}, workers=1)
    expect = n / 100 * 0.020 * presets.STEP_OVERHEAD * 10 / 3600
    assert t["hours_single"] == pytest.approx(expect)
    two = presets.estimate_time([cfg, _lenet(16, seed=1)], step_ms={"lenet d1=16 k=2.8": 20.0})
    assert two["hours_single"] == pytest.approx(expect)  # two trials on two workers


def test_unmeasured_network_falls_back_to_the_mac_model_and_grows_with_width():
    small = presets.estimate_time([_lenet(8)], step_ms={}, workers=1)["hours_single"]
    big = presets.estimate_time([_lenet(32)], step_ms={}, workers=1)["hours_single"]
    assert 0 < small < big
    measured = presets.estimate_time([_lenet(8)], step_ms={"lenet d1=32 k=2.8": 1.0},
                                     workers=1)["hours_single"]
    assert measured == pytest.approx(small)  # another network's time is not used
