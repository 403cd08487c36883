"""Packing (shallowkern.sweep.packed): P trials trained as one network are the same P trials.

Exactness: same init and data order -> the same per-step losses as one-at-a-time training, to
fp32 tolerance, for a few steps (LeNet and BatchNorm VGG-16). Statistics: a tiny packed run's
final errors lie within the seed spread of the same trials run alone. Plumbing: packs, records,
resumability, bad inputs.
"""

from __future__ import annotations

import statistics

import pytest
import torch
import torch.nn.functional as F

from shallowkern.data import DeviceLoader
from shallowkern.sweep import TrialConfig
from shallowkern.sweep.packed import PackedNet, plan_packs, run_pack, run_packed_sweep, \
    train_packed
from shallowkern.sweep.store import load_results
from shallowkern.sweep.trial import build_model, load_data, run_trial
from shallowkern.train import get_recipe, make_splits

SEEDS = (0, 1, 2)


def _splits(recipe):
    train, test = load_data("synthetic", None)
    return make_splits(train, test, recipe)


def _single_losses(cfg: TrialConfig, splits, recipe, steps: int) -> list[float]:
    """train_and_evaluate's step loop, one trial, recording the loss of every step."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg)
    loader = DeviceLoader(*splits.train, recipe.batch_size, device="cpu", shuffle=True,
                          augment=recipe.augment, pad=recipe.pad, flip=recipe.flip,
                          normalize=recipe.normalize, seed=cfg.seed)
    opt = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                          nesterov=recipe.nesterov, weight_decay=recipe.weight_decay)
    out = []
    for xb, yb in loader:
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        out.append(float(loss.detach()))
        if len(out) == steps:
            break
    return out


# A 13-layer BatchNorm VGG at width 1/16 (4..32 channels), batch 32, amplifies the fp32
# rounding difference (grouped vs plain conv summation order) ~10x per step: 1e-7, 4e-6, 4e-5,
# 3e-3 measured; a wrong update would differ by >1e-2 from the second step on. So 3 steps there.
# LeNet with 3 trials runs the grouped convs on the fused im2col + GEMM path, with 4 on the
# direct AVX-512 kernel whose lanes hold the 4 trials' channels (where the CPU has AVX-512).
@pytest.mark.parametrize("family,params,steps,seeds", [
    ("lenet", {"d1": 3, "k": 2.8}, 5, SEEDS),
    ("lenet", {"d1": 4, "k": 2.8}, 5, (0, 1, 2, 3)),
    ("vgg16", {"width": 0.0625, "batch_norm": True}, 3, SEEDS)])
def test_packed_steps_match_one_at_a_time(family, params, steps, seeds):
    recipe = get_recipe("quick", {"batch_size": 32, "train_subset": 256, "val_size": 64,
                                  "lr": 0.01})
    splits = _splits(recipe)
    cfgs = [TrialConfig(family, dataset="synthetic", recipe="quick", seed=s, **params)
            for s in seeds]
    models = []
    for c in cfgs:
        torch.manual_seed(c.seed)
        models.append(build_model(c))
    out = train_packed(models, splits, recipe, "cpu", list(seeds), max_steps=steps)
    packed = torch.tensor(out["step_losses"])  # (steps, P)
    single = torch.tensor([_single_losses(c, splits, recipe, steps) for c in cfgs]).T
    assert packed.shape == single.shape == (steps, len(seeds))
    # The trials differ from each other (own init/data), and each matches its twin.
    assert (single[0, 0] - single[0, 1]).abs() > 1e-4
    torch.testing.assert_close(packed, single, rtol=1e-4, atol=1e-5)


def test_packed_forward_equals_each_model():
    torch.manual_seed(0)
    models = [build_model(TrialConfig("lenet", d1=2, seed=s)) for s in range(3)]
    packed = PackedNet(models)
    x = torch.randn(3, 5, 3, 32, 32)
    ref = torch.stack([m(x[p]) for p, m in enumerate(models)])
    torch.testing.assert_close(packed(x), ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(packed(x[0]), torch.stack([m(x[0]) for m in models]),
                               rtol=1e-4, atol=1e-5)
    assert torch.equal(packed.forward_grouped(packed.stack(list(x))), packed(x))
    with pytest.raises(ValueError, match="3 batches expected, got 2"):
        packed.stack(list(x[:2]))
    # state_dicts round-trip into the original (fused) models' keys
    for m, sd in zip(models, packed.state_dicts()):
        assert set(sd) == set(m.state_dict())
        for k, v in m.state_dict().items():
            torch.testing.assert_close(sd[k], v)


def test_packed_errors_within_seed_spread():
    over = {"epochs": 3, "lr_step": 2, "train_subset": 600, "val_size": 200, "batch_size": 50}
    cfgs = [TrialConfig("lenet", d1=4, dataset="synthetic", recipe="quick", overrides=over,
                        seed=s) for s in SEEDS]
    packed = run_pack(cfgs)
    single = [run_trial(c) for c in cfgs]
    p_err = [r["test_error"] for r in packed]
    s_err = [r["test_error"] for r in single]
    spread = max(statistics.pstdev(s_err), 0.02)  # 400 test images: ~2% binomial noise
    assert abs(statistics.mean(p_err) - statistics.mean(s_err)) <= 3 * spread, (p_err, s_err)
    for r, c in zip(packed, cfgs):
        assert r["trial_id"] == c.trial_id and r["pack"]["size"] == 3
        assert len(r["history"]) == 3 and r["selection"] == "best_val"


def test_plan_packs_groups_seeds_only():
    a = [TrialConfig("lenet", d1=4, seed=s) for s in range(5)]
    b = [TrialConfig("lenet", d1=8, seed=s) for s in range(2)]
    plain = TrialConfig("lenet", d1=4, seed=9, impl="plain")
    packs = plan_packs(a + b + [plain], 3)
    assert [len(p) for p in packs] == [3, 2, 2, 1]
    assert packs[3] == [plain]
    assert all(len({c.d1 for c in p}) == 1 for p in packs)
    with pytest.raises(ValueError, match="pack must be a positive integer"):
        plan_packs(a, 0)


def test_packs_only_where_measured_faster():
    """run_packed_sweep's default: packs only where presets.packing_gain > 1 (LeNet up to the
    widest measured width with a gain; interpolated in log d1), everything else alone."""
    from shallowkern.sweep.presets import packing_gain

    table = {4: 1.4, 8: 1.2, 16: 0.9, 32: 1.03}  # 1.03: below PACK_MIN_GAIN
    lenet = lambda d1: TrialConfig("lenet", d1=d1)  # noqa: E731
    assert packing_gain(lenet(2), table) == 1.4 and packing_gain(lenet(8), table) == 1.2
    assert 1.2 < packing_gain(lenet(6), table) < 1.4
    assert packing_gain(lenet(16), table) == 1.0 and packing_gain(lenet(64), table) == 1.0
    assert packing_gain(lenet(32), table) == 1.0
    assert packing_gain(lenet(14), table) == 1.0  # interpolated below 1: not packed
    assert packing_gain(TrialConfig("vgg16", width=0.125), table) == 1.0
    cfgs = [TrialConfig("lenet", d1=d, seed=s) for d in (4, 64) for s in range(3)]
    cfgs += [TrialConfig("vgg16", width=0.0625, seed=s) for s in range(2)]
    helps = lambda c: packing_gain(c, table) > 1.0  # noqa: E731
    assert [len(p) for p in plan_packs(cfgs, 4, helps)] == [3, 1, 1, 1, 1, 1]
    assert [len(p) for p in plan_packs(cfgs, 4)] == [3, 3, 2]


def test_run_pack_refuses_mixed_trials():
    with pytest.raises(ValueError, match="differ only in seed"):
        run_pack([TrialConfig("lenet", d1=4), TrialConfig("lenet", d1=8)])


def test_packednet_rejects_unpackable_models():
    with pytest.raises(ValueError, match="features"):
        PackedNet([torch.nn.Linear(2, 2)])
    with pytest.raises(ValueError, match="different shapes"):
        PackedNet([build_model(TrialConfig("lenet", d1=2)), build_model(TrialConfig("lenet",
                                                                                   d1=3))])
    with pytest.raises(ValueError, match="x must be"):
        PackedNet([build_model(TrialConfig("lenet", d1=2))] * 2)(torch.randn(3, 1, 3, 32, 32))


def test_packed_sweep_is_resumable(tmp_path):
    over = {"epochs": 1, "train_subset": 200, "val_size": 100, "batch_size": 50}
    cfgs = [TrialConfig("lenet", d1=2, dataset="synthetic", recipe="quick", overrides=over,
                        seed=s) for s in range(3)]
    res = tmp_path / "r.jsonl"
    first = run_packed_sweep(cfgs[:2], res, pack=4, progress=False)
    assert first.ok and sorted(first.completed) == sorted(c.trial_id for c in cfgs[:2])
    again = run_packed_sweep(cfgs, res, pack=4, progress=False)
    assert again.skipped == 2 and again.completed == [cfgs[2].trial_id]
    recs = load_results(res)
    assert len(recs.records) == 3
    sizes = {r["trial_id"]: r.get("pack", {}).get("size", 1) for r in recs.records}
    assert [sizes[c.trial_id] for c in cfgs] == [2, 2, 1]  # a lone trial runs as run_trial
