import math

import pytest
import torch
from torch import nn

from shallowkern import WideConv2d
from shallowkern.models import GeneralizedLeNet, GeneralizedVGG16, layer_report


def closed_form_macs(d1, d2):
    return 58_800 * d1 + 2_500 * d1 * d2 + 3_000 * d2 + 10_920


@pytest.mark.parametrize("d1,d2", [(6, 16), (1, 1), (64, 179), (127, 300)])
def test_lenet_macs_params_and_shape(d1, d2):
    model = GeneralizedLeNet(d1, d2)
    rows = model.layer_report()
    assert sum(r["macs"] for r in rows) == closed_form_macs(d1, d2)
    assert sum(r["params"] for r in rows) == sum(p.numel() for p in model.parameters())
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert all(isinstance(m, WideConv2d) for m in model.features)


def test_lenet_width_arguments():
    assert GeneralizedLeNet(10).d2 == 28                 # default k = 2.8: the conservation law
    assert GeneralizedLeNet(10, k=2.0).d2 == 20
    rows = GeneralizedLeNet(10).layer_report()
    assert [r["map"] for r in rows[:2]] == [(28, 28), (10, 10)]
    assert rows[0]["conservation"] == rows[1]["conservation"] == 280
    with pytest.raises(ValueError, match="d2 or k"):
        GeneralizedLeNet(4, d2=8, k=2.0)
    with pytest.raises(ValueError, match="k must be"):
        GeneralizedLeNet(4, k=-1.0)
    with pytest.raises(ValueError, match="d1 and d2"):
        GeneralizedLeNet(0)


def test_lenet_mnist_input_and_huge_width_on_meta():
    model = GeneralizedLeNet(4, in_channels=1, input_size=28)
    assert model(torch.randn(1, 1, 28, 28)).shape == (1, 10)
    with torch.device("meta"):
        big = GeneralizedLeNet(2048)
    rows = layer_report(big, (3, 32, 32))
    assert sum(r["macs"] for r in rows) == closed_form_macs(2048, big.d2)


@pytest.mark.parametrize("width", [0.125, 0.5])
def test_vgg16_shapes_and_macs(width):
    model = GeneralizedVGG16(width)
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    assert len(convs) == 13 and sum(1 for m in convs if m.pool == 2) == 5
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    rows = model.layer_report()
    maps = [32] * 2 + [16] * 2 + [8] * 3 + [4] * 3 + [2] * 3
    chans = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    chans = [max(1, round(c * width)) for c in chans]
    want = sum(m * m * c_out * c_in * 9 for m, c_out, c_in in zip(maps, chans, [3] + chans[:-1]))
    assert sum(r["macs"] for r in rows) == want + chans[-1] * 10
    assert rows[0]["conservation"] == math.sqrt(32 * 32) * chans[0]


def test_vgg16_batch_norm_variant():
    model = GeneralizedVGG16(0.125, batch_norm=True)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match="width"):
        GeneralizedVGG16(0)
