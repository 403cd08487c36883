"""WideConv2d is an nn.Conv2d; fuse() rewrites conv -> [relu] -> pool runs without changing outputs."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import shallowkern
from shallowkern import WideConv2d, fuse, unfuse
from shallowkern.nn.fuse import UnfusedConv2d
from shallowkern.testing import assert_close


def test_is_a_conv2d_and_loads_its_checkpoint():
    conv = nn.Conv2d(3, 8, 5, padding=2)
    wide = WideConv2d(3, 8, 5, padding=2, activation="relu", pool=2)
    assert isinstance(wide, nn.Conv2d)
    assert list(wide.state_dict()) == list(conv.state_dict()) == ["weight", "bias"]
    wide.load_state_dict(conv.state_dict())
    x = torch.randn(2, 3, 16, 16)
    assert_close(wide(x), F.max_pool2d(torch.relu(conv(x)), 2).double(), torch.float32, 75)
    assert "activation='relu', pool=2" in repr(wide)


@pytest.mark.parametrize("kwargs", [
    dict(stride=2, padding=1),
    dict(dilation=2, padding=2),
    dict(groups=3, padding=1),
    dict(bias=False),
    dict(padding="same"),
    dict(padding="valid"),
    dict(padding=1, padding_mode="reflect"),
    dict(padding=2, padding_mode="circular"),
    dict(padding=1, padding_mode="replicate"),
])
@pytest.mark.parametrize("fused", [dict(), dict(activation="relu", pool=2)])
def test_matches_conv2d_in_every_configuration(kwargs, fused):
    torch.manual_seed(0)
    kernel = 4 if kwargs.get("padding") == "same" else 3  # even kernel: asymmetric 'same' padding
    conv = nn.Conv2d(6, 9, kernel, **kwargs).double()
    wide = WideConv2d(6, 9, kernel, **kwargs, **fused).double()
    wide.load_state_dict(conv.state_dict())
    x = torch.randn(2, 6, 12, 12, dtype=torch.float64)
    want = conv(x)
    if fused:
        want = F.max_pool2d(torch.relu(want), 2)
    assert_close(wide(x), want, torch.float64)


def test_unbatched_input_and_dtypes():
    wide = WideConv2d(3, 4, 3, activation="relu", pool=2)
    x = torch.randn(3, 10, 10)
    assert wide(x).shape == (4, 4, 4)
    for dtype in (torch.float64, torch.float16, torch.bfloat16):
        assert wide.to(dtype)(x.to(dtype)).dtype == dtype


def test_explain_and_last_backend():
    wide = WideConv2d(3, 4, 3, activation="relu", pool=2)
    x = torch.randn(1, 3, 8, 8)
    choice = wide.explain(x)
    assert choice.backend in ("native", "reference") and choice.reason
    wide(x)
    assert shallowkern.last_backend("wide_conv2d") == choice
    with shallowkern.use_backend("reference"):
        assert wide.explain(x).backend == "reference"


def test_compile_fullgraph_module():
    wide = WideConv2d(3, 4, 3, activation="relu", pool=2)
    x = torch.randn(2, 3, 10, 10, requires_grad=True)
    compiled = torch.compile(wide, fullgraph=True)
    out = compiled(x)
    assert_close(out, wide(x).double(), torch.float32, 27)
    out.sum().backward()
    assert x.grad is not None and wide.weight.grad is not None


def test_bad_arguments():
    with pytest.raises(ValueError, match="activation"):
        WideConv2d(3, 4, 3, activation="tanh")
    with pytest.raises(ValueError, match="pool"):
        WideConv2d(3, 4, 3, pool=3)
    with pytest.raises(ValueError, match="input channels"):
        WideConv2d(3, 4, 3)(torch.randn(1, 5, 8, 8))


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.act = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(2)
        self.inner = nn.Sequential(nn.Conv2d(8, 8, 3), nn.MaxPool2d(2, 2),  # conv -> pool
                                   nn.Sequential(nn.Conv2d(8, 4, 1), nn.ReLU(), nn.MaxPool2d(2)))
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.inner(self.pool(self.act(self.conv(x)))).flatten(1))


class NotAPattern(nn.Module):
    """Runs that must stay unfused: a pool of 3, a conv output used twice, a shared ReLU."""

    def __init__(self):
        super().__init__()
        self.c1, self.p3 = nn.Conv2d(3, 4, 3), nn.MaxPool2d(3)
        self.c2, self.c3 = nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1)
        self.relu, self.pool = nn.ReLU(), nn.MaxPool2d(2)

    def forward(self, x):
        y = self.p3(self.c1(x))
        z = self.c2(y)
        z = self.pool(self.relu(z)) + self.relu(z).amax()  # z has two users
        return self.pool(self.relu(self.c3(z)))


def test_fuse_nested_and_named_children():
    torch.manual_seed(0)
    model = Block().eval()
    x = torch.randn(2, 3, 16, 16)
    want, keys = model(x), list(model.state_dict())
    fuse(model)
    assert isinstance(model.conv, WideConv2d) and (model.conv.activation, model.conv.pool) == ("relu", 2)
    assert isinstance(model.inner[0], WideConv2d) and model.inner[0].activation is None
    assert isinstance(model.inner[2][0], WideConv2d)
    assert isinstance(model.act, nn.Identity) and isinstance(model.inner[2][2], nn.Identity)
    assert list(model.state_dict()) == keys
    assert_close(model(x), want.double(), torch.float32, 72)


def test_fuse_leaves_non_patterns_alone():
    torch.manual_seed(0)
    model = NotAPattern()
    x = torch.randn(1, 3, 14, 14)
    want = model(x)
    fuse(model)
    assert not any(isinstance(m, WideConv2d) for m in model.modules())
    assert_close(model(x), want.double(), torch.float32, 27)


def test_fuse_untraceable_module_warns_and_keeps_outputs():
    class Dynamic(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.pool = nn.Conv2d(3, 4, 3), nn.MaxPool2d(2)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent: fx cannot trace it
                x = -x
            return self.pool(self.conv(x))

    model = Dynamic()
    x = torch.randn(1, 3, 8, 8)
    want = model(x)
    with pytest.warns(UserWarning, match="unfused"):
        fuse(model)
    assert_close(model(x), want.double(), torch.float32, 27)


def test_fuse_keeps_gradients():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(6 * 3 * 3, 2))
    x = torch.randn(2, 3, 8, 8)
    model(x).sum().backward()
    want = model[0].weight.grad.clone()
    model.zero_grad()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fuse(model)
    model(x).sum().backward()
    assert_close(model[0].weight.grad, want.double(), torch.float32, 100)


def test_unfuse_is_plain_pytorch_with_shared_parameters():
    """unfuse turns every WideConv2d back into plain aten conv [-> relu -> max_pool2d] sharing
    the parameter tensors and state_dict keys; outputs and gradients stay the same."""
    from shallowkern.models import GeneralizedLeNet

    torch.manual_seed(0)
    model = GeneralizedLeNet(6, k=2.0)
    x = torch.randn(3, 3, 32, 32)
    want = model(x)
    weights = [p for p in model.parameters()]
    fused_state = {k: v.clone() for k, v in model.state_dict().items()}
    unfuse(model)
    assert not any(isinstance(m, WideConv2d) for m in model.modules())
    assert type(model.features[0]) is UnfusedConv2d and model.features[0].pool == 2
    assert all(a is b for a, b in zip(model.parameters(), weights))  # shared, not copied
    assert list(model.state_dict()) == list(fused_state)
    assert_close(model(x), want.double(), torch.float32, 150)
    model(x).sum().backward()
    assert model.features[0].weight.grad is not None
    # checkpoints load both ways
    fresh = GeneralizedLeNet(6, k=2.0)
    fresh.load_state_dict(model.state_dict())
    unfuse(GeneralizedLeNet(6, k=2.0)).load_state_dict(fused_state)
    # fuse(unfuse(m)) round-trips
    fuse(model)
    assert type(model.features[0]) is WideConv2d and model.features[0].pool == 2
    assert list(model.state_dict()) == list(fused_state)
    assert_close(model(x), want.double(), torch.float32, 150)

    bare = WideConv2d(3, 4, 3, stride=2, padding=1, bias=False)
    plain = unfuse(bare)
    assert type(plain) is nn.Conv2d and plain.weight is bare.weight and plain.bias is None
    assert plain.stride == (2, 2) and plain.padding == (1, 1)
    back = fuse(nn.Sequential(unfuse(WideConv2d(3, 4, 3, activation="relu", pool=2))))
    assert isinstance(back[0], WideConv2d) and (back[0].activation, back[0].pool) == ("relu", 2)


class ConvCalledTwice(nn.Module):
    """The conv is also called on its own: fusing it would change the second call."""

    def __init__(self):
        super().__init__()
        self.conv, self.relu, self.pool = nn.Conv2d(3, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)

    def forward(self, x):
        return self.pool(self.relu(self.conv(x))).sum() + self.conv(x).sum()


class SharedConv(nn.Module):
    """One conv registered under two names, called once under each."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 3, 3, padding=1)
        self.b = self.a
        self.relu, self.pool = nn.ReLU(), nn.MaxPool2d(2)
        self.relu2, self.pool2 = nn.ReLU(), nn.MaxPool2d(2)

    def forward(self, x):
        return self.pool(self.relu(self.a(x))).sum() + self.b(x).sum()


@pytest.mark.parametrize("cls", [ConvCalledTwice, SharedConv])
def test_fuse_refuses_a_conv_used_elsewhere(cls, caplog):
    torch.manual_seed(0)
    model = cls()
    x = torch.randn(2, 3, 8, 8)
    want = model(x)
    with caplog.at_level("DEBUG", logger="shallowkern.nn.fuse"):
        fuse(model)
    assert not any(isinstance(m, WideConv2d) for m in model.modules())
    assert "not fused" in caplog.text
    torch.testing.assert_close(model(x), want)


def test_fuse_rejects_non_modules():
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        fuse(None)
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        unfuse("conv")
