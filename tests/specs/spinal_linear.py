"""Op spec of shallowkern::spinal_linear (the SpinalNet head as one op).

The functional takes lists of per-layer tensors; the contract suite differentiates positional
tensors, so ``op`` here takes them flattened: (input, *weight_x, *weight_h, *bias, out_weight,
out_bias) with the counts in keyword arguments.
"""

from __future__ import annotations

import torch

from shallowkern.flops import spinal_linear_flops
from shallowkern.nn.spinal_linear import SpinalLinear
from shallowkern.ops import spinal_linear as sl
from shallowkern.testing import BadInput, OpSpec, Sample


def _unflatten(flat, layers: int, nbias: int, has_out_bias: bool):
    """(x, weight_x, weight_h, bias, out_weight, out_bias) from the flat order; what follows them
    (the training spec's BatchNorm parameters) starts at ``head_size(layers, nbias,
    has_out_bias)``."""
    L = layers
    x, wx, wh = flat[0], list(flat[1:1 + L]), list(flat[1 + L:2 * L])
    b = list(flat[2 * L:2 * L + nbias])
    wo = flat[2 * L + nbias]
    bo = flat[2 * L + nbias + 1] if has_out_bias else None
    return x, wx, wh, b, wo, bo


def head_size(layers: int, nbias: int, has_out_bias: bool) -> int:
    return 2 * layers + nbias + 1 + int(has_out_bias)


def head_tensors(r, B, F, W, L, S, O, bias=True, out_bias=True) -> list[torch.Tensor]:
    """A head's tensors in the flat order, drawn by ``r(*shape)``."""
    sizes = sl.split_sizes(F, S)
    return [r(B, F), *[r(W, sizes[i % S]) for i in range(L)], *[r(W, W) for _ in range(L - 1)],
            *([r(W) for _ in range(L)] if bias else []), r(O, L * W),
            *([r(O)] if out_bias else [])]


def op(*flat, layers, nbias, has_out_bias, splits, activation):
    x, wx, wh, b, wo, bo = _unflatten(flat, layers, nbias, has_out_bias)
    return sl.spinal_linear(x, wx, wh, b or None, wo, bo, splits=splits, activation=activation)


def reference(*flat, layers, nbias, has_out_bias, splits, activation):
    x, wx, wh, b, wo, bo = _unflatten(flat, layers, nbias, has_out_bias)
    return sl.spinal_linear_reference(x, wx, wh, b or None, wo, bo, splits=splits,
                                      activation=activation)


def _make(name, B, F, W, L, S, O, act="relu", bias=True, out_bias=True, dtype=torch.float32,
          seed=0) -> Sample:
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: (torch.randn(*s, generator=g) * 0.5).to(dtype)
    flat = head_tensors(r, B, F, W, L, S, O, bias, out_bias)
    kw = dict(layers=L, nbias=L if bias else 0, has_out_bias=out_bias, splits=S, activation=act)
    return Sample(tuple(flat), kw, name)


def samples(dtype: torch.dtype) -> list[Sample]:
    out = [
        _make("tiny", 3, 6, 4, 4, 2, 3, dtype=dtype),
        _make("odd_in_features", 5, 11, 4, 4, 2, 3, "tanh", dtype=dtype),
        _make("three_splits", 4, 7, 5, 5, 3, 2, "sigmoid", bias=False, dtype=dtype),
        _make("width1", 2, 9, 1, 3, 2, 4, dtype=dtype),
        _make("batch1", 1, 8, 6, 4, 2, 3, "identity", out_bias=False, dtype=dtype),
        _make("one_layer", 3, 5, 3, 1, 1, 2, dtype=dtype),
        _make("unused_split", 2, 5, 3, 2, 4, 2, dtype=dtype),  # S > L: splits 2, 3 unread
        _make("rows_gt_block", 70, 13, 8, 6, 4, 5, dtype=dtype),
        _make("empty_batch", 0, 6, 4, 4, 2, 3, dtype=dtype),
    ]
    base = _make("noncontig", 4, 10, 4, 4, 2, 3, dtype=dtype)
    xt = torch.randn(10, 8, dtype=dtype).t()[::2]  # (4, 10), column-major with a row step
    out.append(Sample((xt,) + base.args[1:], base.kwargs, "noncontig"))
    return out


def triton_samples(dtype: torch.dtype) -> list[Sample]:
    return [_make("tiny", 5, 11, 4, 4, 2, 3, dtype=dtype),
            _make("tanh_3splits", 6, 7, 18, 3, 3, 4, "tanh", dtype=dtype)]


def reduction(sample: Sample) -> int:
    x = sample.args[0]
    L = sample.kwargs["layers"]
    W = sample.args[1].shape[0]
    return x.shape[1] + L * W


def to_registered(sample: Sample):
    x, wx, wh, b, wo, bo = _unflatten(sample.args, sample.kwargs["layers"], sample.kwargs["nbias"],
                                      sample.kwargs["has_out_bias"])
    backend = sl.explain(x, wx, wh, b, wo, bo, splits=sample.kwargs["splits"],
                         activation=sample.kwargs["activation"]).backend
    return torch.ops.shallowkern.spinal_linear.default, (
        x, wx, wh, b, wo, bo, sample.kwargs["splits"], sample.kwargs["activation"],
        "native" if backend == "reference" else backend)


def flops(sample: Sample) -> int:
    x, W, O = sample.args[0], sample.args[1].shape[0], sample.args[-1 if not
                                                                   sample.kwargs["has_out_bias"] else -2].shape[0]
    k = sample.kwargs
    return spinal_linear_flops(x.shape[0], x.shape[1], W, k["layers"], k["splits"], O)


def bad_inputs() -> list[BadInput]:
    good = _make("bad", 2, 6, 4, 2, 2, 3)
    a, kw = list(good.args), good.kwargs
    # flat: x, wx0, wx1, wh0, b0, b1, wo, bo
    S = lambda args, **over: Sample(tuple(args), {**kw, **over})
    rep = lambda i, t: a[:i] + [t] + a[i + 1:]
    return [
        BadInput(S(rep(0, a[0][0])), ValueError, "input must be a 2-D"),
        BadInput(S(rep(0, a[0].long())), TypeError, "input must be a floating-point"),
        BadInput(S(rep(1, a[1].double())), TypeError, r"weight_x\[0\] must be torch.float32"),
        BadInput(S(rep(2, a[2][:, :2])), ValueError, r"weight_x\[1\] must have shape"),
        BadInput(S(rep(3, a[3][:3])), ValueError, r"weight_h\[0\] \(layer 1\) must have shape"),
        BadInput(S(rep(4, a[4][:1])), ValueError, r"bias\[0\] must have shape"),
        BadInput(S(rep(6, a[6][:, :5])), ValueError, "out_weight must have"),
        BadInput(S(rep(7, a[7][:2])), ValueError, "out_bias must have shape"),
        BadInput(S(a, splits=0), ValueError, "splits must be"),
        BadInput(S(a, splits=7), ValueError, "splits must be"),
        BadInput(S(a, activation="gelu"), ValueError, "activation must be one of"),
    ]


def module():
    torch.manual_seed(0)
    return SpinalLinear(10, 3, layer_width=4, batch_norm=True).eval(), torch.randn(5, 10)


def fuzz(rng) -> Sample:
    """A raw registered-op call; sometimes impossible (a wrong weight shape), which must raise."""
    B, F = rng.randint(0, 9), rng.randint(1, 20)
    S = rng.randint(1, min(F, 4))
    L, W, O = rng.randint(1, 5), rng.randint(1, 9), rng.randint(1, 6)
    s = _make("fuzz", B, F, W, L, S, O, rng.choice(sl.ACTIVATIONS), rng.random() < 0.7,
              rng.random() < 0.7, torch.float64 if rng.random() < 0.3 else torch.float32,
              seed=rng.randint(0, 1 << 30))
    x, wx, wh, b, wo, bo = _unflatten(s.args, L, s.kwargs["nbias"], s.kwargs["has_out_bias"])
    if rng.random() < 0.2:  # an impossible call
        wx[rng.randrange(L)] = torch.randn(W + 1, 2, dtype=x.dtype)
    backend = "native" if sl.NATIVE_CPU else "reference"
    return Sample((torch.ops.shallowkern.spinal_linear.default, x, wx, wh, b, wo, bo, S,
                   s.kwargs["activation"], backend), {}, "fuzz")


def fuzz_reference(op, x, wx, wh, b, wo, bo, splits, activation, backend):
    from tests.fuzz._protocol import Accepted, Rejected
    try:
        sl.check_args(x, wx, wh, b, wo, bo, splits, activation)
    except (ValueError, TypeError) as exc:
        return Rejected(r"(weight_x|weight_h|bias|out_weight|out_bias)\S* must", str(exc))
    W = wx[0].shape[0]
    want = sl.spinal_linear_reference(x.double(), [w.double() for w in wx], [w.double() for w in wh],
                                      [t.double() for t in b], wo.double(),
                                      None if bo is None else bo.double(), splits=splits,
                                      activation=activation)

    def check(out):
        from shallowkern.testing import assert_close
        assert_close(out, want, x.dtype, x.shape[1] + len(wx) * W)

    return Accepted(check, "a valid head")


SPEC = OpSpec(
    name="spinal_linear",
    op=op,
    reference=reference,
    samples=samples,
    to_registered=to_registered,
    bad_inputs=bad_inputs,
    flops=flops,
    grad_argnums=tuple(range(16)),  # every tensor position (the suite skips non-tensors)
    backends=("reference", "triton") + (("native", "vendor") if sl.NATIVE_CPU else ()),
    reduction=reduction,
    triton_samples=triton_samples,
    module=module,
    fuzz=fuzz,
    fuzz_reference=fuzz_reference,
)
