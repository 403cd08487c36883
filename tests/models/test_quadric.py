"""Quadric MLPs: the comparison's models have the documented sizes, build through the family
registry with matching cost accounting, and learn."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from shallowkern.models import get_family
from shallowkern.models.quadric import QuadricMLP, param_count, quadric_mnist_models

EXPECTED = {"linear_784-128-10": 101_770, "quadric_diag_784-16-10": 25_434,
            "quadric_lowrank1_784-11-10": 26_223, "quadric_full_784-p27-10": 25_255}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_comparison_models_sizes_and_shapes(name):
    m = quadric_mnist_models()[name]()
    assert param_count(m) == EXPECTED[name]
    assert m(torch.randn(3, 1, 28, 28)).shape == (3, 10)


@pytest.mark.parametrize("params", [dict(hidden=16), dict(hidden=0, form="full", project=27),
                                    dict(hidden=11, form="lowrank", rank=1)])
def test_family_build_and_cost(params):
    fam = get_family("quadric_mlp")
    p = {**dict(hidden=16, form="diagonal", rank=1, project=0), **params}
    m = fam.build(p, in_channels=1, input_size=28, num_classes=10)
    assert fam.cost(p, (1, 28, 28))["params"] == param_count(m)


def test_quadric_mlp_learns_a_quadratic_boundary():
    """Points inside vs outside a circle: one diagonal quadric neuron separates them exactly."""
    torch.manual_seed(0)
    x = torch.randn(512, 2)
    y = (x.square().sum(1) < 1.0).long()
    m = QuadricMLP([2, 2])
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    for _ in range(300):
        loss = F.cross_entropy(m(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert (m(x).argmax(1) == y).float().mean() > 0.95


def test_bad_widths():
    with pytest.raises(ValueError, match="widths"):
        QuadricMLP([784])
