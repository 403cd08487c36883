"""The prune workflow end to end on a tiny VGG-11* and synthetic images."""

import pytest
import torch

from shallowkern import AFCCConv2d, AFCCLinear
from shallowkern.afcc.prune import prune
from shallowkern.models.vgg11 import VGG11Star


def _data(n, seed):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    # class-dependent colour so the features carry label information
    x = torch.randint(0, 60, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    x[torch.arange(n), y % 3] += 150
    return x, y


@pytest.mark.parametrize("method", ["afcc", "random_afcc"])
def test_prune_vgg11_tiny(method):
    torch.manual_seed(0)
    model = VGG11Star(width=1 / 16, num_classes=4)
    train, val = _data(96, 0), _data(64, 1)
    lines = []
    pruned, rep = prune(model, train, val, layers=model.conv_names()[-2:], method=method,
                        head_epochs=2, retrain_epochs=1, progress=lines.append)
    names = model.conv_names()
    assert isinstance(pruned.get_submodule(names[-1]), AFCCConv2d)
    assert isinstance(pruned.get_submodule(names[-2]), AFCCConv2d)
    assert not isinstance(model.get_submodule(names[-1]), AFCCConv2d)  # input untouched
    assert isinstance(pruned.classifier, AFCCLinear)
    assert len(rep.layers) == 2 and all(0 <= r.density <= 1 for r in rep.layers)
    for r in rep.layers:
        conv = pruned.get_submodule(r.name)
        assert abs(conv.density - r.density) < 1e-6
        assert (conv.weight[~conv.mask] == 0).all()
    assert 0 <= rep.accuracy_after <= 1 and lines and "read-out" in rep.table()
    assert pruned(torch.randn(2, 3, 32, 32)).shape == (2, 4)


def test_prune_bad_layers():
    model = VGG11Star(width=1 / 16, num_classes=4)
    train = _data(8, 0)
    with pytest.raises(ValueError, match="not a conv layer"):
        prune(model, train, train, layers=["classifier"])
    with pytest.raises(ValueError, match="reads the image"):
        prune(model, train, train, layers=["features.0"])
    with pytest.raises(ValueError, match="method"):
        prune(model, train, train, method="magnitude")


def test_prune_generalized_vgg16_bn():
    from shallowkern.models import GeneralizedVGG16

    torch.manual_seed(0)
    model = GeneralizedVGG16(width=1 / 16, num_classes=4, batch_norm=True)
    train, val = _data(64, 2), _data(48, 3)
    convs = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    pruned, rep = prune(model, train, val, layers=convs[-2:], head_epochs=1, retrain_epochs=0)
    assert isinstance(pruned.get_submodule(convs[-1]), AFCCConv2d)
    assert isinstance(pruned.classifier[0], AFCCLinear) and rep.readout_density is not None
    assert pruned(torch.randn(2, 3, 32, 32)).shape == (2, 4)
