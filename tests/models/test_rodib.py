"""RoDiBVGG6 (models/rodib.py): both heads, the sweep family, FLOP/parameter accounting, and the
reproduction script's record and summary (on synthetic data: the real run is
scripts/repro_rodib.py)."""

from __future__ import annotations

import importlib.util
import json
import os
import types

import pytest
import torch

from shallowkern.models import get_family, parse_model_spec
from shallowkern.models.rodib import RoDiBVGG6, VGG6Backbone, forward_flops, param_count
from shallowkern.nn import RoDiBHead

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (3, 9, 11)])
@pytest.mark.parametrize("head", ["rodib", "standard"])
def test_forward_shapes(shape, head):
    torch.manual_seed(0)
    model = RoDiBVGG6(4, 4, 10, head, num_delays=4, in_channels=shape[0])
    out = model(torch.randn(2, *shape))
    assert out.shape == (2, 10)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    assert isinstance(model.head, RoDiBHead) == (head == "rodib")


def test_heads_differ_only_in_the_head_and_flops_count_the_delays():
    torch.manual_seed(0)
    r = RoDiBVGG6(4, 4, 10, "rodib", num_delays=4, in_channels=1)
    s = RoDiBVGG6(4, 4, 10, "standard", in_channels=1)
    assert param_count(r.backbone) == param_count(s.backbone)
    # rodib head: M*(8*4 + 4*1) weights + biases 4 + 1; standard: 8*4 + 4 + 4*10 + 10
    assert param_count(r.head) == 4 * (8 * 4 + 4) + 5
    assert param_count(s.head) == 8 * 4 + 4 + 4 * 10 + 10
    fr, fs = forward_flops(r, (1, 28, 28)), forward_flops(s, (1, 28, 28))
    # stage 1 sees 1 step (M*8*4 MACs); stage 2 sees 1 + 8 steps (9*M*4*1 MACs)
    head_r = 2 * (4 * 8 * 4 + 9 * 4 * 4)
    head_s = 2 * (8 * 4 + 4 * 10)
    assert fr - head_r == fs - head_s


def test_family_registry_builds_and_accounts():
    fam, params = parse_model_spec("rodib_vgg6:6,fc=8,head=rodib,delays=5")
    assert fam.name == "rodib_vgg6" and params["width"] == 6 and params["bn"] is True
    torch.manual_seed(0)
    model = fam.build_model(params, in_channels=1, input_size=28, num_classes=10)
    assert model.head.delays == (1, 2, 4, 8, 13)
    cost = get_family("rodib_vgg6").account(params, (1, 28, 28))
    assert cost["params"] == param_count(model)
    assert cost["macs"] * 2 == forward_flops(model, (1, 28, 28))
    _, nobn = parse_model_spec("rodib_vgg6:6,nobn")
    assert nobn["bn"] is False
    with pytest.raises(ValueError, match="head"):
        parse_model_spec("rodib_vgg6:6,head=wide")


def test_bad_arguments():
    with pytest.raises(ValueError, match="head must be"):
        RoDiBVGG6(4, 4, head="multi")
    with pytest.raises(ValueError, match="fc must be"):
        RoDiBVGG6(4, 0)
    with pytest.raises(ValueError, match="width must be"):
        VGG6Backbone(0)
    with pytest.raises(ValueError, match="num_labels=11 exceeds"):
        RoDiBVGG6(4, 4, 11, "rodib", num_delays=4)


def test_repro_script_records_and_summary(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location(
        "repro_rodib", os.path.join(ROOT, "scripts", "repro_rodib.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    g = torch.Generator().manual_seed(0)

    def fake_load(dataset, seed, train, val):
        def part(n):
            return torch.randn(n, 1, 12, 12, generator=g), torch.arange(n) % 10
        return part(train), part(val), part(30)

    monkeypatch.setattr(mod, "_load", fake_load)
    a = types.SimpleNamespace(width=2, delays=4, train=40, val=20, epochs=1, lr=1e-3, batch=16)
    for head in ("rodib", "standard"):
        for seed in (0, 1):
            rec = mod.run_one("mnist", head, 4, seed, a, str(tmp_path))
            assert 0 <= rec["test_acc"] <= 100 and rec["train_images"] == 40
    again = mod.run_one("mnist", "rodib", 4, 0, a, str(tmp_path))  # resumable: read back
    with open(tmp_path / "mnist__rodib_fc4__seed0.json") as f:
        assert json.load(f) == again
    table = mod.summary(str(tmp_path))
    assert "rodib M=4" in table and "standard" in table and "| 2 |" in table
