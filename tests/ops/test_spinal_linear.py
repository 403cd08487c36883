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


# ---------------------------------------------------------------------------------------------
# registered ops: C++ CPU kernel, autograd, opcheck, compile; Triton kernels in the interpreter
# ---------------------------------------------------------------------------------------------
requires_native = pytest.mark.skipif(not sl.NATIVE_CPU, reason="shallowkern._C without the "
                                     "spinal_linear CPU kernel (not built or built before it)")

OP_CONFIGS = [  # (B, F, W, L, S, O, activation, bias, out_bias)
    (5, 11, 4, 4, 2, 3, "relu", True, True),
    (17, 7, 20, 5, 3, 10, "tanh", False, False),
    (1, 40, 1, 1, 1, 2, "sigmoid", True, True),
    (0, 9, 6, 3, 2, 4, "relu", True, True),
    (130, 13, 8, 6, 4, 5, "identity", True, False),  # > 64 rows: the row-block parallel path
    (3, 5, 3, 2, 4, 2, "relu", True, True),  # more splits than layers: splits 2, 3 unused
    # fp32 batches of 16-64 rows: the transposed chain (chain_t; B = 17 above too)
    (32, 161, 48, 3, 2, 10, "relu", True, True),
    (64, 33, 16, 3, 3, 1, "sigmoid", True, False),
    (16, 70, 37, 2, 1, 3, "identity", False, True),
    # ... large enough (>= 2^20 multiply-adds) to run as one parallel region with 2 threads
    (40, 1000, 50, 3, 3, 7, "tanh", False, False),
    (17, 2000, 33, 4, 2, 10, "sigmoid", True, True),
    (64, 600, 130, 2, 2, 13, "relu", True, False),
]


def op_args(B, F, W, L, S, O, act, bias, out_bias, dtype=torch.float64, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: (torch.randn(*s, generator=g, dtype=torch.float64) * 0.5).to(dtype).to(device)
    sizes = sl.split_sizes(F, S)
    return (r(B, F), [r(W, sizes[i % S]) for i in range(L)], [r(W, W) for _ in range(L - 1)],
            [r(W) for _ in range(L)] if bias else [], r(O, L * W), r(O) if out_bias else None, S, act)


def _flat(xs):
    out = []
    for e in xs:
        out += list(e) if isinstance(e, (list, tuple)) else [e]
    return out


@requires_native
@pytest.mark.parametrize("cfg", OP_CONFIGS, ids=lambda c: "-".join(map(str, c)))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_native_forward_backward_vs_reference(cfg, dtype):
    x, wx, wh, b, wo, bo, S, act = op_args(*cfg, dtype=dtype)
    y, H = torch.ops.shallowkern.spinal_linear_forward(x, wx, wh, b, wo, bo, S, act, "native")
    yr, Hr = sl.spinal_linear_forward_reference(*(t.double() if isinstance(t, torch.Tensor) else
                                                  [u.double() for u in t] if isinstance(t, list) else t
                                                  for t in (x, wx, wh, b, wo, bo, S, act)))
    F_, W = cfg[1], cfg[2]
    assert_close(y, yr, dtype=dtype, reduction=F_ + len(wx) * W)
    assert_close(H, Hr, dtype=dtype, reduction=F_ + W)
    gy = torch.randn(y.shape, dtype=dtype)
    got = torch.ops.shallowkern.spinal_linear_backward(gy, x, wx, wh, H, wo, S, act, "native")
    ref = sl.spinal_linear_backward_reference(gy.double(), x.double(), [w.double() for w in wx],
                                              [w.double() for w in wh], Hr, wo.double(), S, act)
    for i, (a, r) in enumerate(zip(_flat(got), _flat(ref))):
        assert_close(a, r, dtype=dtype, reduction=max(cfg[0], 1) * (F_ + len(wx) * W), msg=f"grad {i}")


@requires_native
@pytest.mark.parametrize("cfg", OP_CONFIGS, ids=lambda c: "-".join(map(str, c)))
@pytest.mark.parametrize("path", ["native", "vendor"])
def test_cpu_paths_forward_vs_reference(cfg, path):
    """Both C++ CPU paths (row blocks: "native"; BLAS chain: "vendor"), every activation, bias
    or not, empty batch, unused splits; fp32 against the fp64 reference."""
    x, wx, wh, b, wo, bo, S, act = op_args(*cfg, dtype=torch.float32)
    y, H = torch.ops.shallowkern.spinal_linear_forward(x, wx, wh, b, wo, bo, S, act, path)
    d = lambda t: [u.double() for u in t] if isinstance(t, list) else t.double() if \
        isinstance(t, torch.Tensor) else t
    yr, Hr = sl.spinal_linear_forward_reference(*(d(t) for t in (x, wx, wh, b, wo, bo, S, act)))
    F_, W = cfg[1], cfg[2]
    assert_close(y, yr, dtype=torch.float32, reduction=F_ + len(wx) * W)
    assert_close(H, Hr, dtype=torch.float32, reduction=F_ + W)
    assert_close(torch.ops.shallowkern.spinal_linear(x, wx, wh, b, wo, bo, S, act, path), yr,
                 dtype=torch.float32, reduction=F_ + len(wx) * W)


@requires_native
@pytest.mark.parametrize("cfg", OP_CONFIGS[-3:], ids=lambda c: "-".join(map(str, c)))
def test_transposed_chain_threads_bitwise(cfg):
    """The transposed chain with 2 threads (one parallel region: every layer's rows, the output
    rows and the transposes shared out) equals 1 thread bit for bit: each output element's sums
    run in the same order whoever computes them."""
    x, wx, wh, b, wo, bo, S, act = op_args(*cfg, dtype=torch.float32)
    old = torch.get_num_threads()
    outs = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            outs.append(torch.ops.shallowkern.spinal_linear_forward(x, wx, wh, b, wo, bo, S, act,
                                                                    "native"))
    finally:
        torch.set_num_threads(old)
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])


@requires_native
def test_transposed_chain_long_reduction_within_table():
    """F = 51,200 (25,600 columns per split) through the transposed chain, against fp64: the
    broadcast GEMM sums in blocks (one running sum per output erred 11x more than MKL here)."""
    cfg = (32, 51200, 16, 2, 2, 10, "relu", True, True)
    x, wx, wh, b, wo, bo, S, act = op_args(*cfg, dtype=torch.float32)
    y = torch.ops.shallowkern.spinal_linear(x, wx, wh, b, wo, bo, S, act, "native")
    d = lambda t: [u.double() for u in t] if isinstance(t, list) else t.double() if \
        isinstance(t, torch.Tensor) else t
    yr = sl.spinal_linear_reference(*(d(t) for t in (x, wx, wh, b, wo, bo)), splits=S,
                                    activation=act)
    assert_close(y, yr, dtype=torch.float32, reduction=cfg[1] + cfg[3] * cfg[2])


@requires_native
def test_transposed_chain_rule():
    from shallowkern import _ext
    ok = _ext._C.spinal_transposed_ok
    if not _ext._C.small_gemm_ok(1, 1, 16):
        pytest.skip("no AVX-512 here: the transposed chain is never chosen")
    assert ok(32, 128) and ok(16, 16) and ok(64, 512)
    assert not ok(15, 128) and not ok(65, 128) and not ok(32, 8) and not ok(1, 512)


@requires_native
def test_blas_chain_routing_is_visible():
    """Large per-layer products choose the BLAS chain (backend "vendor"), small ones the row
    blocks ("native"); explain says why, last_backend what ran, and gradients flow through it."""
    small = make(F_=10, W=8)
    ch = sl.explain(torch.randn(3, 10), list(small.weight_x), list(small.weight_h), list(small.bias),
                    small.out_weight, small.out_bias)
    assert ch.backend == "native"
    W, F_ = 64, 64
    big = make(F_=F_, W=W, dtype=torch.float32)
    B = sl.BLAS_CHAIN_MIN_MACS // (W * (F_ // 2 + W)) + 1
    x = torch.randn(B, F_, requires_grad=True)
    ch = sl.explain(x, list(big.weight_x), list(big.weight_h), list(big.bias), big.out_weight,
                    big.out_bias)
    assert ch.backend == "vendor" and "BLAS chain" in ch.reason, ch
    y = big(x)
    assert shallowkern.last_backend("spinal_linear").backend == "vendor"
    y.square().sum().backward()
    xd = x.detach().double().requires_grad_()
    yd = eager_cat(big.double(), xd)
    assert_close(y, yd, dtype=torch.float32, reduction=F_ + 4 * W)
    yd.square().sum().backward()
    assert_close(x.grad, xd.grad, dtype=torch.float32, reduction=B * (F_ + 4 * W))
    with shallowkern.use_backend("native"):
        big.float()(x)
    assert shallowkern.last_backend("spinal_linear").backend == "native"


@requires_native
@pytest.mark.parametrize("B,F_,W,dtype", [(1, 320, 8, torch.float32), (32, 3200, 8, torch.float32),
                                          (5, 11, 3, torch.float64), (2, 25600, 128, torch.float32),
                                          (600, 512, 128, torch.float32),
                                          # the transposed chain, its GEMMs split over threads
                                          (32, 1600, 128, torch.float32),
                                          (48, 3200, 512, torch.float32)])
def test_functional_fast_path_records_dispatch_choice(B, F_, W, dtype):
    """The functional's CPU fast path (plain eager calls skip DISPATCH) records exactly what
    DISPATCH would choose, row blocks or the BLAS chain, and computes the same result."""
    m = make(F_=F_, W=W, dtype=dtype)
    args = (list(m.weight_x), list(m.weight_h), list(m.bias), m.out_weight, m.out_bias)
    x = torch.randn(B, F_, dtype=dtype)
    with torch.no_grad():
        y = sl.spinal_linear(x, *args)
    assert shallowkern.last_backend("spinal_linear") == sl.DISPATCH.choose(x, *args, 2, "relu")
    assert_close(y, eager_cat(m, x), dtype=dtype, reduction=F_ + 4 * W)


@requires_native
def test_native_public_op_autograd_matches_reference():
    m = make(F_=11, S=3, L=5, act="tanh")
    x = torch.randn(7, 11, dtype=torch.float64, requires_grad=True)
    y = m(x)
    assert shallowkern.last_backend("spinal_linear").backend == "native"
    ref = eager_cat(m, x)
    assert_close(y, ref)
    params = [x, *m.parameters()]
    g = torch.randn_like(y)
    for a, b in zip(torch.autograd.grad(y, params, g), torch.autograd.grad(ref, params, g)):
        assert_close(a, b)


@requires_native
def test_native_gradcheck_through_op():
    x, wx, wh, b, wo, bo, S, act = op_args(3, 9, 4, 3, 2, 3, "sigmoid", True, True)
    ts = [t.requires_grad_() for t in [x, *wx, *wh, *b, wo, bo]]
    L = len(wx)

    def f(*t):
        return torch.ops.shallowkern.spinal_linear(t[0], list(t[1:1 + L]), list(t[1 + L:2 * L]),
                                                   list(t[2 * L:3 * L]), t[3 * L], t[3 * L + 1], S,
                                                   act, "native")

    assert torch.autograd.gradcheck(f, ts)


@requires_native
def test_native_noncontiguous_input_and_views():
    x, wx, wh, b, wo, bo, S, act = op_args(6, 10, 4, 4, 2, 3, "relu", True, True)
    big = torch.randn(6, 25, dtype=torch.float64)
    xv = big[:, 3:13]  # row stride 25
    y = torch.ops.shallowkern.spinal_linear(xv, wx, wh, b, wo, bo, S, act, "native")
    yr = sl.spinal_linear_forward_reference(xv, wx, wh, b, wo, bo, S, act)[0]
    assert_close(y, yr)
    xt = torch.randn(10, 6, dtype=torch.float64).t()  # column-major
    assert_close(torch.ops.shallowkern.spinal_linear(xt, wx, wh, b, wo, bo, S, act, "native"),
                 sl.spinal_linear_forward_reference(xt, wx, wh, b, wo, bo, S, act)[0])


@requires_native
def test_schemas_match_python_copy():
    for name, schema in sl.SCHEMAS.items():
        assert str(getattr(torch.ops.shallowkern, name).default._schema) == "shallowkern::" + schema


@requires_native
@pytest.mark.parametrize("cfg", [OP_CONFIGS[0], OP_CONFIGS[3]], ids=["b5", "b0"])
def test_opcheck(cfg):
    x, wx, wh, b, wo, bo, S, act = op_args(*cfg, dtype=torch.float32)
    for t in [x, *wx, *wh, *b, wo] + ([bo] if bo is not None else []):
        t.requires_grad_()
    torch.library.opcheck(torch.ops.shallowkern.spinal_linear.default,
                          (x, wx, wh, b, wo, bo, S, act, "native"))
    with torch.no_grad():
        args = (x, wx, wh, b, wo, bo, S, act, "native")
        torch.library.opcheck(torch.ops.shallowkern.spinal_linear_forward.default, args)
        y, H = torch.ops.shallowkern.spinal_linear_forward(*args)
        torch.library.opcheck(torch.ops.shallowkern.spinal_linear_backward.default,
                              (torch.randn_like(y), x, wx, wh, H, wo, S, act, "native"))


def test_compile_fullgraph_module():
    m = make(F_=10, dtype=torch.float32, bn=True)
    x = torch.randn(4, 10)
    with torch.no_grad():
        want = m(x)
    torch._dynamo.reset()
    got = torch.compile(m, fullgraph=True)(x)
    assert_close(got, want.double(), dtype=torch.float32, reduction=10)
    m.train()
    m.norms = None  # fused training path
    xg = x.clone().requires_grad_()
    torch.compile(m, fullgraph=True)(xg).sum().backward()
    assert xg.grad is not None and xg.grad.shape == x.shape


def test_flop_counter_counts_the_op():
    from torch.utils.flop_counter import FlopCounterMode
    m = make(F_=10, W=4, L=4, O=3, dtype=torch.float32)
    x = torch.randn(2, 10, requires_grad=True)
    with FlopCounterMode(display=False) as fc:
        m(x).sum().backward()
    fwd = sl.flops(2, 10, 4, 4, 2, 3)
    # forward + backward (2x); without the C++ kernel the fallback backward recomputes H (+1x)
    assert fc.get_total_flops() == (3 if sl.NATIVE_CPU else 4) * fwd


def test_forced_reference_backend_and_explain():
    m = make(F_=10, dtype=torch.float32)
    x = torch.randn(3, 10)
    with shallowkern.use_backend("reference"):
        y = m(x)
    assert shallowkern.last_backend("spinal_linear").backend == "reference"
    assert_close(y, eager_cat(m.double(), x.double()), dtype=torch.float32, reduction=10)
    m.float()
    ch = sl.explain(x, list(m.weight_x), list(m.weight_h), list(m.bias), m.out_weight, m.out_bias)
    assert ch.backend == ("native" if sl.NATIVE_CPU else "reference")
    h = m.half()
    assert sl.explain(x.half(), list(h.weight_x), list(h.weight_h), list(h.bias), h.out_weight,
                      h.out_bias).backend == "reference"  # no fp16 CPU kernel


@requires_native
def test_native_errors_name_the_argument():
    x, wx, wh, b, wo, bo, S, act = op_args(2, 10, 4, 4, 2, 3, "relu", True, True)
    with pytest.raises(RuntimeError, match=r"weight_x\[1\] must have shape"):
        torch.ops.shallowkern.spinal_linear(x, [wx[0], wx[1][:, :3], *wx[2:]], wh, b, wo, bo, S,
                                            act, "native")
    with pytest.raises(RuntimeError, match="activation"):
        torch.ops.shallowkern.spinal_linear(x, wx, wh, b, wo, bo, S, "gelu", "native")
    with pytest.raises(RuntimeError, match="out_weight"):
        torch.ops.shallowkern.spinal_linear(x, wx, wh, b, wo[:, :5], bo, S, act, "native")


# -- Triton (interpreter on CPU; tiny shapes) --------------------------------------------------
def _triton_or_skip():
    from shallowkern.testing import triton_interpreted
    if not torch.cuda.is_available() and not triton_interpreted():
        pytest.skip("Triton kernels need a GPU or TRITON_INTERPRET=1")
    from shallowkern.triton import spinal_linear as tk
    return tk, ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("cfg", [OP_CONFIGS[0], OP_CONFIGS[1], OP_CONFIGS[2], OP_CONFIGS[3],
                                 OP_CONFIGS[5]], ids=lambda c: "-".join(map(str, c)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_triton_forward_backward(cfg, dtype):
    tk, dev = _triton_or_skip()
    x, wx, wh, b, wo, bo, S, act = op_args(*cfg, dtype=dtype, device=dev)
    y, H = tk.spinal_forward(x, wx, wh, b, wo, bo, S, act)
    d = lambda t: t.double().cpu() if t is not None else None
    yr, Hr = sl.spinal_linear_forward_reference(d(x), [d(w) for w in wx], [d(w) for w in wh],
                                                [d(t) for t in b], d(wo), d(bo), S, act)
    tol = dtype if dtype != torch.float32 or dev == "cpu" else "tf32"
    F_, W = cfg[1], cfg[2]
    assert_close(y, yr, dtype=tol, reduction=F_ + len(wx) * W)
    assert_close(H, Hr, dtype=tol, reduction=F_ + W)
    gy = torch.randn(y.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    got = tk.spinal_backward(gy.to(dtype).to(dev), x, wx, wh, H, wo, S, act)
    ref = sl.spinal_linear_backward_reference(gy, d(x), [d(w) for w in wx], [d(w) for w in wh],
                                              d(H), d(wo), S, act)
    red = max(cfg[0], 1) * (F_ + len(wx) * W)
    for i, (a, r) in enumerate(zip(_flat(got), _flat(ref))):
        assert_close(a, r, dtype=tol, reduction=red, msg=f"grad {i}")


COMPILE_CHECK = r'''
import json, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from shallowkern.triton import spinal_linear as tk
tgt = GPUTarget("cuda", 90, 32)
rows = []
def comp(fn, sig, const, warps=4):
    k = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=const), target=tgt,
                       options=dict(num_warps=warps, num_stages=2))
    rows.append(dict(kernel=fn.__name__, shared=k.metadata.shared))
L, S, W, O = 4, 2, 128, 10
P = "*fp16"
fwd = {"X": P, "WX": (P,) * L, "WH": (P,) * (L - 1), "BIAS": (P,) * L, "WO": P, "BO": P, "H": P,
       "Y": P, "B": "i32", "stride_x": "i32"}
c = dict(OFFS=(0, 256), KS=(256, 256), L=L, S=S, W=W, O=O, HAS_BIAS=True, HAS_BO=True, ACT=0,
         BLOCK_B=32, BLOCK_N=64, BLOCK_K=64)
comp(tk._spinal_fwd_kernel, {**fwd, **{k: "constexpr" for k in c}}, c)
bwd = {"GY": P, "X": P, "WX": (P,) * L, "WH": (P,) * (L - 1), "WO": P, "H": P, "GZ": P, "GX": P,
       "B": "i32", "stride_x": "i32"}
c = dict(OFFS=(0, 256), KS=(256, 256), L=L, S=S, W=W, O=O, ACT=1, BLOCK_B=32, BLOCK_N=64, BLOCK_K=16)
comp(tk._spinal_bwd_rows_kernel, {**bwd, **{k: "constexpr" for k in c}}, c)
n = 2 * L
c = dict(LDA=(512,) * n, LDB=(512,) * n, MS=(128,) * n, NS=(128,) * n, TILES_N=(4,) * n,
         START=tuple(16 * i for i in range(n + 1)), NMAT=n, DROP=False, F32=False, BLOCK_M=32,
         BLOCK_N=32, BLOCK_K=32)
sig = {"A_PTRS": (P,) * n, "B_PTRS": (P,) * n, "M_OFFS": ("i32",) * n, "MASK": P, "ldm": "i32",
       "scale": "fp32", "C_PTRS": ("*fp32",) * n, "BATCH": "i32", **{k: "constexpr" for k in c}}
comp(tk._spinal_bwd_weights_kernel, sig, c)
print(json.dumps(rows))
'''


def test_triton_compiles_for_sm90():
    import json
    import os
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-c", COMPILE_CHECK], capture_output=True, text=True,
                       env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = json.loads(r.stdout.strip().splitlines()[-1])
    assert [row["kernel"] for row in rows] == ["_spinal_fwd_kernel", "_spinal_bwd_rows_kernel",
                                               "_spinal_bwd_weights_kernel"]
    assert all(row["shared"] <= 227 * 1024 for row in rows)
