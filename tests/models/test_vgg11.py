"""VGG-11* (the lab's 10-conv VGG): structure, width scaling, family registration."""

import pytest
import torch
from torch import nn

from shallowkern.models import get_family, layer_report
from shallowkern.models.vgg11 import VGG11Star


def test_structure_full_width():
    m = VGG11Star()
    convs = [c for c in m.features if isinstance(c, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 64, 128, 128, 256, 256, 256, 512, 512, 512]
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) for c in convs)
    assert sum(isinstance(c, nn.BatchNorm2d) for c in m.features) == 10
    assert sum(isinstance(c, nn.MaxPool2d) for c in m.features) == 4
    assert m.classifier.in_features == 2048 and m.classifier.bias is None
    assert len(m.conv_names()) == 10
    rows = layer_report(m, (3, 32, 32))
    assert rows[-2]["map"] == (4, 4) and rows[-1]["name"] == "classifier"


@pytest.mark.parametrize("width,last", [(0.125, 64), (0.25, 128), (0.5, 256)])
def test_width_scaling_forward(width, last):
    m = VGG11Star(width, num_classes=100)
    assert m.classifier.in_features == 4 * last and m.classifier.out_features == 100
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 100)


def test_family_and_bad_args():
    fam = get_family("vgg11")
    m = fam.build_model({"width": 0.25})
    assert isinstance(m, VGG11Star) and m.width == 0.25
    with pytest.raises(ValueError, match="width"):
        VGG11Star(0)
    with pytest.raises(ValueError, match="input_size"):
        VGG11Star(1.0, input_size=28)
