"""Reproduce diro5t's MNIST comparison (issue 11) with 3 seeds, plus full/low-rank forms and
Fashion-MNIST. Resumable: one JSON record per (dataset, model, seed) in results/quadric/, skipped
if present. Recipe: 20 epochs, SGD lr 0.003, momentum 0.9, batch 128, inputs scaled to [-1, 1]
(diro5t's Normalize((0.5,), (0.5,))), 5,000 stratified training images held out for validation;
the reported test accuracy is the final epoch's, the validation accuracy is reported beside it.

    python scripts/repro_quadric.py [--datasets mnist fashion_mnist] [--seeds 0 1 2]
                                    [--epochs 20] [--out results/quadric] [--threads 1]
    python scripts/repro_quadric.py --summary      # the markdown table of docs/quadric.md
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # scripts/_repro.py

from _repro import (accuracy, load_record, machine_fields, mean_sd,  # noqa: E402
                    read_records, save_record)
from shallowkern.data import load_dataset, train_val_split  # noqa: E402
from shallowkern.models.quadric import param_count, quadric_mnist_models  # noqa: E402

REPORTED = {"linear_784-128-10": 97.16, "quadric_diag_784-16-10": 92.51}


def _prep(x: torch.Tensor) -> torch.Tensor:
    return (x.float().reshape(x.shape[0], -1) / 255.0 - 0.5) / 0.5


def _flops(model) -> tuple[int, int]:
    """(forward, forward+backward) FLOPs per sample, from torch's FlopCounterMode."""
    x = torch.randn(1, 784)
    with FlopCounterMode(display=False) as fwd:
        out = model(x)
    with FlopCounterMode(display=False) as bwd:
        out.sum().backward()
    model.zero_grad(set_to_none=True)
    return fwd.get_total_flops(), fwd.get_total_flops() + bwd.get_total_flops()


def run_one(dataset: str, name: str, seed: int, epochs: int, out_dir: str) -> dict:
    path = os.path.join(out_dir, f"{dataset}__{name}__seed{seed}.json")
    done = load_record(path)
    if done is not None:
        return done
    x, y = load_dataset(dataset, train=True)
    xt, yt = load_dataset(dataset, train=False)
    (xtr, ytr), (xva, yva) = train_val_split(x, y, val_size=5000, seed=seed)
    xtr, xva, xt = _prep(xtr), _prep(xva), _prep(xt)
    ytr, yva, yt = ytr.long(), yva.long(), yt.long()
    torch.manual_seed(seed)
    model = quadric_mnist_models()[name]()
    flops_fwd, flops_train = _flops(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.003, momentum=0.9)
    g = torch.Generator().manual_seed(seed)
    history = []
    t0 = time.perf_counter()
    for epoch in range(epochs):
        perm = torch.randperm(xtr.shape[0], generator=g)
        total = 0.0
        for i in range(0, xtr.shape[0], 128):
            idx = perm[i:i + 128]
            loss = F.cross_entropy(model(xtr[idx]), ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * idx.shape[0]
        history.append({"epoch": epoch + 1, "train_loss": total / xtr.shape[0],
                        "val_acc": accuracy(model, xva, yva, batch=2048)})
    train_s = time.perf_counter() - t0
    from shallowkern.ops._backend import last_backend

    from shallowkern.nn.quadric_linear import QuadricLinear

    has_quadric = any(isinstance(m, QuadricLinear) for m in model.modules())
    choice = last_backend("quadric_linear") if has_quadric else None
    rec = {
        "dataset": dataset, "model": name, "seed": seed, "epochs": epochs,
        "params": param_count(model), "flops_fwd_per_sample": flops_fwd,
        "flops_train_per_sample": flops_train,
        "val_acc": history[-1]["val_acc"], "best_val_acc": max(h["val_acc"] for h in history),
        "test_acc": accuracy(model, xt, yt, batch=2048), "train_seconds": train_s,
        "backend": choice.backend if choice else "n/a (no quadric layer)",
        **machine_fields(),
        "history": history,
    }
    return save_record(path, rec)


def summary(out_dir: str) -> str:
    recs = read_records(out_dir)
    rows = ["| dataset | model | params | fwd FLOPs/sample | test acc % (mean ± sd) | val acc % | "
            "reported | seeds | train s/run |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    keys = sorted({(r["dataset"], r["model"]) for r in recs})
    for ds, m in keys:
        rs = [r for r in recs if r["dataset"] == ds and r["model"] == m]
        acc = [r["test_acc"] for r in rs]
        val = [r["val_acc"] for r in rs]
        rep = f"{REPORTED[m]:.2f}" if ds == "mnist" and m in REPORTED else "-"
        rows.append(f"| {ds} | {m} | {rs[0]['params']:,} | {rs[0]['flops_fwd_per_sample']:,} | "
                    f"{mean_sd(acc)} | {statistics.mean(val):.2f} | {rep} | "
                    f"{len(rs)} | {statistics.mean(r['train_seconds'] for r in rs):.0f} |")
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=["mnist", "fashion_mnist"])
    p.add_argument("--models", nargs="+", default=list(quadric_mnist_models()))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=os.path.join("results", "quadric"))
    p.add_argument("--summary", action="store_true")
    a = p.parse_args()
    if a.summary:
        print(summary(a.out))
        return
    torch.set_num_threads(a.threads)
    for seed in a.seeds:
        for ds in a.datasets:
            for m in a.models:
                r = run_one(ds, m, seed, a.epochs, a.out)
                print(f"{ds} {m} seed {seed}: test {r['test_acc']:.2f}% val {r['val_acc']:.2f}% "
                      f"({r['train_seconds']:.0f} s, {r['backend']})", flush=True)


if __name__ == "__main__":
    main()
