"""afcc_conv2d benchmarks: VGG-11* layer shapes x AFCC masks x providers, forward and fwd+bwd.

Masks (``make_mask``; all built from seed 0, so every provider and ``scripts/afcc_calibrate.py``
see the same ones):

* ``d0.50 .. d0.05``  label-clustered: each channel one of L balanced labels (channels shuffled),
                      pairs with equal labels kept: density 1/L (L = 2, 4, 10, 20), block-diagonal
                      after ordering.
* ``m5of8, m6of8``    multi-label clustered: in-channels one of 8 labels, out-channels s of 8
                      (density s/8 = 0.625, 0.75): where the crossover with the dense conv lies.
* ``afcc_t0.3/0.6``   the CIFAR-10 AFCC masks of the reproduction (``results/afcc``, seed 0,
                      thresholds 0.3 and 0.6: density ~0.62 / ~0.32) for the layer of this shape
                      (conv8 = features.24, conv9 = features.27); at width 1 each filter's label
                      set is given to 8 channels (the width-0.125 network's label statistics).

Providers (dense FLOPs in every row, so the ratios are speedups):

* ``shallowkern``  the op (CPU: sub-convs or the C++ kernel or dense, by the measured cost
                   model; CUDA: Triton; ``routed`` says which)
* ``dense``        conv2d with the masked weight ``w * mask`` (oneDNN / cuDNN), eager
* ``lab``          what the lab's code runs: a plain conv2d whose pruned weights are zeros
                   (the mask is re-applied after each optimizer step, not timed here)
* ``compiled``     torch.compile of ``dense`` (the default mode on CPU)
* ``bsr``          torch.sparse BSR weight (channel-ordered, 16 x 16 blocks: MKL takes square
                   ones) times the im2col of the input (F.unfold); its backward computes the
                   input gradient only (torch has no CPU BSR weight gradient)
* ``grouped``      conv2d with groups = L on the label-ordered channels: the ideal for a
                   block-diagonal mask with equal groups (label-clustered masks only)

``fwdbwd`` is the layer's share of a training step: forward, input and weight gradients.
"""

from __future__ import annotations

import functools
import importlib
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from benchmarks.common import OpBench, compiled
from shallowkern.flops import conv2d_flops

A = importlib.import_module("shallowkern.ops.afcc_conv2d")

# (name, CPU batch, in, out, map): VGG-11* x1.0 conv6 (8x8), conv8 / conv9 (4x4); the
# reproduction's width-0.125 conv8 / conv9 at its batch of 128 (AFCC prunes conv8..conv10).
SHAPES = [("conv9_512x512_4x4", 32, 512, 512, 4), ("conv8_256x512_4x4", 32, 256, 512, 4),
          ("conv6_256x256_8x8", 32, 256, 256, 8), ("w0.125_conv9_64x64_4x4", 128, 64, 64, 4),
          ("w0.125_conv8_32x64_4x4", 128, 32, 64, 4)]
GRID_MASKS = ("d0.50", "d0.25", "d0.10", "d0.05", "afcc_t0.3", "afcc_t0.6")
MASK_SETS = GRID_MASKS + ("m5of8", "m6of8")
_RESULTS = Path(__file__).resolve().parents[1] / "results" / "afcc"
_AFCC_LAYER = {"conv8": ("features.20", "features.24"), "conv9": ("features.24", "features.27")}


def _labels(n, labels, g):
    lab = torch.arange(n) * labels // n  # balanced
    return lab[torch.randperm(n, generator=g)]


@functools.lru_cache(maxsize=None)
def _afcc_labels(threshold: str) -> dict:
    path = _RESULTS / ("records.json" if threshold == "0.3" else "threshold_0.6/records.json")
    return json.loads(path.read_text())["labels/0"]


def make_mask(name: str, shape: str, k: int, c: int) -> torch.Tensor | None:
    """The (k, c) bool mask ``name`` for the layer ``shape`` (None: no such mask there)."""
    g = torch.Generator().manual_seed(0)
    if name.startswith("d"):
        lab = round(1 / float(name[1:]))
        return _labels(k, lab, g)[:, None] == _labels(c, lab, g)[None, :]
    if name.startswith("m"):
        s = int(name[1])
        li = _labels(c, 8, g)
        lo = torch.stack([torch.randperm(8, generator=g)[:s] for _ in range(k)])
        return (lo[:, :, None] == li[None, None, :]).any(1)
    layer = next((v for key, v in _AFCC_LAYER.items() if key in shape), None)
    if layer is None:
        return None
    lab = _afcc_labels(name.split("_t")[1])
    lin, lout = torch.tensor(lab[layer[0]]), torch.tensor(lab[layer[1]])
    rep_o, rep_i = k // lout.shape[0], c // lin.shape[0]
    if rep_o * lout.shape[0] != k or rep_i * lin.shape[0] != c:
        return None
    lout = lout.repeat_interleave(rep_o, 0)[torch.randperm(k, generator=g)]
    lin = lin.repeat_interleave(rep_i, 0)[torch.randperm(c, generator=g)]
    return (lout.double() @ lin.double().t()) > 0


def _cases(grid_masks):
    out = []
    for s, n, c, k, hw in SHAPES:
        for mname in grid_masks:
            if make_mask(mname, s, k, c) is not None:
                out.append(dict(name=f"{s}_{mname}_n{n}", shape=s, n=n, c=c, k=k, hw=hw,
                                mask=mname))
    return out


CASES = {"cpu": _cases(GRID_MASKS),
         "cuda": [dict(c, n=128, name=c["name"].rsplit("_n", 1)[0] + "_n128")
                  for c in _cases(GRID_MASKS)]}


def _inputs(case, dev, dtype):
    g = torch.Generator().manual_seed(1)
    mask = make_mask(case["mask"], case["shape"], case["k"], case["c"]).to(dev)
    x = torch.randn(case["n"], case["c"], case["hw"], case["hw"], generator=g).to(dev, dtype)
    w = torch.randn(case["k"], case["c"], 3, 3, generator=g) / (case["c"] * 9) ** 0.5
    w = w.to(dev, dtype)
    return x.requires_grad_(), w.requires_grad_(), mask


def _order(mask):
    """Block-diagonal masks: (out order, in order) grouping the channels by label."""
    m = mask.cpu()
    _, li = torch.unique(m.t(), dim=0, return_inverse=True)  # in-channel groups
    lo = li[m.float().argmax(1)]  # an out-channel's group: that of its first kept in-channel
    return torch.argsort(lo, stable=True).to(mask.device), torch.argsort(li, stable=True).to(
        mask.device)


def _shallowkern(case, dev, dtype):
    x, w, mask = _inputs(case, dev, dtype)
    A.block_plan(mask)  # the plan is cached per mask, as in training
    return (lambda x, w: A.afcc_conv2d(x, w, mask, None, 1, 1)), (x, w)


def _masked_conv(mask):
    return lambda x, w: F.conv2d(x, w * mask[:, :, None, None], None, 1, 1)


def _dense(case, dev, dtype):
    x, w, mask = _inputs(case, dev, dtype)
    return _masked_conv(mask), (x, w)


def _lab(case, dev, dtype):
    x, w, mask = _inputs(case, dev, dtype)
    with torch.no_grad():
        w.mul_(mask[:, :, None, None])
    return (lambda x, w: F.conv2d(x, w, None, 1, 1)), (x, w)


def _compiled(case, dev, dtype):
    x, w, mask = _inputs(case, dev, dtype)
    return compiled(_masked_conv(mask), dev), (x, w)


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
    x, w, mask = _inputs(case, dev, dtype)
    po, pi = A.channel_order(mask)
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
    x, w, mask = _inputs(case, dev, dtype)
    if not case["mask"].startswith("d"):
        pytest.skip("grouped conv: label-clustered (block-diagonal) masks only")
    lab = round(1 / float(case["mask"][1:]))
    if case["c"] % lab or case["k"] % lab:
        pytest.skip("groups must divide the channel counts")
    po, pi = _order(mask)
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


@functools.lru_cache(maxsize=None)
def _density(mask_name, shape, k, c) -> float:
    return float(make_mask(mask_name, shape, k, c).float().mean())


def min_flops(case, pass_):
    return flops(case, pass_) * _density(case["mask"], case["shape"], case["k"], case["c"])


def nbytes(case, dtype, pass_):
    e = torch.empty((), dtype=dtype).element_size()
    hw2 = case["hw"] ** 2
    return e * (case["n"] * (case["c"] + case["k"]) * hw2
                + case["k"] * case["c"] * 9 * _density(case["mask"], case["shape"], case["k"],
                                                        case["c"])) * (1 if pass_ == "fwd" else 3)


BENCH = OpBench(
    op="afcc_conv2d",
    cases=CASES,
    providers={"shallowkern": _shallowkern, "dense": _dense, "lab": _lab, "bsr": _bsr,
               "grouped": _grouped, "compiled": _compiled},
    flops=flops, nbytes=nbytes, min_flops=min_flops,
    baseline="dense",
    slice_cases=[c["name"] for c in CASES["cuda"] if c["shape"] == "conv9_512x512_4x4"],
)
test_afcc_conv2d = BENCH.test()
