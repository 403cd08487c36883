"""The training recipe: presets, validation, splits, selection on validation, determinism."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from shallowkern.data import DeviceLoader, HostLoader
from shallowkern.models import GeneralizedLeNet
from shallowkern.nn import WideConv2d
from shallowkern.sweep import TrialConfig, run_trial
from shallowkern.sweep.trial import load_data
from shallowkern.train import RECIPES, Recipe, Splits, get_recipe, make_splits, train_and_evaluate

TINY = dict(epochs=2, lr_step=1, val_size=100, train_subset=200)


def _images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
            torch.randint(0, 10, (n,), generator=g))


def test_lab_recipe_is_the_documented_one():
    lab = RECIPES["lab"]
    assert (lab.batch_size, lab.momentum, lab.nesterov, lab.weight_decay) == (100, 0.9, True, 5e-4)
    assert (lab.augment, lab.pad, lab.flip, lab.normalize) == (True, 4, True, "minus_one_one")
    assert lab.select == "best_val" and lab.val_size > 0 and lab.test_subset is None
    quick = RECIPES["quick"]
    assert quick.train_subset == 10000 and quick.epochs < lab.epochs
    assert get_recipe("quick", {"epochs": 1}).epochs == 1


@pytest.mark.parametrize("bad", [
    {"epochs": 0}, {"lr": 0.0}, {"lr": float("nan")}, {"batch_size": 2.5}, {"select": "test"},
    {"val_size": -1}, {"train_subset": 0}, {"momentum": 0.0},  # nesterov needs momentum
])
def test_bad_recipes_are_rejected(bad):
    with pytest.raises(ValueError, match="Recipe"):
        Recipe(**bad)
    with pytest.raises(ValueError, match="unknown recipe field"):
        get_recipe("lab", {"epoch": 3})


def test_splits_are_disjoint_stratified_and_fixed():
    train, test = _images(1000, 0), _images(300, 1)
    r = Recipe(**TINY, test_subset=150)
    s = make_splits(train, test, r)
    assert (len(s.train[1]), len(s.val[1]), len(s.test[1])) == (200, 100, 150)
    key = lambda x: {bytes(img.numpy()) for img in x}  # noqa: E731
    assert not key(s.train[0]) & key(s.val[0])  # validation is held out from training
    again = make_splits(train, test, dataclasses.replace(r, epochs=5))
    assert torch.equal(again.train[0], s.train[0]) and torch.equal(again.val[1], s.val[1])
    with pytest.raises(ValueError, match="leaves no training images"):
        make_splits(train, test, Recipe(val_size=1000))


def test_selection_uses_validation_and_test_is_reported_for_that_epoch():
    train, test = load_data("synthetic", None)
    recipe = Recipe(**{**TINY, "epochs": 3})
    splits = make_splits(train, test, recipe)
    seen = []
    torch.manual_seed(0)
    res = train_and_evaluate(GeneralizedLeNet(2), splits, recipe, "cpu", seed=0,
                             progress=lambda e, row: seen.append(e))
    assert seen == [1, 2, 3] and res["selection"] == "best_val"
    vals = [h["val_error"] for h in res["history"]]
    assert res["best_epoch"] == 1 + vals.index(min(vals)) and res["val_error"] == min(vals)
    assert [h["lr"] for h in res["history"]] == pytest.approx([0.05, 0.025, 0.0125])
    assert 0 <= res["test_error"] <= 1 and res["images_per_s"] > 0 and not res["diverged"]

    last_recipe = dataclasses.replace(recipe, select="last")
    last = train_and_evaluate(GeneralizedLeNet(2), splits, last_recipe, "cpu", seed=0)
    assert last["best_epoch"] == 3 and last["selection"] == "last"
    no_val = Splits(splits.train, (splits.val[0][:0], splits.val[1][:0]), splits.test)
    res = train_and_evaluate(GeneralizedLeNet(2), no_val, recipe, "cpu", seed=0)
    assert res["selection"] == "last" and res["val_error"] is None


def test_run_trial_is_deterministic_per_seed():
    cfg = TrialConfig("lenet", d1=2, dataset="synthetic", recipe="quick",
                      overrides={"epochs": 1, "val_size": 100}, train_subset=200)
    a, b = run_trial(cfg), run_trial(cfg.to_dict())
    c = run_trial(dataclasses.replace(cfg, seed=1))
    keys = ("train_error", "val_error", "test_error")
    assert [a[k] for k in keys] == [b[k] for k in keys]
    assert a["history"][0]["train_loss"] == b["history"][0]["train_loss"]
    assert a["history"][0]["train_loss"] != c["history"][0]["train_loss"]
    assert a["trial_id"] == cfg.trial_id and a["config"] == cfg.to_dict()
    for key in ("schema_version", "flops", "macs", "params", "bytes", "latency", "wall_time",
                "machine", "git_commit"):
        assert key in a
    assert a["flops"] == 2 * a["macs"]
    assert a["macs"] == 58_800 * 2 + 2_500 * 2 * 6 + 3_000 * 6 + 10_920  # d1=2, d2=6
    assert {"hostname", "cpu", "torch", "device_name"} <= set(a["machine"])


def test_host_loader_yields_what_the_device_loader_yields():
    """Without augmentation the two pipelines give identical batches; with it, every HostLoader
    image is a zero-filled translation by <= pad pixels, possibly flipped, of its source."""
    x, y = _images(50, 0)
    host = HostLoader(x, y, 16, shuffle=False, augment=False)
    dev = DeviceLoader(x, y, 16, device="cpu", shuffle=False, augment=False)
    assert len(host) == len(dev) == 4
    for (hx, hy), (dx, dy) in zip(host, dev):
        assert torch.equal(hx, dx) and torch.equal(hy, dy) and hx.dtype == torch.float32

    aug = HostLoader(x, y, 50, shuffle=False, pad=2, seed=3)
    (xb, yb), = list(aug)
    src = torch.nn.functional.pad((x.float() - 127.5) / 127.5, (2, 2, 2, 2), value=-1.0)
    for i in range(50):
        found = any(torch.equal(xb[i], cand)
                    for dy_ in range(5) for dx_ in range(5)
                    for cand in (src[i, :, dy_:dy_ + 32, dx_:dx_ + 32],
                                 src[i, :, dy_:dy_ + 32, dx_:dx_ + 32].flip(-1)))
        assert found, f"image {i} is not a translation/flip of its source"
    assert torch.equal(yb, y)
    again = torch.cat([b for b, _ in HostLoader(x, y, 50, shuffle=False, pad=2, seed=3)])
    assert torch.equal(again, xb)  # seeded
    with pytest.raises(ValueError, match="uint8"):
        HostLoader(x.float(), y, 4)
    with pytest.raises(ValueError, match="workers"):
        HostLoader(x, y, 4, workers=-1)


def test_plain_trial_trains_the_same_network_in_plain_pytorch():
    """impl="plain": the same initial weights as unfused nn layers, fed by the HostLoader; the
    record says so and its id differs from the shallowkern trial's."""
    cfg = TrialConfig("lenet", d1=2, dataset="synthetic", recipe="quick",
                      overrides={"epochs": 1, "val_size": 100}, train_subset=200)
    plain_cfg = dataclasses.replace(cfg, impl="plain")
    ours, plain = run_trial(cfg), run_trial(plain_cfg)
    assert ours["impl"] == "shallowkern" and plain["impl"] == "plain"
    assert plain["trial_id"] == plain_cfg.trial_id != ours["trial_id"]
    assert plain["config"]["impl"] == "plain" and "impl" not in ours["config"]
    assert plain["macs"] == ours["macs"] and plain["params"] == ours["params"]
    assert 0 <= plain["test_error"] <= 1 and plain["images_per_s"] > 0
    train, test = load_data("synthetic", None)
    splits = make_splits(train, test, Recipe(**TINY))
    with pytest.raises(ValueError, match="pipeline"):
        train_and_evaluate(GeneralizedLeNet(2), splits, Recipe(**TINY), "cpu", seed=0,
                           pipeline="disk")
    with pytest.raises(ValueError, match="normalize"):
        train_and_evaluate(GeneralizedLeNet(2), splits, Recipe(**TINY, normalize="standardize"),
                           "cpu", seed=0, pipeline="host")
    assert any(isinstance(m, WideConv2d) for m in GeneralizedLeNet(2).modules())


def test_synthetic_n_is_a_cifar_shaped_stand_in():
    train, test = load_data("synthetic-50", None)
    assert train[0].shape == (50, 3, 32, 32) and train[0].dtype == torch.uint8
    assert test[0].shape[0] == 10 and int(train[1].max()) < 10
