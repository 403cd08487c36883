"""Training throughput of GeneralizedLeNet: shallowkern vs the same net in plain PyTorch.

One SGD step (forward, cross-entropy, backward, Nesterov update). The harness sets the same
cuDNN flags (``cudnn.benchmark=True``) for every provider. Providers (benchmarks/common.py,
pass "step"), two data placements so that the speedup is reported both ways (issue 13):
  shallowkern       GeneralizedLeNet (fused WideConv2d layers), a device-resident batch
  eager             shallowkern.unfuse of the same net: nn.Conv2d -> ReLU -> MaxPool2d, same
                    weights, the same device-resident batch (kernels vs kernels)
  compiled          torch.compile of the eager net, the same batch
  shallowkern_data  shallowkern as the sweeps train it: each step draws an augmented batch from
                    DeviceLoader (uint8 images resident on the device)
  eager_hostdata    the eager net as a plain-PyTorch script trains it: each step draws a batch
                    from HostLoader (per-image augmentation in DataLoader workers, pinned
                    copies), i.e. what ``sweep --impl plain`` measures
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


def _batches(kind: str, n: int, dev, dtype):
    """An endless iterator of augmented (x, y) batches from the loader ``kind`` names."""
    from shallowkern.data import DeviceLoader, HostLoader

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (8 * n, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (8 * n,), generator=g)
    loader = (DeviceLoader(images, labels, n, device=dev, shuffle=True, augment=True)
              if kind == "device" else
              HostLoader(images, labels, n, device=dev, shuffle=True, augment=True))
    while True:
        for xb, yb in loader:
            yield xb.to(dtype), yb


def _build(case, dev, dtype, kind: str):
    model = GeneralizedLeNet(case["d1"]).to(device=dev, dtype=dtype)
    net = model if kind.startswith("shallowkern") else unfuse(model)
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

    if kind in ("shallowkern_data", "eager_hostdata"):
        batches = _batches("device" if kind == "shallowkern_data" else "host", n, dev, dtype)

        def loaded_step():
            return step(*next(batches))
        return loaded_step, ()
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
    providers={k: functools.partial(_build, kind=k)
               for k in ("shallowkern", "eager", "compiled", "shallowkern_data", "eager_hostdata")},
    flops=flops, nbytes=nbytes, items=lambda case: case["batch"],
    dtypes={"cuda": ("fp32_tf32", "fp32"), "cpu": ("fp32",)},
    passes=("step",),
)
test_lenet_training = BENCH.test()
