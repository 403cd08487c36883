"""Issue 13 item 3: the training speedup's two sides run with stated, equal settings."""

from __future__ import annotations

import pytest
import torch

from shallowkern.models import GeneralizedLeNet
from shallowkern.sweep.trial import load_data
from shallowkern.train import Recipe, make_splits, train_and_evaluate

TINY = dict(epochs=1, lr_step=1, val_size=50, train_subset=100)


def test_cudnn_setting_is_checked_and_recorded():
    train, test = load_data("synthetic", None)
    splits = make_splits(train, test, Recipe(**TINY))
    before = torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic
    torch.manual_seed(0)
    res = train_and_evaluate(GeneralizedLeNet(2), splits, Recipe(**TINY), "cpu", seed=0,
                             pipeline="host", cudnn="benchmark")
    assert (res["pipeline"], res["cudnn"]) == ("host", "benchmark")
    # on a CPU the cuDNN flags are not touched
    assert (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic) == before
    with pytest.raises(ValueError, match="cudnn must be"):
        train_and_evaluate(GeneralizedLeNet(2), splits, Recipe(**TINY), "cpu", seed=0,
                           cudnn="fast")


def test_training_benchmark_reports_both_data_placements():
    from benchmarks.test_bench_lenet_training import BENCH

    assert {"shallowkern", "eager", "compiled", "shallowkern_data", "eager_hostdata"} <= set(
        BENCH.providers)
    step, inputs = BENCH.providers["eager_hostdata"](
        dict(name="t", d1=2, batch=4), torch.device("cpu"), torch.float32)
    assert inputs == () and torch.isfinite(step())
    step, inputs = BENCH.providers["shallowkern"](
        dict(name="t", d1=2, batch=4), torch.device("cpu"), torch.float32)
    assert [t.device.type for t in inputs] == ["cpu", "cpu"] and torch.isfinite(step(*inputs))
