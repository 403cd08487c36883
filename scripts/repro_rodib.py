"""RoDiB (issue 14), CPU-sized: a VGG-6-style backbone with the RoDiB multi-delay single-output
head vs a standard J-output head, at a small and a large FC input size D.

Resumable: one JSON record per (dataset, head, D, seed) in results/rodib/, skipped if present.
Recipe (CPU budget, not the paper's): ``train`` stratified training images (default 5,000) after
``val`` (default 2,000) are held out for validation, Adam lr 2e-3, batch 32, ``epochs`` epochs
(default 3),
inputs scaled to [0, 1] and standardised per channel with the training subset's statistics;
accuracy on the validation split after the last epoch and on the full test set.

    python scripts/repro_rodib.py [--datasets mnist] [--fc 4 32] [--seeds 0 1 2]
                                  [--width 8] [--delays 4] [--train 5000] [--epochs 3]
    python scripts/repro_rodib.py --summary      # the markdown table of docs/rodib.md
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # scripts/_repro.py

from _repro import (accuracy, load_record, machine_fields, mean_sd,  # noqa: E402
                    read_records, save_record)
from shallowkern.data import load_dataset, train_val_split  # noqa: E402
from shallowkern.models.rodib import RoDiBVGG6, forward_flops, param_count  # noqa: E402


def _load(dataset: str, seed: int, train: int, val: int):
    x, y = load_dataset(dataset, train=True)
    xt, yt = load_dataset(dataset, train=False)
    (xtr, ytr), (xva, yva) = train_val_split(x, y, val_size=val, seed=seed)
    if train < xtr.shape[0]:  # a stratified subset of the rest
        (_, _), (xtr, ytr) = train_val_split(xtr, ytr, val_size=train, seed=seed)
    xtr, xva, xt = (t.float() / 255.0 for t in (xtr, xva, xt))
    mean = xtr.mean((0, 2, 3), keepdim=True)
    std = xtr.std((0, 2, 3), keepdim=True)
    norm = lambda t: (t - mean) / std  # noqa: E731
    return (norm(xtr), ytr.long()), (norm(xva), yva.long()), (norm(xt), yt.long())


def run_one(dataset: str, head: str, fc: int, seed: int, a, out_dir: str) -> dict:
    name = f"{dataset}__{head}_fc{fc}__seed{seed}"
    path = os.path.join(out_dir, name + ".json")
    done = load_record(path)
    if done is not None:
        return done
    (xtr, ytr), (xva, yva), (xt, yt) = _load(dataset, seed, a.train, a.val)
    torch.manual_seed(seed)
    model = RoDiBVGG6(a.width, fc, 10, head, num_delays=a.delays, in_channels=xtr.shape[1],
                      bn=True)
    flops_fwd = forward_flops(model, tuple(xtr.shape[1:]))
    head_params = param_count(model.head)
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    g = torch.Generator().manual_seed(seed)
    history = []
    t0 = time.perf_counter()
    for epoch in range(a.epochs):
        perm = torch.randperm(xtr.shape[0], generator=g)
        total = 0.0
        for i in range(0, xtr.shape[0], a.batch):
            idx = perm[i:i + a.batch]
            loss = F.cross_entropy(model(xtr[idx]), ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * idx.shape[0]
        history.append({"epoch": epoch + 1, "train_loss": total / xtr.shape[0],
                        "val_acc": accuracy(model, xva, yva)})
    train_s = time.perf_counter() - t0
    rec = {
        "dataset": dataset, "head": head, "fc": fc, "seed": seed, "width": a.width, "bn": True,
        "delays": list(model.head.delays) if head == "rodib" else None,
        "label_times": list(model.head.label_times_list) if head == "rodib" else None,
        "train_images": int(xtr.shape[0]), "val_images": int(xva.shape[0]),
        "epochs": a.epochs, "lr": a.lr, "batch": a.batch, "params": param_count(model),
        "head_params": head_params,
        "flops_fwd_per_image": flops_fwd, "val_acc": history[-1]["val_acc"],
        "test_acc": accuracy(model, xt, yt), "train_seconds": train_s,
        **machine_fields(),
        "history": history,
    }
    return save_record(path, rec)


def summary(out_dir: str) -> str:
    recs = read_records(out_dir)
    rows = ["| dataset | FC input D | head | params (head) | fwd FLOPs/image | val acc % "
            "(mean ± sd) | test acc % (mean ± sd) | seeds | train s/run | load avg |",
            "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    keys = sorted({(r["dataset"], r["fc"], r["head"]) for r in recs})
    for ds, fc, head in keys:
        rs = [r for r in recs if (r["dataset"], r["fc"], r["head"]) == (ds, fc, head)]

        label = head if head == "standard" else f"rodib M={len(rs[0]['delays'])}"
        rows.append(f"| {ds} | {fc} | {label} | {rs[0]['params']:,} ({rs[0]['head_params']:,}) | "
                    f"{rs[0]['flops_fwd_per_image']:,} | {mean_sd([r['val_acc'] for r in rs])} | "
                    f"{mean_sd([r['test_acc'] for r in rs])} | {len(rs)} | "
                    f"{statistics.mean(r['train_seconds'] for r in rs):.0f} | "
                    f"{statistics.mean(r['load_avg_1min'] for r in rs):.1f} |")
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=["mnist"])
    p.add_argument("--heads", nargs="+", default=["rodib", "standard"])
    p.add_argument("--fc", nargs="+", type=int, default=[4, 32])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--delays", type=int, default=4)
    p.add_argument("--train", type=int, default=5000)
    p.add_argument("--val", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=os.path.join("results", "rodib"))
    p.add_argument("--summary", action="store_true")
    a = p.parse_args()
    if a.summary:
        print(summary(a.out))
        return
    torch.set_num_threads(a.threads)
    for ds in a.datasets:
        for seed in a.seeds:
            for fc in a.fc:
                for head in a.heads:
                    r = run_one(ds, head, fc, seed, a, a.out)
                    print(f"{ds} {head} fc={fc} seed={seed}: val {r['val_acc']:.2f} test "
                          f"{r['test_acc']:.2f} ({r['train_seconds']:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
