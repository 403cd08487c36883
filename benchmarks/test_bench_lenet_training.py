"""Training throughput of GeneralizedLeNet: shallowkern vs the same net in plain PyTorch.

One SGD step (forward, cross-entropy, backward, Nesterov update) on a device-resident batch,
the same for every provider (same data placement; the harness sets the same cuDNN flags,
``cudnn.benchmark=True``, for all). Providers (benchmarks/common.py, pass "step"):
  shallowkern  GeneralizedLeNet (fused WideConv2d layers)
  eager        shallowkern.unfuse of the same net: nn.Conv2d -> ReLU -> MaxPool2d, same weights
  compiled     torch.compile of the eager net
extra_info["items_per_s"] is images/s. FLOPs: FlopCounterMode's count of the eager net's forward
and backward (the dense work); bytes: the image batch plus 8 passes over the parameters (read in
forward and backward, gradient written, SGD reads weight, gradient and momentum and writes
weight and momentum) -- a lower bound, activations not counted.
"""

from __future__ import annotations

import functools

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from benchmarks import shapes
from benchmarks.common import OpBench, compiled
from shallowkern import unfuse
from shallowkern.models import GeneralizedLeNet


def _case(d1: int, batch: int) -> dict:
    return dict(name=f"lenet_d{d1}_b{batch}", d1=d1, batch=batch)


def _build(case, dev, dtype, kind: str):
    model = GeneralizedLeNet(case["d1"]).to(device=dev, dtype=dtype)
    net = model if kind == "shallowkern" else unfuse(model)
    if kind == "compiled":
        net = compiled(net, dev)
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9, nesterov=True)
    n = case["batch"]
    x = torch.randn(n, 3, 32, 32, device=dev, dtype=dtype)
    y = torch.randint(0, 10, (n,), device=dev)

    def step(x, y):
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        return loss
    return step, (x, y)


@functools.lru_cache(maxsize=None)
def _counts(d1: int, batch: int) -> tuple[int, int]:
    net = unfuse(GeneralizedLeNet(d1))
    x = torch.randn(batch, 3, 32, 32)
    with FlopCounterMode(display=False) as fc:
        nn.functional.cross_entropy(net(x), torch.zeros(batch, dtype=torch.long)).backward()
    return fc.get_total_flops(), sum(p.numel() for p in net.parameters())


def flops(case, pass_):
    return _counts(case["d1"], case["batch"])[0]


def nbytes(case, dtype, pass_):
    e = torch.empty((), dtype=dtype).element_size()
    return (case["batch"] * 3 * 32 * 32 + 8 * _counts(case["d1"], case["batch"])[1]) * e


BENCH = OpBench(
    op="lenet_training",
    cases={"cuda": [_case(d, shapes.BATCHES[0]) for d in shapes.LENET_TRAIN_D1],
           "cpu": [_case(d, shapes.CPU_BATCH) for d in shapes.LENET_TRAIN_D1]},
    providers={k: functools.partial(_build, kind=k) for k in ("shallowkern", "eager", "compiled")},
    flops=flops, nbytes=nbytes, items=lambda case: case["batch"],
    dtypes={"cuda": ("fp32_tf32", "fp32"), "cpu": ("fp32",)},
    passes=("step",),
)
test_lenet_training = BENCH.test()
