"""The trial function: config -> build model -> train -> evaluate -> one result record.

``run_trial`` is a pure function of its config (plus where the data live): the local scheduler,
submitit and Ray all run it unchanged, and the caller appends its record to the results file.
"""

from __future__ import annotations

import functools
import os
import platform
import socket
import statistics
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..models import layer_report
from ..nn import unfuse
from ..train import make_splits, train_and_evaluate
from .config import SCHEMA_VERSION, TrialConfig, synthetic_size, trial_id
from .store import checkpoint_path

__all__ = ["build_model", "git_commit", "load_data", "machine_info", "model_cost", "run_trial"]

LATENCY_REPEATS = 5


def build_model(config: TrialConfig, in_channels: int = 3, input_size: int = 32,
                num_classes: int = 10) -> nn.Module:
    """The network a config describes (initialised from torch's global RNG); the family's
    builder from ``shallowkern.models.registry``. A ValueError names an input it cannot take
    (VGG-16 on 28x28 MNIST)."""
    fam = config.family_spec
    try:
        return fam.build(config.params, in_channels=in_channels, input_size=input_size,
                         num_classes=num_classes)
    except ValueError as exc:
        raise ValueError(f"{exc} (dataset {config.dataset!r})") from None


def _synthetic(n: int, seed: int, classes: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Learnable random images: a smooth per-class prototype plus per-image noise."""
    g = torch.Generator().manual_seed(1234)  # prototypes shared by train and test
    proto = torch.nn.functional.interpolate(torch.rand(classes, 3, 4, 4, generator=g) * 255,
                                            size=(32, 32), mode="bilinear", align_corners=False)
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    x = proto[y] + torch.randn(n, 3, 32, 32, generator=g) * 60
    return x.clamp(0, 255).to(torch.uint8), y


@functools.lru_cache(maxsize=2)
def load_data(dataset: str, root: str | None) -> tuple[tuple[torch.Tensor, torch.Tensor],
                                                        tuple[torch.Tensor, torch.Tensor]]:
    """``(train, test)`` of ``dataset``, each (uint8 NCHW, int64 labels), cached per process
    (a worker runs many trials on the same data; decoding CIFAR-10 takes seconds).

    ``"synthetic"`` is 1,200 + 400 generated 3x32x32 images of 10 classes, for tests;
    ``"synthetic-N"`` is N + N/5 of them (``synthetic-50000``: CIFAR-10's size, for timing).
    """
    n = synthetic_size(dataset)
    if n is not None:
        return _synthetic(n, seed=1), _synthetic(400 if n == 1200 else n // 5, seed=2)
    from ..data import load_dataset

    return load_dataset(dataset, root, train=True), load_dataset(dataset, root, train=False)


@torch.inference_mode()
def _latency(model: nn.Module, example: torch.Tensor, repeats: int = LATENCY_REPEATS) -> float:
    """Median seconds of one inference forward on ``example`` (after one warm-up call)."""
    sync = torch.cuda.synchronize if example.device.type == "cuda" else (lambda: None)
    model.eval()
    model(example)
    times = []
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        model(example)
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def model_cost(model: nn.Module, input_shape: tuple[int, ...], device: torch.device,
               batch_size: int = 100) -> dict[str, Any]:
    """Forward cost per image and inference latency per batch of ``batch_size`` images.

    From ``shallowkern.profile.profile`` (2 FLOPs per multiply-add of conv and linear layers;
    bias, ReLU and pooling are not counted): ``flops``/``macs`` per image, ``bytes`` moved by one
    batch (each op's inputs read and outputs written once), ``latency`` = median seconds of one
    inference batch. If the profiler fails, MACs come from ``layer_report`` (same convention),
    bytes is None and the latency is timed here; ``cost_source`` says which.
    """
    params = int(sum(p.numel() for p in model.parameters()))
    model.eval()
    example = torch.randn(batch_size, *input_shape, device=device,
                          generator=torch.Generator(device).manual_seed(0))
    try:
        from ..profile import profile

        res = profile(model, example, warmup=1, repeats=LATENCY_REPEATS)
        return {"macs": int(res.totals.macs // batch_size),
                "flops": int(res.totals.flops // batch_size), "params": params,
                "bytes": int(res.totals.bytes), "latency": float(res.latency.median_s),
                "latency_batch": batch_size, "cost_source": "shallowkern.profile"}
    except Exception as exc:  # noqa: BLE001 - cost is secondary; never lose a trained trial
        macs = sum(r["macs"] for r in layer_report(model, input_shape))
        return {"macs": int(macs), "flops": int(2 * macs), "params": params, "bytes": None,
                "latency": _latency(model, example), "latency_batch": batch_size,
                "cost_source": f"layer_report (profile failed: {type(exc).__name__}: {exc})"}


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """HEAD of the git checkout holding this package, or None (installed wheel, no git). Cached
    for the process: the sweep drivers and run_trial call it when they start, so a record names
    the commit of the code its process loaded, not a later HEAD (commits made while a long
    driver runs do not change the code it runs)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and len(commit) == 40 else None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device) -> dict[str, Any]:
    """Where a record was measured: latency and wall time mean nothing without it."""
    return {
        "hostname": socket.gethostname(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }


def run_trial(config: TrialConfig | Mapping[str, Any], data_root: str | None = None,
              device: str | None = None, results: str | None = None) -> dict[str, Any]:
    """Run one trial and return its JSON-serialisable record (see ``docs/sweeps.md``).

    Args:
        config: a TrialConfig or its ``to_dict()``.
        data_root: dataset root (else ``$SHALLOWKERN_DATA``); not part of the trial id, since
            where the files are does not change the result.
        device: "cuda"/"cpu"/...; default the first visible GPU, else the CPU.
        results: the sweep's results file: training then checkpoints every epoch to
            ``store.checkpoint_path(results, trial_id)`` and resumes from it, so a killed
            trial loses at most one epoch (``run_sweep`` passes it; the record lists the epochs
            it resumed at). Not for ``impl="plain"`` trials (their host data pipeline cannot
            be checkpointed; they restart).
    """
    t0 = time.perf_counter()
    git_commit()  # pinned now (see git_commit)
    cfg = config if isinstance(config, TrialConfig) else TrialConfig.from_dict(config)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    recipe = cfg.resolved_recipe()
    train, test = load_data(cfg.dataset, None if data_root is None else str(data_root))
    splits = make_splits(train, test, recipe)
    c, h, _ = train[0].shape[1:]
    num_classes = int(max(int(train[1].max()), int(test[1].max())) + 1)

    torch.manual_seed(cfg.seed)  # the model's initialisation is the seed's first use
    model = build_model(cfg, in_channels=c, input_size=h, num_classes=num_classes)
    model_info = cfg.family_spec.info(model, cfg.params)
    plain = cfg.impl == "plain"
    if plain:  # the same initial weights, as nn.Conv2d/ReLU/MaxPool2d layers
        unfuse(model)
    ckpt = None if results is None or plain else checkpoint_path(results, trial_id(cfg))
    result = train_and_evaluate(model, splits, recipe, dev, seed=cfg.seed,
                                pipeline="host" if plain else "device", checkpoint=ckpt)
    cost = model_cost(model, (c, h, h), dev, batch_size=recipe.batch_size)
    return {
        "schema_version": SCHEMA_VERSION,
        "trial_id": trial_id(cfg),
        "config": cfg.to_dict(),
        "seed": cfg.seed,
        "impl": cfg.impl,
        "model": model_info,
        "recipe": recipe.to_dict(),
        **{k: result[k] for k in ("train_error", "val_error", "test_error", "best_epoch",
                                  "epochs", "selection", "diverged", "n_train", "n_val",
                                  "n_test", "train_time", "images_per_s", "history",
                                  "resumed_at")},
        **cost,
        "wall_time": time.perf_counter() - t0,
        "machine": machine_info(dev),
        "git_commit": git_commit(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
