"""The model-family registry: built-in families, ids that predate it, and a new family added in
one place reaching configs, trials, model specs, profiles and sweeps."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from shallowkern.cli import main
from shallowkern.models import GeneralizedLeNet, layer_report
from shallowkern.models import registry as reg
from shallowkern.models.registry import Family, Param, get_family, parse_model_spec
from shallowkern.sweep import TrialConfig, build_model, estimate
from shallowkern.sweep.config import canonical_json


class TinyMLP(nn.Module):
    def __init__(self, hidden: int, depth: int, act: str, num_classes: int, in_features: int):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.ReLU() if act == "relu" else nn.Tanh()]
            width = hidden
        self.net = nn.Sequential(*layers, nn.Linear(width, num_classes))

    def forward(self, x):
        return self.net(x)


@pytest.fixture
def tiny_family():
    fam = Family(
        name="tiny_mlp", description="an MLP for the registry tests",
        params=(Param("hidden", int, minimum=1, help="hidden width"),
                Param("depth", int, default=1, minimum=1),
                Param("act", str, default="relu", choices=("relu", "tanh")),
                Param("scale", float, default=1.0, minimum=0),
                Param("dropout", bool, default=False)),
        build=lambda p, *, in_channels, input_size, num_classes: TinyMLP(
            p["hidden"], p["depth"], p["act"], num_classes, in_channels * input_size ** 2),
        width_param="hidden", flags={"tanh": ("act", "tanh")})
    reg.register_family(fam)
    yield fam
    reg._REGISTRY.pop("tiny_mlp", None)


def test_builtins_are_registered():
    assert {"lenet", "vgg16"} <= set(reg.families())
    assert get_family("lenet").width_param == "d1" and get_family("lenet").fit_group == "k"
    assert get_family("vgg16").x_key == "first_width"
    with pytest.raises(ValueError, match="unknown model family 'resnet'.*lenet"):
        get_family("resnet")


def test_canonical_form_of_the_old_families_is_unchanged():
    """Trial ids hash this dict: it must stay the pre-registry layout, padding included."""
    lenet = TrialConfig("lenet", d1=16, seed=3)
    assert lenet.to_dict() == {"family": "lenet", "d1": 16, "d2": None, "k": 2.8, "width": None,
                               "batch_norm": False, "dataset": "cifar10", "recipe": "lab",
                               "overrides": {}, "seed": 3, "train_subset": None}
    vgg = TrialConfig("vgg16", width=0.5, batch_norm=True, impl="plain")
    assert vgg.to_dict() == {"family": "vgg16", "d1": None, "d2": None, "k": None, "width": 0.5,
                             "batch_norm": True, "dataset": "cifar10", "recipe": "lab",
                             "overrides": {}, "seed": 0, "train_subset": None, "impl": "plain"}
    # An old record's config (neutral fields of the other family included) reads back.
    assert TrialConfig.from_dict(vgg.to_dict()) == vgg
    assert TrialConfig.from_dict(lenet.to_dict()).trial_id == lenet.trial_id
    assert vgg.d1 is None and lenet.width is None and lenet.d1 == 16


@pytest.mark.parametrize("spec, match", [
    ("lenet:d1=1.5", "lenet.d1 must be an integer, got 1.5"),
    ("lenet:16,stride=1.5", "unknown parameter 'stride' for lenet"),
    ("lenet:16,width=2", "width belongs to vgg16.*, not lenet"),
    ("lenet:16,k=-1", "lenet.k must be a number > 0"),
    ("lenet:16,k=nan", "lenet.k must be a finite number"),
    ("lenet:d1=4,d2=8,k=2", "not both"),
    ("lenet:16,32", "d1 is already given"),
    ("lenet:d1=4,d1=5", "given twice"),
    ("vgg16:0.5,bn,batch_norm=maybe", "given twice"),
    ("vgg16:width=0.5,batch_norm=maybe", "vgg16.batch_norm must be true or false"),
    ("lenet", "lenet.d1 is required"),
    ("", "empty model spec"),
])
def test_bad_specs_name_the_parameter(spec, match):
    with pytest.raises(ValueError, match=match):
        parse_model_spec(spec)


def test_specs():
    fam, p = parse_model_spec("lenet:16")
    assert fam.name == "lenet" and p == {"d1": 16, "d2": None, "k": 2.8}
    assert parse_model_spec("vgg16:0.5,bn")[1] == {"width": 0.5, "batch_norm": True}
    assert parse_model_spec("vgg16:width=1,batch_norm=false")[1] == {"width": 1.0,
                                                                      "batch_norm": False}


def test_lenet_cost_hook_matches_the_model():
    fam = get_family("lenet")
    for d1, k, size, c in ((4, 2.8, 32, 3), (7, 2.0, 28, 1), (16, None, 32, 3)):
        p = fam.resolve({"d1": d1, "k": k})
        with torch.device("meta"):
            model = GeneralizedLeNet(d1, k=p["k"], in_channels=c, input_size=size)
        rows = layer_report(model, (c, size, size))
        acct = fam.account(p, (c, size, size))
        assert acct["macs"] == sum(r["macs"] for r in rows)
        assert acct["params"] == sum(x.numel() for x in model.parameters())
    # Closed form: no model is built, so an absurd width costs nothing to account.
    assert fam.account({"d1": 100_000})["params"] > 10**11


def test_register_rejects_bad_families(tiny_family):
    ok = dict(name="x_fam", description="", build=lambda p, **kw: None, width_param="w",
              params=(Param("w", int),))
    with pytest.raises(ValueError, match="already registered"):
        reg.register_family(Family(**{**ok, "name": "tiny_mlp"}))
    with pytest.raises(ValueError, match="shadow TrialConfig fields"):
        reg.register_family(Family(**{**ok, "params": (Param("w", int), Param("seed", int))}))
    with pytest.raises(ValueError, match="width_param"):
        reg.register_family(Family(**{**ok, "width_param": "v"}))
    with pytest.raises(ValueError, match="lower-case"):
        reg.register_family(Family(**{**ok, "name": "Bad Name"}))
    with pytest.raises(ValueError, match="kind"):
        reg.register_family(Family(**{**ok, "params": (Param("w", list),)}))
    assert "x_fam" not in reg._REGISTRY


def test_a_new_family_is_added_in_one_place(tiny_family, capsys):
    cfg = TrialConfig("tiny_mlp", hidden=8, dataset="synthetic", seed=1)
    # defaults filled in; no legacy padding in the canonical form
    assert cfg.params == {"hidden": 8, "depth": 1, "act": "relu", "scale": 1.0, "dropout": False}
    assert "d1" not in cfg.to_dict() and cfg.to_dict()["hidden"] == 8
    assert TrialConfig("tiny_mlp", {"hidden": 8.0}, dataset="synthetic", seed=1).trial_id \
        == cfg.trial_id
    assert cfg.label() == "tiny_mlp hidden=8 depth=1 act=relu scale=1 seed=1"
    assert cfg.hidden == 8 and cfg.d1 is None
    model = build_model(cfg)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert tiny_family.info(model, cfg.params)["family"] == "tiny_mlp"
    acct = tiny_family.account(cfg.params)  # default hook: meta build + layer_report
    assert acct["macs"] == 3 * 32 * 32 * 8 + 8 * 10
    assert estimate([cfg])["per_family"] == {"tiny_mlp": 1}
    assert parse_model_spec("tiny_mlp:16,tanh")[1]["act"] == "tanh"
    with pytest.raises(ValueError, match="tiny_mlp.act must be one of"):
        TrialConfig("tiny_mlp", hidden=8, act="gelu")
    with pytest.raises(ValueError, match="d1 belongs to lenet, not tiny_mlp"):
        TrialConfig("tiny_mlp", hidden=8, d1=3)

    # The CLI knows it without an edit: profile, sweep grid (dry run), and its errors.
    assert main(["profile", "tiny_mlp:16,depth=2", "--device", "meta", "--json"]) == 0
    assert '"flops"' in capsys.readouterr().out
    assert main(["sweep", "--family", "tiny_mlp", "--grid", "hidden=4,8", "--grid",
                 "act=relu,tanh", "--seeds", "0", "1", "--dataset", "synthetic", "--recipe",
                 "quick", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "8 trials {'tiny_mlp': 8}" in out and "act=tanh" in out
    assert main(["sweep", "--family", "tiny_mlp", "--d1", "4", "--dry-run"]) == 2
    assert "--d1 is not a parameter of tiny_mlp" in capsys.readouterr().err
    assert main(["sweep", "--family", "tiny_mlp", "--dry-run"]) == 2
    assert "needs --grid hidden=" in capsys.readouterr().err


def test_ids_of_a_config_do_not_depend_on_spelling_or_order():
    a = TrialConfig("lenet", {"k": 2.8, "d1": 16})
    b = TrialConfig("lenet", d1=16.0)
    assert a == b and canonical_json(a.to_dict()) == canonical_json(b.to_dict())
