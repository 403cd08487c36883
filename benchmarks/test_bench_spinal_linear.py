"""spinal_linear (the SpinalNet head) vs the eager chain PyTorch users write.

Providers, each its own benchmark on the same seeded inputs (benchmarks/common.py):
  shallowkern  shallowkern.ops.spinal_linear.spinal_linear: the whole chain as one registered op
               (C++ CPU kernel on CPU, Triton on CUDA)
  eager        the public SpinalNet scripts' composition: one nn.Linear per layer on
               torch.cat([x_split, h_prev]) (weights stored concatenated, as nn.Linear holds
               them), then torch.cat of the hidden layers and the output Linear
  compiled     torch.compile(eager) (default mode on CPU; max-autotune-no-cudagraphs on CUDA)
  compiled_ro  CUDA only: torch.compile(eager, mode="reduce-overhead") (CUDA graphs), the
               baseline of the issue's ">= 2x reduce-overhead" target
Passes: fwd (inference) and fwdbwd (forward + gradients of x and every weight: a training
step's head). Head: 4 layers, 2 splits, ReLU, 10 outputs, biases (the SpinalVGG-5 head's shape).
Grid (issue 10): B in {1, 32, 256, 4096} x in_features in {320, 512, 3200, 51200} x
layer_width in {8, 128, 512}. On CPU the cases whose forward exceeds 2^28 multiply-adds are
left out by default (each takes seconds per call on 2 cores); SHALLOWKERN_BENCH_SPINAL_FULL=1
runs all 48 (scripts/bench_spinal_grid.sh measures the grid in chunks).
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from benchmarks.common import OpBench, compiled
from shallowkern import SpinalLinear
from shallowkern.flops import spinal_linear_backward_flops, spinal_linear_flops
from shallowkern.ops.spinal_linear import spinal_linear, split_sizes

L, S, O = 4, 2, 10
_ALL = [dict(name=f"b{b}_f{f}_w{w}", batch=b, f=f, w=w)
        for f in (320, 512, 3200, 51200) for w in (8, 128, 512) for b in (1, 32, 256, 4096)]


def _macs(c) -> int:
    return spinal_linear_flops(c["batch"], c["f"], c["w"], L, S, O) // 2


_CPU = _ALL if os.environ.get("SHALLOWKERN_BENCH_SPINAL_FULL") == "1" else \
    [c for c in _ALL if _macs(c) <= 1 << 28]
SLICE = ["b32_f512_w128", "b256_f3200_w128", "b4096_f51200_w512", "b1_f320_w8"]


def _weights(case, dev, dtype):
    W, sizes = case["w"], split_sizes(case["f"], S)
    x = torch.randn(case["batch"], case["f"], device=dev, dtype=dtype, requires_grad=True)
    wx, wh, b = [], [], []
    for i in range(L):
        k = sizes[i % S] + (W if i else 0)
        bound = k ** -0.5
        wx.append(((torch.rand(W, sizes[i % S], device=dev, dtype=dtype) * 2 - 1) * bound))
        if i:
            wh.append(((torch.rand(W, W, device=dev, dtype=dtype) * 2 - 1) * bound))
        b.append(((torch.rand(W, device=dev, dtype=dtype) * 2 - 1) * bound))
    wo = (torch.rand(O, L * W, device=dev, dtype=dtype) * 2 - 1) * (L * W) ** -0.5
    bo = torch.zeros(O, device=dev, dtype=dtype)
    return x, wx, wh, b, wo, bo


def _sk(case, dev, dtype):
    x, wx, wh, b, wo, bo = _weights(case, dev, dtype)
    ts = [t.requires_grad_() for t in (*wx, *wh, *b, wo, bo)]

    def fn(x, *t):
        return spinal_linear(x, list(t[:L]), list(t[L:2 * L - 1]), list(t[2 * L - 1:3 * L - 1]),
                             t[3 * L - 1], t[3 * L], splits=S)

    return fn, (x, *ts)


def _eager_fn(case):
    sizes = split_sizes(case["f"], S)
    offs = [0, sizes[0], case["f"]]

    def fn(x, *t):  # t: L concatenated layer weights [W^x | W^h], L biases, W_o, b_o
        hs = []
        for i in range(L):
            xs = x[:, offs[i % S]:offs[i % S + 1]]
            inp = xs if i == 0 else torch.cat([xs, hs[-1]], dim=1)
            hs.append(F.relu(F.linear(inp, t[i], t[L + i])))
        return F.linear(torch.cat(hs, dim=1), t[2 * L], t[2 * L + 1])

    return fn


def _eager_inputs(case, dev, dtype):
    x, wx, wh, b, wo, bo = _weights(case, dev, dtype)
    cat = [wx[0]] + [torch.cat([wx[i], wh[i - 1]], 1) for i in range(1, L)]
    return (x, *[t.requires_grad_() for t in (*cat, *b, wo, bo)])


def _eager(case, dev, dtype):
    return _eager_fn(case), _eager_inputs(case, dev, dtype)


def _compiled(case, dev, dtype):
    return compiled(_eager_fn(case), dev), _eager_inputs(case, dev, dtype)


def _compiled_ro(case, dev, dtype):
    if dev.type != "cuda":
        pytest.skip("reduce-overhead (CUDA graphs) is a CUDA baseline")
    return torch.compile(_eager_fn(case), mode="reduce-overhead"), _eager_inputs(case, dev, dtype)


def flops(case, pass_):
    f = spinal_linear_flops(case["batch"], case["f"], case["w"], L, S, O)
    return f if pass_ == "fwd" else f + spinal_linear_backward_flops(
        case["batch"], case["f"], case["w"], L, S, O)


def nbytes(case, dtype, pass_):
    e = torch.empty((), dtype=dtype).element_size()
    B, F_, W = case["batch"], case["f"], case["w"]
    weights = F_ * W * L // S + (L - 1) * W * W + L * W * O
    act = B * (F_ + O)
    return e * (weights + act) * (1 if pass_ == "fwd" else 3)


BENCH = OpBench(
    op="spinal_linear",
    cases={"cuda": _ALL, "cpu": _CPU},
    providers={"shallowkern": _sk, "eager": _eager, "compiled": _compiled,
               "compiled_ro": _compiled_ro},
    flops=flops, nbytes=nbytes,
    passes=("fwd", "fwdbwd"),
    items=lambda case: case["batch"],
    slice_cases=SLICE,
)
test_spinal_linear = BENCH.test()


# ---------------------------------------------------------------------------------------------
# Training step of the SpinalVGG-5 head itself: BatchNorm1d (batch statistics, running-stat
# update) and dropout 0.5 on every layer input, as the public scripts train it. Providers:
# shallowkern = SpinalLinear in train mode (the fused training op); eager = the scripts' module
# (nn.Dropout, nn.Linear on torch.cat, nn.BatchNorm1d, ReLU per layer); compiled =
# torch.compile(eager). Pass fwdbwd: forward + gradients of x and every parameter.
# ---------------------------------------------------------------------------------------------
TRAIN_CASES = [dict(name=f"b{b}_f{f}_w128", batch=b, f=f, w=128)
               for f in (32, 256) for b in (32, 100, 256)]


class _EagerSpinalHead(torch.nn.Module):
    def __init__(self, f: int, w: int, p: float = 0.5):
        super().__init__()
        self.sizes = split_sizes(f, S)
        self.drop = torch.nn.Dropout(p)
        self.layers = torch.nn.ModuleList(
            [torch.nn.Linear(self.sizes[i % S] + (w if i else 0), w) for i in range(L)])
        self.norms = torch.nn.ModuleList([torch.nn.BatchNorm1d(w) for _ in range(L)])
        self.out = torch.nn.Linear(L * w, O)

    def forward(self, x):
        offs = [0, self.sizes[0], x.shape[1]]
        hs = []
        for i in range(L):
            xs = x[:, offs[i % S]:offs[i % S + 1]]
            inp = xs if i == 0 else torch.cat([xs, hs[-1]], dim=1)
            hs.append(torch.relu(self.norms[i](self.layers[i](self.drop(inp)))))
        return self.out(self.drop(torch.cat(hs, dim=1)))


def _train_provider(make_module, wrap=lambda m, dev: m):
    def build(case, dev, dtype):
        m = make_module(case).to(dev, dtype).train()
        x = torch.randn(case["batch"], case["f"], device=dev, dtype=dtype, requires_grad=True)
        params = [p for p in m.parameters()]
        run = wrap(m, dev)
        return (lambda x, *ps: run(x)), (x, *params)
    return build


BENCH_TRAIN = OpBench(
    op="spinal_linear_train",
    cases=TRAIN_CASES,
    providers={
        "shallowkern": _train_provider(lambda c: SpinalLinear(
            c["f"], O, layer_width=c["w"], num_layers=L, splits=S, batch_norm=True, dropout=0.5)),
        "eager": _train_provider(lambda c: _EagerSpinalHead(c["f"], c["w"])),
        "compiled": _train_provider(lambda c: _EagerSpinalHead(c["f"], c["w"]),
                                    wrap=lambda m, dev: compiled(m, dev)),
    },
    flops=lambda case, pass_: 3 * spinal_linear_flops(
        case["batch"], case["f"], case["w"], L, S, O),
    nbytes=lambda case, dtype, pass_: 3 * nbytes(case, dtype, "fwd"),
    passes=("fwdbwd",),
    items=lambda case: case["batch"],
    slice_cases=["b100_f256_w128"],
)
test_spinal_linear_train = BENCH_TRAIN.test()
