"""SpinalVGG5 vs VGG5 on MNIST and Fashion-MNIST: the CPU-sized reproduction (issue 10).

Resumable: one JSON record per (dataset, model, seed) under benchmarks/results/spinal/ (skipped if present),
so it can be stopped and restarted. Selection uses a validation split carved from the training
set (stratified, 5,000 images, seeded): the epoch with the best validation accuracy is the one
whose test accuracy is reported. The test set is never looked at during training.

CPU recipe (default; 2-core VM, one thread per run):
    backbone width 8 (filters 8/16/32/32; the paper's is 64), heads at the published widths
    (FC 512 / spinal 128), training subset of 12,000 images, 4 epochs, batch 100,
    Adam lr 0.005 with cosine decay, augmentation: random rotation +-10 deg and shift +-2 px.
Full recipe (GPU, documented, not run here): ``--width 64 --train-subset 0 --epochs 200``
    (all 55,000 training images after the split), the rest unchanged.

    python scripts/repro_spinal.py [--datasets mnist fashion_mnist] [--seeds 0 1 2] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from shallowkern.data import load_dataset, train_val_split  # noqa: E402
from shallowkern.models.vgg5 import VGG5, SpinalVGG5  # noqa: E402

STATS = {"mnist": (0.1307, 0.3081), "fashion_mnist": (0.2860, 0.3530)}


def augment(x: torch.Tensor, gen: torch.Generator, degrees: float = 10.0, shift: float = 2.0) -> torch.Tensor:
    """Random rotation (+-degrees) and translation (+-shift px) per image; zero fill. x in [0, 1]."""
    n, _, h, w = x.shape
    ang = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(degrees)
    t = (torch.rand(n, 2, generator=gen) * 2 - 1) * shift * 2 / torch.tensor([w, h])
    cos, sin = torch.cos(ang), torch.sin(ang)
    theta = torch.stack([torch.stack([cos, -sin, t[:, 0]], 1), torch.stack([sin, cos, t[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, padding_mode="zeros", align_corners=False)


@torch.no_grad()
def accuracy(model, x, y, mean, std, bs=1000) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(x), bs):
        xb = (x[i:i + bs].float() / 255 - mean) / std
        correct += (model(xb).argmax(1) == y[i:i + bs]).sum().item()
    return correct / max(len(x), 1)


def head_step_time(head, feat: int, batch: int, reps: int = 30) -> float:
    """Median seconds of one forward + backward of the head alone (training mode)."""
    head.train()
    x = torch.randn(batch, feat, requires_grad=True)
    ts = []
    for i in range(reps + 5):
        t = time.perf_counter()
        head(x).sum().backward()
        if i >= 5:
            ts.append(time.perf_counter() - t)
    return sorted(ts)[len(ts) // 2]


def run(dataset: str, kind: str, seed: int, args) -> dict:
    torch.manual_seed(seed)
    x, y = load_dataset(dataset, train=True)
    xt, yt = load_dataset(dataset, train=False)
    (xtr, ytr), (xv, yv) = train_val_split(x, y, val_size=args.val_size, seed=seed)
    if args.train_subset:
        idx = torch.randperm(len(xtr), generator=torch.Generator().manual_seed(1000 + seed))[:args.train_subset]
        xtr, ytr = xtr[idx], ytr[idx]
    mean, std = STATS[dataset]
    Model = SpinalVGG5 if kind == "spinal_vgg5" else VGG5
    model = Model(args.width)
    params = sum(p.numel() for p in model.parameters())
    head_params = sum(p.numel() for p in model.classifier.parameters())
    model.eval()
    with FlopCounterMode(display=False) as fc:
        model(torch.zeros(1, 1, 28, 28))
    flops = fc.get_total_flops()
    with FlopCounterMode(display=False) as fc:
        model.classifier(torch.zeros(1, model.classifier[1].in_features if kind == "vgg5"
                                     else model.classifier.in_features))
    head_flops = fc.get_total_flops()
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    steps_per_epoch = math.ceil(len(xtr) / args.batch)
    total = steps_per_epoch * args.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / total)))
    gen = torch.Generator().manual_seed(seed)
    best = (-1.0, -1, None)
    step_times, history = [], []
    t0 = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(xtr), generator=gen)
        for i in range(0, len(xtr), args.batch):
            idx = perm[i:i + args.batch]
            if len(idx) < 2:
                continue  # BatchNorm needs two samples
            ts = time.perf_counter()
            xb = (augment(xtr[idx].float() / 255, gen) - mean) / std
            loss = F.cross_entropy(model(xb), ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step_times.append(time.perf_counter() - ts)
        va = accuracy(model, xv, yv, mean, std)
        history.append({"epoch": epoch + 1, "val_acc": va, "loss": loss.item()})
        if va > best[0]:
            best = (va, epoch + 1, {k: v.clone() for k, v in model.state_dict().items()})
        print(f"  {dataset} {kind} seed {seed} epoch {epoch + 1}: val {va:.4f} "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
    train_time = time.perf_counter() - t0
    model.load_state_dict(best[2])
    test_acc = accuracy(model, xt, yt, mean, std)
    feat = 4 * args.width
    return {
        "dataset": dataset, "model": kind, "seed": seed, "width": args.width,
        "epochs": args.epochs, "train_images": len(xtr), "val_images": len(xv), "batch": args.batch,
        "lr": args.lr, "params": params, "head_params": head_params, "flops_per_image": flops,
        "head_flops_per_image": head_flops, "best_epoch": best[1], "val_acc": best[0],
        "test_acc": test_acc, "train_seconds": train_time,
        "step_seconds_median": sorted(step_times)[len(step_times) // 2],
        "head_step_seconds_median": head_step_time(model.classifier, feat, args.batch),
        "history": history, "threads": torch.get_num_threads(), "torch": torch.__version__,
        "machine": f"{platform.machine()} {os.cpu_count()} cpu", "date": time.strftime("%Y-%m-%d %H:%M"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["mnist", "fashion_mnist"])
    ap.add_argument("--models", nargs="+", default=["spinal_vgg5", "vgg5"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--train-subset", type=int, default=12000, help="0 = all")
    ap.add_argument("--val-size", type=int, default=5000)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--lr", type=float, default=0.005)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/spinal")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:  # seed-major: partial runs still cover every cell
        for dataset in args.datasets:
            for kind in args.models:
                path = out / f"{dataset}-{kind}-w{args.width}-e{args.epochs}-n{args.train_subset}-s{seed}.json"
                if path.exists():
                    continue
                rec = run(dataset, kind, seed, args)
                tmp = path.with_suffix(".tmp")
                tmp.write_text(json.dumps(rec, indent=1))
                tmp.rename(path)
                print(f"{path.name}: test {rec['test_acc']:.4f} (val {rec['val_acc']:.4f}, "
                      f"epoch {rec['best_epoch']}, {rec['train_seconds']:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
