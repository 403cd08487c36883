"""Op spec of shallowkern::spinal_linear_train (the SpinalNet head in training: BatchNorm1d on
batch statistics and dropout fused into one op).

``op`` takes the tensors flattened, as tests/specs/spinal_linear.py does: (input, *weight_x,
*weight_h, *bias, out_weight, out_bias, *bn_weight, *bn_bias) with the counts in keyword
arguments. Dropout is random, so every sample with p > 0 passes an explicit ``dropout_mask`` (a
keyword argument: uint8, never differentiated) that the op and the reference both consume; the
others run p = 0. Running statistics are not part of the registered op (the functional lerps them
after the call); tests/ops/test_spinal_linear_train.py checks them against nn.BatchNorm1d.
"""

from __future__ import annotations

import torch

from shallowkern.flops import spinal_linear_flops
from shallowkern.nn.spinal_linear import SpinalLinear
from shallowkern.ops import spinal_linear as sl
from shallowkern.ops import spinal_train as st
from shallowkern.testing import BadInput, OpSpec, Sample
from tests.specs.spinal_linear import _unflatten as _head_unflatten
from tests.specs.spinal_linear import head_size, head_tensors


def _unflatten(flat, layers: int, nbias: int, has_out_bias: bool, naffine: int):
    """The inference head's tensors (tests/specs/spinal_linear.py), then the BatchNorm affines."""
    k = head_size(layers, nbias, has_out_bias)
    gam, bet = list(flat[k:k + naffine]), list(flat[k + naffine:k + 2 * naffine])
    return (*_head_unflatten(flat, layers, nbias, has_out_bias), gam, bet)


def _call(fn, flat, layers, nbias, has_out_bias, naffine, splits, activation, batch_norm, dropout,
          dropout_mask, eps):
    x, wx, wh, b, wo, bo, gam, bet = _unflatten(flat, layers, nbias, has_out_bias, naffine)
    return fn(x, wx, wh, b or None, wo, bo, splits=splits, activation=activation,
              batch_norm=batch_norm, bn_weight=gam or None, bn_bias=bet or None, eps=eps,
              dropout=dropout, dropout_mask=dropout_mask)


def op(*flat, **kw):
    return _call(st.spinal_linear_train, flat, **kw)


def reference(*flat, **kw):
    return _call(st.spinal_linear_train_reference, flat, **kw)


def _make(name, B, F, W, L, S, O, act="relu", bn=True, affine=True, p=0.0, bias=True,
          out_bias=True, dtype=torch.float32, seed=0, eps=1e-5) -> Sample:
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: (torch.randn(*s, generator=g) * 0.5).to(dtype)
    flat = head_tensors(r, B, F, W, L, S, O, bias, out_bias)
    naffine = L if bn and affine else 0
    flat += [(1 + r(W)) for _ in range(naffine)] + [r(W) for _ in range(naffine)]
    mask = None
    if p > 0:
        _, M = st.mask_layout(F, S, L, W)
        mask = (torch.rand(B, M, generator=g) >= p).to(torch.uint8)
    kw = dict(layers=L, nbias=L if bias else 0, has_out_bias=out_bias, naffine=naffine, splits=S,
              activation=act, batch_norm=bn, dropout=p, dropout_mask=mask, eps=eps)
    return Sample(tuple(flat), kw, name)


def samples(dtype: torch.dtype) -> list[Sample]:
    out = [
        _make("bn_dropout", 4, 6, 4, 4, 2, 3, p=0.3, dtype=dtype),
        # opcheck runs the first three: with and without BatchNorm
        _make("dropout_only", 3, 7, 5, 5, 3, 2, "sigmoid", bn=False, p=0.5, bias=False,
              dtype=dtype),
        _make("bn", 5, 11, 4, 4, 2, 3, "tanh", dtype=dtype),
        _make("bn_not_affine", 4, 9, 3, 3, 2, 4, affine=False, p=0.2, dtype=dtype),
        _make("plain", 3, 8, 6, 4, 2, 3, "identity", bn=False, out_bias=False, dtype=dtype),
        _make("width1", 3, 9, 1, 3, 2, 4, dtype=dtype),
        _make("batch2_one_layer", 2, 5, 3, 1, 1, 2, p=0.1, dtype=dtype),
        _make("unused_split", 3, 5, 3, 2, 4, 2, dtype=dtype),  # S > L: splits 2, 3 unread
        _make("rows_gt_block", 70, 13, 8, 6, 4, 5, p=0.25, eps=1e-3, dtype=dtype),
        _make("empty_batch", 0, 6, 4, 4, 2, 3, p=0.3, dtype=dtype),
    ]
    base = _make("noncontig", 4, 10, 4, 4, 2, 3, p=0.3, dtype=dtype)
    xt = torch.randn(10, 8, dtype=dtype).t()[::2]  # (4, 10), column-major with a row step
    out.append(Sample((xt,) + base.args[1:], base.kwargs, "noncontig"))
    return out


def reduction(sample: Sample) -> int:
    # BatchNorm divides by the batch's spread: a mean over B rows enters every output
    x, W = sample.args[0], sample.args[1].shape[0]
    return x.shape[1] + sample.kwargs["layers"] * W + x.shape[0]


def _registered_args(sample: Sample, backend: str):
    k = sample.kwargs
    x, wx, wh, b, wo, bo, gam, bet = _unflatten(sample.args, k["layers"], k["nbias"],
                                                k["has_out_bias"], k["naffine"])
    return (x, wx, wh, b, wo, bo, gam, bet, k["dropout_mask"], k["batch_norm"], float(k["eps"]),
            float(k["dropout"]), k["splits"], k["activation"], backend)


def to_registered(sample: Sample):
    backend = st.DISPATCH.choose(*_registered_args(sample, "native")).backend
    # the op's CPU kernel is the C++ one whatever the string; "reference" names the composition
    return torch.ops.shallowkern.spinal_linear_train.default, _registered_args(
        sample, "native" if backend == "reference" else backend)


def flops(sample: Sample) -> int:
    k = sample.kwargs
    x, wx, _, _, wo, _, _, _ = _unflatten(sample.args, k["layers"], k["nbias"], k["has_out_bias"],
                                          k["naffine"])
    return spinal_linear_flops(x.shape[0], x.shape[1], wx[0].shape[0], k["layers"], k["splits"],
                               wo.shape[0])


def bad_inputs() -> list[BadInput]:
    good = _make("bad", 3, 6, 4, 2, 2, 3, p=0.2)
    a, kw = list(good.args), good.kwargs
    # flat: x, wx0, wx1, wh0, b0, b1, wo, bo, gamma0, gamma1, beta0, beta1
    S = lambda args, **over: Sample(tuple(args), {**kw, **over})
    rep = lambda i, t: a[:i] + [t] + a[i + 1:]
    return [
        BadInput(S(rep(0, a[0][0])), ValueError, "input must be a 2-D"),
        BadInput(S(rep(0, a[0].long())), TypeError, "input must be a floating-point"),
        BadInput(S(rep(1, a[1].double())), TypeError, r"weight_x\[0\] must be torch.float32"),
        BadInput(S(rep(2, a[2][:, :2])), ValueError, r"weight_x\[1\] must have shape"),
        BadInput(S(rep(3, a[3][:3])), ValueError, r"weight_h\[0\] \(layer 1\) must have shape"),
        BadInput(S(rep(6, a[6][:, :5])), ValueError, "out_weight must have"),
        BadInput(S(a, splits=0), ValueError, "splits must be"),
        BadInput(S(a, activation="gelu"), ValueError, "activation must be one of"),
        BadInput(S(a, dropout=1.0), ValueError, "dropout must be a probability"),
        BadInput(S(a, dropout=-0.1), ValueError, "dropout must be a probability"),
        BadInput(S(a, eps=0.0), ValueError, "eps must be a finite number > 0"),
        BadInput(S([a[0][:1]] + a[1:], dropout_mask=kw["dropout_mask"][:1]), ValueError,
                 "Expected more than 1 value per channel when training"),
        BadInput(S(a[:-1], naffine=1), ValueError, "bn_weight must hold num_layers"),
    ]


def module():
    torch.manual_seed(0)
    return SpinalLinear(10, 3, layer_width=4, batch_norm=True).train(), torch.randn(5, 10)


def fuzz(rng) -> Sample:
    """A raw registered-op call; sometimes impossible (a wrong weight or mask shape): must raise."""
    B, F = rng.choice([0, 1, 2, 3, 5, 9]), rng.randint(1, 20)
    S = rng.randint(1, min(F, 4))
    L, W, O = rng.randint(1, 5), rng.randint(1, 9), rng.randint(1, 6)
    p = rng.choice([0.0, 0.0, 0.3, 0.7])
    s = _make("fuzz", B, F, W, L, S, O, rng.choice(sl.ACTIVATIONS), rng.random() < 0.7,
              rng.random() < 0.7, p, rng.random() < 0.7, rng.random() < 0.7,
              torch.float64 if rng.random() < 0.3 else torch.float32, seed=rng.randint(0, 1 << 30))
    args = list(_registered_args(s, "native"))
    roll = rng.random()
    if roll < 0.1:  # an impossible call
        args[1] = list(args[1])
        args[1][rng.randrange(L)] = torch.randn(W + 1, 2, dtype=args[0].dtype)
    elif roll < 0.2 and p > 0:
        args[8] = args[8][:, 1:]
    return Sample((torch.ops.shallowkern.spinal_linear_train.default, *args), {}, "fuzz")


def fuzz_reference(op, x, wx, wh, b, wo, bo, gam, bet, mask, batch_norm, eps, dropout, splits,
                   activation, backend):
    from tests.fuzz._protocol import Accepted, Rejected
    try:
        sl.check_args(x, wx, wh, b, wo, bo, splits, activation)
    except (ValueError, TypeError) as exc:
        return Rejected(r"(weight_x|weight_h|bias|out_weight|out_bias)\S* must", str(exc))
    L, W = len(wx), wx[0].shape[0]
    if batch_norm and x.shape[0] == 1:
        return Rejected("Expected more than 1 value per channel", "BatchNorm1d's batch of one")
    if dropout > 0 and mask is not None and tuple(mask.shape) != (x.shape[0],
                                                                  st.mask_layout(x.shape[1], splits,
                                                                                 L, W)[1]):
        return Rejected(r"dropout_mask", "a mask of the wrong shape")
    def ref(c):
        d = lambda ts: [c(t) for t in ts] or None
        return st.spinal_linear_train_reference(
            c(x), d(wx), d(wh), d(b), c(wo), None if bo is None else c(bo), splits=splits,
            activation=activation, batch_norm=batch_norm, bn_weight=d(gam), bn_bias=d(bet),
            eps=eps, dropout=dropout, dropout_mask=mask)

    want = ref(lambda t: t.double())

    def check(out):
        from shallowkern.testing import assert_close, tolerance
        red = x.shape[1] + L * W + x.shape[0]
        try:
            assert_close(out[0], want, x.dtype, red)
        except AssertionError:
            # BatchNorm on a tiny batch divides by a spread that can be near sqrt(eps), so fp32
            # rounding anywhere in the chain is magnified (torch's own composition too). Then the
            # bound is the problem's sensitivity: the fp64 reference's change under relative
            # input perturbations of fp32's unit roundoff (and torch's fp32 error), times 8.
            if not batch_norm or x.dtype == torch.float64:
                raise
            g = torch.Generator().manual_seed(0)
            jiggle = lambda t: t.double() * (1 + 2.0 ** -24 * torch.randn(t.shape, generator=g,
                                                                            dtype=torch.float64))
            spread = max([(ref(lambda t: t).double() - want).abs().max().item()] +
                         [(ref(jiggle) - want).abs().max().item() for _ in range(4)])
            ours = (out[0].double() - want).abs().max().item()
            assert ours <= 8 * spread + tolerance(x.dtype, red)[1], (
                f"error {ours:.3g} > 8x the fp32 sensitivity of the problem {spread:.3g}")

    return Accepted(check, "a valid training head")


SPEC = OpSpec(
    name="spinal_linear_train",
    op=op,
    reference=reference,
    samples=samples,
    to_registered=to_registered,
    bad_inputs=bad_inputs,
    flops=flops,
    grad_argnums=tuple(range(40)),  # every tensor position (the mask is a keyword, never here)
    backends=("reference",) + (("native",) if st.NATIVE_TRAIN else ()),
    reduction=reduction,
    module=module,
    fuzz=fuzz,
    fuzz_reference=fuzz_reference,
    skips={"gradgradcheck": "the C++ autograd kernel's backward is not differentiable (it raises "
                            "a clear error under create_graph=True); double backward of the "
                            "training head runs through spinal_linear_train_reference",
           "fx_trace": "SpinalLinear's training path branches on the batch size (BatchNorm1d's "
                       "batch-of-one error) and counts num_batches_tracked in Python, which "
                       "symbolic tracing cannot follow; torch.compile(fullgraph) of it is checked"},
)
