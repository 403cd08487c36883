"""VGG5, SpinalVGG5, spinal_head and their sweep families."""

from __future__ import annotations

import pytest
import torch

from shallowkern import SpinalLinear
from shallowkern.models import GeneralizedLeNet, get_family
from shallowkern.models.vgg5 import VGG5, SpinalVGG5, spinal_head


def test_vgg5_shapes_and_layers():
    m = VGG5(4)
    convs = [l for l in m.features if isinstance(l, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [4, 4, 8, 8, 16, 16, 16, 16, 16, 16]
    assert sum(isinstance(l, torch.nn.BatchNorm2d) for l in m.features) == 10
    assert sum(isinstance(l, torch.nn.MaxPool2d) for l in m.features) == 4
    assert m(torch.randn(3, 1, 28, 28)).shape == (3, 10)


def test_paper_width_head_sizes():
    m = SpinalVGG5(64)  # 256 features -> halves of 128, as in the scripts
    head = m.classifier
    assert isinstance(head, SpinalLinear)
    assert head.in_features == 256 and head.layer_width == 128
    assert [tuple(w.shape) for w in head.weight_x] == [(128, 128)] * 4
    assert tuple(head.out_weight.shape) == (10, 512)
    assert VGG5(64).classifier[1].in_features == 256


def test_spinal_vgg5_train_and_eval():
    torch.manual_seed(0)
    m = SpinalVGG5(4, spinal=8, num_classes=7)
    x = torch.randn(4, 1, 28, 28)
    m(x).sum().backward()
    assert m.classifier.weight_x[0].grad is not None
    m.eval()
    with torch.no_grad():
        assert m(x).shape == (4, 7)


def test_spinal_head_on_lenet():
    lenet = GeneralizedLeNet(4)
    model = spinal_head(lenet, 10, input_shape=(3, 32, 32), layer_width=8)
    assert model.body is lenet.features  # shared, not copied
    assert model.head.in_features == lenet.d2 * 25
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_spinal_head_bad_input():
    with pytest.raises(ValueError, match="input_shape"):
        spinal_head(VGG5(4), 10, input_shape=(1, 0, 28))
    with pytest.raises(ValueError, match="width"):
        VGG5(0)
    with pytest.raises(ValueError, match="input_size"):
        SpinalVGG5(4, input_size=8)


def test_families_registered():
    m = get_family("spinal_vgg5").build({"width": 4, "spinal": 8}, in_channels=1, input_size=28,
                                         num_classes=10)
    assert isinstance(m, SpinalVGG5) and m.classifier.layer_width == 8
    v = get_family("vgg5").build({"width": 4, "fc": 16}, in_channels=1, input_size=28, num_classes=10)
    assert isinstance(v, VGG5)
