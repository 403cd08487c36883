"""Training throughput (images/s) of GeneralizedLeNet: shallowkern vs the same net in plain PyTorch.

One SGD step (forward, cross-entropy, backward, Nesterov update) on a device-resident batch.
Providers: shallowkern (fused WideConv2d layers), eager (nn.Conv2d -> ReLU -> MaxPool2d with
identical weights), compiled (torch.compile of the eager net).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from benchmarks import shapes
from benchmarks.common import device_info, median_seconds, once_seconds
from shallowkern import unfuse
from shallowkern.models import GeneralizedLeNet


def plain_pytorch(model: GeneralizedLeNet) -> nn.Module:
    """The same network with nn.Conv2d -> ReLU -> MaxPool2d layers and (copies of) its weights."""
    return unfuse(copy.deepcopy(model))


@pytest.mark.parametrize("d1", shapes.LENET_TRAIN_D1)
def test_lenet_training_step(benchmark, d1, dev, smoke):
    if smoke and d1 != shapes.LENET_TRAIN_D1[0]:
        pytest.skip("smoke run: first width only")
    torch.manual_seed(0)
    n = 4 if smoke else (shapes.BATCHES[0] if dev.type == "cuda" else shapes.CPU_BATCH)
    model = GeneralizedLeNet(d1).to(dev)
    nets = {"shallowkern": model, "eager": plain_pytorch(model)}
    nets["compiled"] = torch.compile(plain_pytorch(model))
    x = torch.randn(n, 3, 32, 32, device=dev)
    y = torch.randint(0, 10, (n,), device=dev)

    def step_fn(net):
        opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9, nesterov=True)

        def step():
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
        return step

    steps = {name: step_fn(net) for name, net in nets.items()}
    timed = once_seconds if smoke else median_seconds
    times = {name: timed(step, dev) for name, step in steps.items()}
    info = dict(d1=d1, d2=model.d2, batch=n, **device_info(dev))
    for name, t in times.items():
        info[f"{name}_step_s"] = t
        info[f"{name}_images_per_s"] = n / t
    for other in ("eager", "compiled"):
        info[f"speedup_vs_{other}"] = times[other] / times["shallowkern"]
    benchmark.extra_info.update(info)
    benchmark.pedantic(steps["shallowkern"], rounds=1 if smoke else 5, warmup_rounds=0 if smoke else 1)
