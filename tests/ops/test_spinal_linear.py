"""SpinalLinear: module, functional and registered ops against an independent eager implementation.

The oracle here is written the way the public SpinalNet scripts write the head: one nn.Linear per
layer on the *concatenated* weight [W_i^x | W_i^h], torch.cat of the inputs, BatchNorm1d with
running statistics and F.relu & co. It shares no code with shallowkern.ops.spinal_linear.
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

import shallowkern
from shallowkern import SpinalLinear
from shallowkern.ops import spinal_linear as sl
from shallowkern.testing import assert_close

ACTS = {"relu": F.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid, "identity": lambda t: t}


def eager_cat(m: SpinalLinear, x: torch.Tensor) -> torch.Tensor:
    """Independent eval-mode SpinalNet head: concatenated weights and inputs, explicit BN."""
    S, L = m.splits, m.num_layers
    F_ = x.shape[1]
    # split rule written out: F = S*q + r, the first r splits get q + 1 columns
    q, r = divmod(F_, S)
    bounds, start = [], 0
    for s in range(S):
        n = q + (1 if s < r else 0)
        bounds.append((start, start + n))
        start += n
    hs = []
    for i in range(L):
        a, b = bounds[i % S]
        inp = x[:, a:b] if i == 0 else torch.cat([x[:, a:b], hs[-1]], dim=1)
        w = m.weight_x[i] if i == 0 else torch.cat([m.weight_x[i], m.weight_h[i - 1]], dim=1)
        z = inp @ w.t()
        if len(m.bias):
            z = z + m.bias[i]
        if m.norms is not None:
            n = m.norms[i]
            z = (z - n.running_mean) / torch.sqrt(n.running_var + n.eps) * n.weight + n.bias
        hs.append(ACTS[m.activation](z))
    y = torch.cat(hs, dim=1) @ m.out_weight.t()
    return y + m.out_bias if m.out_bias is not None else y


def make(F_=10, O=3, W=4, L=4, S=2, act="relu", bn=False, dropout=0.0, bias=True,
         dtype=torch.float64, seed=0) -> SpinalLinear:
    torch.manual_seed(seed)
    m = SpinalLinear(F_, O, layer_width=W, num_layers=L, splits=S, activation=act, batch_norm=bn,
                     dropout=dropout, bias=bias, dtype=dtype)
    if bn:  # non-trivial running statistics and affine parameters
        with torch.no_grad():
            for n in m.norms:
                n.running_mean.uniform_(-0.5, 0.5)
                n.running_var.uniform_(0.5, 2.0)
                n.weight.uniform_(0.5, 1.5)
                n.bias.uniform_(-0.2, 0.2)
    return m.eval()


CONFIGS = [
    dict(),
    dict(F_=11, S=2),  # odd in_features
    dict(F_=7, S=3, L=5),  # S does not divide F, more layers than splits
    dict(F_=5, S=1, L=1),  # a single layer
    dict(F_=9, W=1, L=3),  # layer_width 1
    dict(act="tanh", bn=True),
    dict(act="sigmoid", bias=False, bn=True, F_=13, S=4, L=6),
    dict(act="identity", dropout=0.5, bn=True),  # dropout is off in eval
    dict(bias=False),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "default")
@pytest.mark.parametrize("B", [0, 1, 5])
def test_eval_matches_eager_cat(cfg, B):
    m = make(**cfg)
    x = torch.randn(B, m.in_features, dtype=torch.float64)
    with torch.no_grad():
        y = m(x)
        ref = eager_cat(m, x)
    assert y.shape == (B, m.out_features)
    assert_close(y, ref, dtype=torch.float64)


@pytest.mark.parametrize("cfg", [dict(), dict(F_=11, S=3, L=5, act="tanh"), dict(bias=False, W=1)])
def test_training_without_bn_matches_and_gradients(cfg):
    m = make(**cfg).train()
    x = torch.randn(6, m.in_features, dtype=torch.float64, requires_grad=True)
    y = m(x)
    ref = eager_cat(m, x)
    assert_close(y, ref)
    g = torch.randn_like(y)
    params = [x, *m.parameters()]
    got = torch.autograd.grad(y, params, g)
    want = torch.autograd.grad(ref, params, g)
    for p, a, b in zip(["x", *dict(m.named_parameters())], got, want):
        assert_close(a, b, msg=p)


def test_training_with_bn_uses_batch_statistics():
    m = make(bn=True).train()
    x = torch.randn(8, m.in_features, dtype=torch.float64)
    before = m.norms[0].running_mean.clone()
    y = m(x)
    # independent: BN with batch statistics == eval BN whose running stats are the batch stats
    S = 2
    xa, xb = x[:, :5], x[:, 5:]
    hs = []
    for i in range(4):
        xs = (xa, xb)[i % S]
        inp = xs if i == 0 else torch.cat([xs, hs[-1]], 1)
        w = m.weight_x[i] if i == 0 else torch.cat([m.weight_x[i], m.weight_h[i - 1]], 1)
        z = inp @ w.t() + m.bias[i]
        n = m.norms[i]
        z = (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + n.eps) * n.weight + n.bias
        hs.append(F.relu(z))
    ref = torch.cat(hs, 1) @ m.out_weight.t() + m.out_bias
    assert_close(y, ref)
    assert not torch.equal(before, m.norms[0].running_mean)  # running stats were updated


def test_dropout_in_training_is_random_and_scaled():
    m = make(dropout=0.5, act="identity").train()
    x = torch.randn(4, m.in_features, dtype=torch.float64)
    torch.manual_seed(1)
    a = m(x)
    torch.manual_seed(2)
    b = m(x)
    assert not torch.allclose(a, b)
    torch.manual_seed(1)
    assert torch.equal(a, m(x))


@pytest.mark.parametrize("cfg", [dict(), dict(F_=7, S=3, L=5, act="sigmoid"), dict(act="tanh", bias=False)])
def test_gradcheck_functional(cfg):
    m = make(**cfg)
    x = torch.randn(3, m.in_features, dtype=torch.float64, requires_grad=True)
    wx = [w.detach().clone().requires_grad_() for w in m.weight_x]
    wh = [w.detach().clone().requires_grad_() for w in m.weight_h]
    b = [w.detach().clone().requires_grad_() for w in m.bias]
    wo = m.out_weight.detach().clone().requires_grad_()
    bo = None if m.out_bias is None else m.out_bias.detach().clone().requires_grad_()
    L = len(wx)

    def f(x, *flat):
        wx_, wh_, b_ = flat[:L], flat[L:2 * L - 1], flat[2 * L - 1:2 * L - 1 + len(b)]
        rest = flat[2 * L - 1 + len(b):]
        return sl.spinal_linear(x, list(wx_), list(wh_), list(b_) or None, rest[0],
                                rest[1] if len(rest) > 1 else None, splits=m.splits,
                                activation=m.activation)

    inputs = (x, *wx, *wh, *b, wo) + ((bo,) if bo is not None else ())
    assert torch.autograd.gradcheck(f, inputs)


def test_bn_folding_gradients_reach_bn_parameters():
    m = make(bn=True)  # eval: folded path, but the graph keeps the BN affine parameters
    x = torch.randn(3, m.in_features, dtype=torch.float64)
    m(x).sum().backward()
    assert m.norms[0].weight.grad is not None and m.norms[0].weight.grad.abs().sum() > 0


def test_fold_cache_tracks_updates():
    m = make(bn=True)
    x = torch.randn(3, m.in_features, dtype=torch.float64)
    with torch.no_grad():
        y1 = m(x)
        m.norms[1].running_var.mul_(3.0)
        m.weight_x[0].add_(0.1)
        y2 = m(x)
    assert not torch.allclose(y1, y2)
    assert_close(y2, eager_cat(m, x))


def test_parameters_are_separate_and_state_dict_keys():
    m = make(F_=10, W=4, L=3)
    keys = set(m.state_dict())
    assert {"weight_x.0", "weight_x.2", "weight_h.0", "weight_h.1", "bias.2", "out_weight",
            "out_bias"} <= keys
    assert m.weight_x[1].shape == (4, 5) and m.weight_h[0].shape == (4, 4)
    assert m.out_weight.shape == (3, 12)
    assert "layer_width=4" in repr(m)


def test_split_rule():
    assert sl.split_sizes(11, 2) == [6, 5]
    assert sl.split_sizes(7, 3) == [3, 2, 2]
    assert sl.split_offsets(7, 3) == [0, 3, 5, 7]


def test_float32_module():
    m = make(dtype=torch.float32, F_=33, W=8)
    x = torch.randn(7, 33)
    with torch.no_grad():
        y = m(x)
        ref = eager_cat(m.double(), x.double())
    assert_close(y, ref, dtype=torch.float32, reduction=33)


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(in_features=0), ValueError, "in_features"),
    (dict(out_features=-1), ValueError, "out_features"),
    (dict(layer_width=0), ValueError, "layer_width"),
    (dict(num_layers=0), ValueError, "num_layers"),
    (dict(splits=0), ValueError, "splits"),
    (dict(splits=11), ValueError, "splits"),
    (dict(activation="gelu"), ValueError, "activation"),
    (dict(dropout=1.0), ValueError, "dropout"),
    (dict(layer_width=2.5), ValueError, "layer_width"),
])
def test_bad_config(kwargs, exc, match):
    args = dict(in_features=10, out_features=3, layer_width=4)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        SpinalLinear(args.pop("in_features"), args.pop("out_features"), **args)


def _fargs(m, x):
    return [x, list(m.weight_x), list(m.weight_h), list(m.bias), m.out_weight, m.out_bias]


@pytest.mark.parametrize("mutate,exc,match", [
    (lambda a: a.__setitem__(0, a[0][0]), ValueError, "input must be a 2-D"),
    (lambda a: a.__setitem__(0, a[0].long()), TypeError, "input must be a floating"),
    (lambda a: a.__setitem__(0, a[0].float()), TypeError, "weight_x\\[0\\] must be torch.float32"),
    (lambda a: a.__setitem__(1, a[1][:1]), ValueError, "weight_h must hold"),
    (lambda a: a[1].__setitem__(1, a[1][1][:, :3]), ValueError, "weight_x\\[1\\] must have shape"),
    (lambda a: a[2].__setitem__(0, a[2][0][:2, :2]), ValueError, "weight_h\\[0\\]"),
    (lambda a: a.__setitem__(3, a[3][:2]), ValueError, "bias must hold"),
    (lambda a: a[3].__setitem__(0, a[3][0][:1]), ValueError, "bias\\[0\\] must have shape"),
    (lambda a: a.__setitem__(4, a[4][:, :5]), ValueError, "out_weight must have"),
    (lambda a: a.__setitem__(5, a[5][:1]), ValueError, "out_bias must have shape"),
    (lambda a: a.__setitem__(1, []), ValueError, "weight_x must hold"),
])
def test_bad_functional_input(mutate, exc, match):
    m = make()
    a = _fargs(m, torch.randn(2, 10, dtype=torch.float64))
    mutate(a)
    with pytest.raises(exc, match=match):
        sl.spinal_linear(*a, splits=2)


def test_bad_functional_splits_and_activation():
    m = make()
    a = _fargs(m, torch.randn(2, 10, dtype=torch.float64))
    with pytest.raises(ValueError, match="splits"):
        sl.spinal_linear(*a, splits=0)
    with pytest.raises(ValueError, match="activation"):
        sl.spinal_linear(*a, splits=2, activation="elu")


def test_module_bad_input_shape():
    m = make()
    with pytest.raises(ValueError, match="input must be \\(B, 10\\)"):
        m(torch.randn(2, 9, dtype=torch.float64))


def test_flops_formula():
    # F=10, S=2, W=4, L=4, O=3: sum F_s W = 4*5*4, (L-1) W^2 = 48, L W O = 48
    assert sl.flops(2, 10, 4, 4, 2, 3) == 2 * 2 * (80 + 48 + 48)


def test_public_export():
    assert shallowkern.SpinalLinear is SpinalLinear
    assert list(itertools.islice(sl.ACTIVATIONS, 1)) == ["relu"]
