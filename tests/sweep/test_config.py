"""Trial configs: stable, config-sensitive ids; validation; presets."""

from __future__ import annotations

import subprocess
import sys

import pytest

from shallowkern.sweep import TrialConfig, canonical_json, estimate, get_preset, trial_id

BASE = dict(family="lenet", d1=16, k=2.8, dataset="cifar10", recipe="quick", seed=0)


def test_trial_id_is_stable_across_processes_and_pinned():
    cfg = TrialConfig(**BASE)
    code = ("from shallowkern.sweep import TrialConfig; "
            f"print(TrialConfig(**{BASE!r}).trial_id)")
    other = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True,
                           text=True, check=True).stdout.strip()
    assert other == cfg.trial_id
    # Pinned: a change of the canonical form would orphan every existing results file.
    assert cfg.trial_id == "45875482065ecde7"
    assert len(cfg.trial_id) == 16 and int(cfg.trial_id, 16) >= 0


@pytest.mark.parametrize("change", [
    {"seed": 1}, {"d1": 32}, {"k": 2.0}, {"dataset": "mnist"}, {"recipe": "lab"},
    {"overrides": {"epochs": 2}}, {"train_subset": 500}, {"d2": 45, "k": None},
    {"impl": "plain"},
])
def test_trial_id_changes_with_every_field(change):
    assert TrialConfig(**{**BASE, **change}).trial_id != TrialConfig(**BASE).trial_id


def test_equivalent_spellings_share_an_id():
    a = TrialConfig(**BASE)
    assert TrialConfig(**{**BASE, "k": None}).trial_id == a.trial_id  # default k is 2.8
    assert TrialConfig(**{**BASE, "d1": 16.0}).trial_id == a.trial_id
    assert TrialConfig(**{**BASE, "dataset": "CIFAR-10"}).trial_id == a.trial_id
    assert trial_id(a.to_dict()) == a.trial_id
    assert TrialConfig.from_dict(a.to_dict()) == a
    vgg = TrialConfig("vgg16", width=1)
    assert vgg.trial_id == TrialConfig("vgg16", width=1.0).trial_id
    # impl: the default stays out of the canonical form (ids from before it existed hold)
    assert "impl" not in a.to_dict()
    assert TrialConfig(**{**BASE, "impl": "shallowkern"}).trial_id == a.trial_id
    plain = TrialConfig(**{**BASE, "impl": "plain"})
    assert plain.to_dict()["impl"] == "plain" and TrialConfig.from_dict(plain.to_dict()) == plain
    assert plain.label().endswith(" plain")
    assert TrialConfig(**{**BASE, "dataset": "Synthetic-50000"}).dataset == "synthetic-50000"


def test_canonical_json_sorts_and_rejects_nan():
    assert canonical_json({"b": 1, "a": [1.5]}) == '{"a":[1.5],"b":1}'
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})


@pytest.mark.parametrize("bad, match", [
    (dict(family="resnet", d1=4), "family"),
    (dict(family="lenet"), "d1"),
    (dict(family="lenet", d1=0), "d1"),
    (dict(family="lenet", d1=4.5), "d1"),
    (dict(family="lenet", d1=4, d2=8, k=2.0), "not both"),
    (dict(family="lenet", d1=4, k=-1.0), "k"),
    (dict(family="lenet", d1=4, width=1.0), "vgg16"),
    (dict(family="vgg16", width=0), "width"),
    (dict(family="vgg16", d1=4), "lenet"),
    (dict(family="lenet", d1=4, seed=-1), "seed"),
    (dict(family="lenet", d1=4, recipe="nope"), "recipe"),
    (dict(family="lenet", d1=4, impl="eager"), "impl"),
    (dict(family="lenet", d1=4, dataset="synthetic-5"), "dataset"),
    (dict(family="lenet", d1=4, overrides={"epoch": 3}), "unknown recipe field"),
    (dict(family="lenet", d1=4, overrides={"lr": -1.0}), "lr"),
    (dict(family="lenet", d1=4, dataset="imagenet"), "unknown dataset"),
])
def test_bad_configs_name_the_problem(bad, match):
    with pytest.raises(ValueError, match=match):
        TrialConfig(**bad)


def test_presets_match_the_issue():
    quick = get_preset("quick")
    assert sorted({c.d1 for c in quick}) == [4, 8, 16, 32]
    assert {c.k for c in quick} == {2.8} and {c.seed for c in quick} == {0, 1}
    assert {c.resolved_recipe().train_subset for c in quick} == {10000}
    paper = get_preset("paper")
    lenet = [c for c in paper if c.family == "lenet"]
    assert min(c.d1 for c in lenet) == 6 and max(c.d1 for c in lenet) >= 768
    assert {c.k for c in lenet} == {2.0, 2.8, 4.0} and {c.seed for c in paper} == {0, 1, 2}
    assert any(c.family == "vgg16" for c in paper)
    assert len({c.trial_id for c in paper}) == len(paper)
    est = estimate(paper)
    assert est["trials"] == len(paper) and est["epochs"] == 100 * len(paper)
    with pytest.raises(ValueError, match="unknown preset"):
        get_preset("huge")
