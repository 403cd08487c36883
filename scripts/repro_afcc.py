"""AFCC reproduction on CIFAR-10 with a width-scaled VGG-11* (resumable; records as it goes).

Stages (each skipped when its record exists in ``--out``/records.json):

1. ``base``: train VGG-11* (``--width``) on ``--train-subset`` CIFAR-10 images for ``--epochs``
   (SGD Nesterov, one-cycle lr, flips + 4-pixel shifts), 5,000 held-out validation images.
2. ``afcc/<seed>`` and ``random_afcc/<seed>``: prune the last ``--layers`` convs (+ read-out)
   with AFCC, then with random-AFCC at the same number of labels per filter; retrain
   ``--retrain-epochs`` on the same subset; test accuracy before / pruned / after.
3. ``speed``: forward and forward+backward time of the pruned convs and of the whole network,
   dense (nn.Conv2d with the masked weight) vs AFCC layers (this machine's CPU).

The full recipe for a GPU (the paper's setting): ``--width 1 --train-subset 45000 --epochs 100
--retrain-epochs 20``; CIFAR-100 with ``--dataset cifar100`` where its files exist.

    nice -n 10 python scripts/repro_afcc.py --out results/afcc
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/_repro.py

from _repro import call_times  # noqa: E402
from shallowkern import AFCCConv2d  # noqa: E402
from shallowkern.afcc.prune import accuracy, prune, train_epochs  # noqa: E402
from shallowkern.data import load_dataset  # noqa: E402
from shallowkern.models.vgg11 import VGG11Star  # noqa: E402


def load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def save(path: Path, records: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(records, indent=1, sort_keys=True))
    os.replace(tmp, path)


def splits(args):
    x, y = load_dataset(args.dataset, train=True)
    xt, yt = load_dataset(args.dataset, train=False)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(x.shape[0], generator=g)
    val = perm[:5000]
    tr = perm[5000:5000 + args.train_subset]
    test = torch.arange(min(args.test_subset, xt.shape[0]))
    return (x[tr], y[tr]), (x[val], y[val]), (xt[test], yt[test])


def timed(fn, reps=7):
    """Minimum of ``reps`` runs after a warm-up (the busy shared machine only adds time)."""
    return min(call_times(fn, reps))


def speed(base, pruned, layers, batch=128):
    """Seconds (min of runs) of each pruned layer, dense-masked vs AFCC (fwd, fwd+bwd), and of
    the whole network's forward; also the thread count, load and time of the measurement."""
    x = torch.randn(batch, 3, 32, 32)
    res = {}
    feats = {}

    def grab(name):
        def h(m, i, o):
            feats[name] = i[0].detach()
        return h

    hs = [pruned.get_submodule(n).register_forward_hook(grab(n)) for n in layers]
    with torch.no_grad():
        pruned.eval()(x)
    for h in hs:
        h.remove()
    for name in layers:
        layer = pruned.get_submodule(name)
        dense = torch.nn.Conv2d(layer.in_channels, layer.out_channels, 3, padding=1)
        with torch.no_grad():
            dense.weight.copy_(layer.masked_weight())
            dense.bias.copy_(layer.bias)
        inp = feats[name].clone().requires_grad_()
        row = {"backend": str(layer.explain(inp).backend), "density": layer.density,
               "input": list(inp.shape)}
        for tag, mod in (("dense", dense), ("afcc", layer)):
            row[f"{tag}_fwd"] = timed(lambda: mod(inp.detach()))
            row[f"{tag}_fwdbwd"] = timed(lambda: mod(inp).sum().backward())
        res[name] = row
    for tag, net in (("dense", base), ("afcc", pruned)):
        net.eval()
        with torch.no_grad():  # min of 10: min of 3 spread 2x on the loaded VM
            res[f"net_{tag}_fwd"] = timed(lambda: net(x), reps=10)
    res["threads"] = torch.get_num_threads()
    res["loadavg_1min"] = os.getloadavg()[0]
    res["measured_utc"] = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
    return res


def summary(records: dict) -> str:
    """Markdown tables of a finished (or partial) run."""
    import statistics as st

    cfg, base = records.get("config", {}), records.get("base", {})
    lines = [f"VGG-11* width {cfg.get('width')} ({base.get('params')} parameters), "
             f"{cfg.get('train_subset')} training images x {cfg.get('epochs')} epochs in "
             f"{base.get('seconds', float('nan')):.0f} s; test accuracy "
             f"{base.get('test_accuracy', float('nan')):.4f} on {cfg.get('test_subset')} images.",
             "", "| method | seeds | density (per layer) | read-out density | accuracy with masks "
             "| after retraining |", "|---|---|---|---|---|---|"]
    for method in ("afcc", "random_afcc"):
        runs = [v for k, v in records.items() if k.startswith(method + "/")]
        if not runs:
            continue
        dens = [" / ".join(f"{r['density']:.3f}" for r in run["layers"]) for run in runs]
        ms = lambda xs: (f"{st.mean(xs):.4f} ± {st.stdev(xs):.4f}" if len(xs) > 1  # noqa: E731
                         else f"{xs[0]:.4f}")
        lines.append(f"| {method} | {len(runs)} | {'; '.join(dens)} | "
                     f"{ms([r['readout_density'] or 1.0 for r in runs])} | "
                     f"{ms([r['accuracy_pruned'] for r in runs])} | "
                     f"{ms([r['accuracy_after'] for r in runs])} |")
    runs = [v for k, v in records.items() if k.startswith("afcc/")]
    if runs:
        lines += ["", "| layer | out x in | density | labels / filter | noise / filter | "
                  "multi-cluster filters |", "|---|---|---|---|---|---|"]
        for r in runs[0]["layers"]:
            lines.append(f"| {r['name']} | {r['shape'][0]}x{r['shape'][1]} | {r['density']:.3f} | "
                         f"{r['mean_labels']:.2f} | {r['mean_noise']:.2f} | "
                         f"{r['multi_cluster_filters']} |")
    sp = records.get("speed")
    if sp:
        lines += ["", "| layer (batch 128) | backend | density | fwd dense / AFCC (ms) | "
                  "fwd+bwd dense / AFCC (ms) |", "|---|---|---|---|---|"]
        for name, r in sp.items():
            if isinstance(r, dict):
                lines.append(f"| {name} {r['input']} | {r['backend']} | {r['density']:.3f} | "
                             f"{r['dense_fwd'] * 1e3:.2f} / {r['afcc_fwd'] * 1e3:.2f} | "
                             f"{r['dense_fwdbwd'] * 1e3:.2f} / {r['afcc_fwdbwd'] * 1e3:.2f} |")
        lines.append(f"\nWhole network, forward, batch 128: dense {sp['net_dense_fwd'] * 1e3:.1f} "
                     f"ms, AFCC {sp['net_afcc_fwd'] * 1e3:.1f} ms.")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="results/afcc")
    p.add_argument("--dataset", default="cifar10")
    p.add_argument("--width", type=float, default=0.125)
    p.add_argument("--train-subset", type=int, default=10000)
    p.add_argument("--test-subset", type=int, default=10000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--retrain-epochs", type=int, default=1)
    p.add_argument("--layers", type=int, default=3, help="prune the last N convs")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--threshold", type=float, default=0.3)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: on a shared 2-core machine more threads "
                        "mostly spin)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (the GPU recipe)")
    p.add_argument("--summary", action="store_true", help="print the tables of --out and exit")
    args = p.parse_args(argv)
    if args.summary:
        print(summary(load(Path(args.out) / "records.json")))
        return
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rec_path = out / "records.json"
    records = load(rec_path)
    machine = platform.processor() or platform.machine()
    records.setdefault("config", vars(args) | {"machine": machine,
                                               "torch": torch.__version__})
    train, val, test = splits(args)
    log = lambda s: print(time.strftime("%H:%M:%S"), s, flush=True)  # noqa: E731
    ckpt = out / "base.pt"
    torch.manual_seed(0)
    dev = torch.device(args.device)
    base = VGG11Star(args.width, num_classes=int(train[1].max()) + 1).to(dev)
    if "base" not in records or not ckpt.exists():
        t = time.perf_counter()
        train_epochs(base, train, args.epochs, lr=0.05, device=dev, seed=0, progress=log)
        torch.save(base.state_dict(), ckpt)
        records["base"] = {"seconds": time.perf_counter() - t,
                           "test_accuracy": accuracy(base, test, dev),
                           "val_accuracy": accuracy(base, val, dev),
                           "params": sum(p.numel() for p in base.parameters())}
        save(rec_path, records)
        log(f"base: {records['base']}")
    base.load_state_dict(torch.load(ckpt, map_location=dev))
    base.eval()
    layers = base.conv_names()[-args.layers:]
    pruned_last = None
    ncls = int(train[1].max()) + 1
    features: dict = {}
    for seed in args.seeds:
        for method in ("afcc", "random_afcc"):
            key = f"{method}/{seed}"
            if key in records:
                continue
            log(f"{key}: pruning {layers}")
            sets = records.get(f"labels/{seed}") if method == "random_afcc" else None
            pruned, rep = prune(base, train, val, layers=layers, threshold=args.threshold,
                                method=method, retrain_epochs=args.retrain_epochs,
                                feature_cache=features,
                                test_data=test, seed=seed, progress=log, device=dev,
                                label_sets={n: torch.tensor(v) for n, v in sets.items()}
                                if sets else None)
            if method == "afcc":
                records[f"labels/{seed}"] = {n: [[j in s for j in range(ncls)] for s in v]
                                             for n, v in rep.label_sets.items()}
            d = rep.as_dict()
            d.pop("label_sets")
            records[key] = d
            save(rec_path, records)
            log(rep.table())
            pruned_last = pruned
    if "speed" not in records:
        if pruned_last is None:  # resumed after pruning: rebuild seed 0's masks, no retraining
            sets = records[f"labels/{args.seeds[0]}"]
            pruned_last, _ = prune(base, train, val, layers=layers, retrain_epochs=0,
                                   test_data=test, device=dev, label_sets={n: torch.tensor(v)
                                                               for n, v in sets.items()})
        records["speed"] = speed(base.cpu(), pruned_last.cpu(), layers)
        save(rec_path, records)
        log(f"speed: {records['speed']}")


if __name__ == "__main__":
    main()
