"""afcc_conv2d benchmarks: VGG-11* layer shapes, clustered AFCC masks at densities 0.5 .. 0.05.

Masks: each channel gets one of L labels (balanced, channels shuffled), pairs with equal labels
are kept, so the density is 1/L (L = 2, 4, 10, 20 -> 0.5, 0.25, 0.1, 0.05) and the mask is
block-diagonal after ordering by label. Providers (dense FLOPs in every row, so the ratios are
speedups):

* ``shallowkern``  the op (C++ block-sparse kernel on CPU, Triton on CUDA; ``routed`` says which)
* ``dense``        conv2d with the masked weight (oneDNN / cuDNN): what masking the dense
                   weights, as the lab's code does, costs
* ``bsr``          torch.sparse BSR weight (channel-ordered, 16 x 16 blocks: MKL takes square
                   ones) times the im2col of the input (F.unfold); its backward computes the
                   input gradient only (torch has no CPU BSR weight gradient), so its fwdbwd
                   rows flatter it
* ``grouped``      conv2d with groups = L on the label-ordered channels: the ideal for a
                   perfectly block-diagonal mask with equal groups (a lower bound, not a general
                   method)
"""

from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn.functional as F

from benchmarks.common import OpBench
from shallowkern.flops import conv2d_flops

A = importlib.import_module("shallowkern.ops.afcc_conv2d")

# VGG-11* (x1.0): conv8 256->512 and conv9/10 512->512 at 4x4; GeneralizedVGG16's block 5
# 512->512 at 2x2; conv5 128->256 at 8x8.
SHAPES = [("conv9_512x512_4x4", 512, 512, 4), ("vgg16_conv12_512x512_2x2", 512, 512, 2),
          ("conv8_256x512_4x4", 256, 512, 4), ("conv6_256x256_8x8", 256, 256, 8)]
LABELS = (2, 4, 10, 20)


def _cases(batch):
    return [dict(name=f"{s}_d{1 / lab:.2f}_n{batch}", n=batch, c=c, k=k, hw=hw, labels=lab)
            for s, c, k, hw in SHAPES for lab in LABELS]


CASES = {"cpu": _cases(32), "cuda": _cases(128)}


def _labels(n, labels, g):
    lab = torch.arange(n) * labels // n  # balanced
    return lab[torch.randperm(n, generator=g)]


def _inputs(case, dev, dtype):
    g = torch.Generator().manual_seed(0)
    lo, li = _labels(case["k"], case["labels"], g), _labels(case["c"], case["labels"], g)
    mask = (lo[:, None] == li[None, :]).to(dev)
    x = torch.randn(case["n"], case["c"], case["hw"], case["hw"], generator=g).to(dev, dtype)
    w = torch.randn(case["k"], case["c"], 3, 3, generator=g) / (case["c"] * 9) ** 0.5
    w = w.to(dev, dtype)
    return x.requires_grad_(), w.requires_grad_(), mask, lo.to(dev), li.to(dev)


def _shallowkern(case, dev, dtype):
    x, w, mask, _, _ = _inputs(case, dev, dtype)
    A.block_plan(mask)  # the plan is cached per mask, as in training
    return (lambda x, w: A.afcc_conv2d(x, w, mask, None, 1, 1)), (x, w)


def _dense(case, dev, dtype):
    x, w, mask, _, _ = _inputs(case, dev, dtype)
    return (lambda x, w: F.conv2d(x, w * mask[:, :, None, None], None, 1, 1)), (x, w)


class _BsrMatmul(torch.autograd.Function):
    """bsr @ cols with the input gradient bsr^T @ g (CPU torch has no BSR backward)."""

    @staticmethod
    def forward(ctx, cols, bsr, bsr_t):
        ctx.bsr_t = bsr_t
        return bsr @ cols

    @staticmethod
    def backward(ctx, g):
        return ctx.bsr_t @ g, None, None


def _bsr(case, dev, dtype):
    x, w, mask, lo, li = _inputs(case, dev, dtype)
    po, pi = torch.argsort(lo, stable=True), torch.argsort(li, stable=True)
    wp = (w * mask[:, :, None, None]).detach()[po][:, pi].reshape(case["k"], -1)
    n, hw = case["n"], case["hw"]
    xp = x.detach()[:, pi].requires_grad_()
    try:
        # 16 x 16 blocks (MKL takes square ones only): 16 channels x 9 taps = 9 aligned blocks
        bsr, bsr_t = wp.to_sparse_bsr((16, 16)), wp.t().contiguous().to_sparse_bsr((16, 16))

        def fn(xp):
            cols = F.unfold(xp, 3, padding=1).transpose(0, 1).reshape(case["c"] * 9, -1)
            return _BsrMatmul.apply(cols, bsr, bsr_t).view(case["k"], n, hw, hw)

        fn(xp)
    except (RuntimeError, NotImplementedError) as exc:
        pytest.skip(f"torch BSR matmul unavailable here: {str(exc).splitlines()[0]}")
    return fn, (xp,)


def _grouped(case, dev, dtype):
    x, w, mask, lo, li = _inputs(case, dev, dtype)
    lab = case["labels"]
    if case["c"] % lab or case["k"] % lab:
        pytest.skip("groups must divide the channel counts")
    po, pi = torch.argsort(lo, stable=True), torch.argsort(li, stable=True)
    wp = w.detach()[po][:, pi]
    wg = torch.cat([wp[g * case["k"] // lab:(g + 1) * case["k"] // lab,
                       g * case["c"] // lab:(g + 1) * case["c"] // lab] for g in range(lab)])
    xp = x.detach()[:, pi].requires_grad_()
    wg.requires_grad_()
    return (lambda xp, wg: F.conv2d(xp, wg, None, 1, 1, 1, lab)), (xp, wg)


def flops(case, pass_):
    f = conv2d_flops((case["n"], case["c"], case["hw"], case["hw"]), (case["k"], case["c"], 3, 3),
                     (1, 1), (1, 1), (1, 1))
    return f if pass_ == "fwd" else 3 * f


def min_flops(case, pass_):
    return flops(case, pass_) / case["labels"]


def nbytes(case, dtype, pass_):
    e = torch.empty((), dtype=dtype).element_size()
    hw2 = case["hw"] ** 2
    return e * (case["n"] * (case["c"] + case["k"]) * hw2
                + case["k"] * case["c"] * 9 / case["labels"]) * (1 if pass_ == "fwd" else 3)


BENCH = OpBench(
    op="afcc_conv2d",
    cases=CASES,
    providers={"shallowkern": _shallowkern, "dense": _dense, "bsr": _bsr, "grouped": _grouped},
    flops=flops, nbytes=nbytes, min_flops=min_flops,
    baseline="dense",
    slice_cases=[c["name"] for c in CASES["cuda"] if c["hw"] == 4 and c["c"] == c["k"]],
)
test_afcc_conv2d = BENCH.test()
