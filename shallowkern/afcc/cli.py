"""``shallowkern prune``: AFCC-prune a trained model from the command line, with progress.

    shallowkern prune vgg11:0.125 --checkpoint base.pt --dataset cifar10 --layers 3 \\
        --retrain-epochs 1 --out pruned.pt

Loads the model (a family spec, as ``shallowkern profile`` takes, plus a state_dict checkpoint;
without one it trains ``--train-epochs`` first), runs ``shallowkern.afcc.prune`` and writes the
pruned model's state_dict (with the masks) to ``--out`` and the report as JSON beside it
(``<out>.json``). Progress lines go to stderr. Wire it into ``shallowkern.cli`` with
``add_parser(sub)``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("prune", help="AFCC pruning of a trained model (filter-cluster masks)",
                       description="AFCC: single-filter performance -> label clusters -> "
                                   "kernel-pair masks -> AFCCConv2d layers -> brief retraining.")
    p.add_argument("model", help="model spec, e.g. vgg11:0.125 or vgg16:0.5,bn")
    p.add_argument("--checkpoint", help="state_dict of the trained model (else train first)")
    p.add_argument("--train-epochs", type=int, default=2,
                   help="epochs to train when no --checkpoint is given (default 2)")
    p.add_argument("--dataset", default="cifar10", help="cifar10 (default) or cifar100")
    p.add_argument("--data-root", help="dataset folder (default: SHALLOWKERN_DATA)")
    p.add_argument("--layers", type=int, default=3, help="prune the last N convs (default 3)")
    p.add_argument("--threshold", type=float, default=0.3, help="SFP threshold (default 0.3)")
    p.add_argument("--method", choices=("afcc", "random_afcc"), default="afcc")
    p.add_argument("--retrain-epochs", type=int, default=1)
    p.add_argument("--train-subset", type=int, help="training images (default: all but 5,000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", help="write the pruned state_dict here (+ <out>.json report)")
    p.set_defaults(func=cmd_prune)
    return p


def cmd_prune(args: argparse.Namespace) -> int:
    import torch

    from ..data import load_dataset
    from ..models.registry import parse_model_spec
    from .prune import accuracy, prune, train_epochs

    def say(line: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {line}", file=sys.stderr, flush=True)

    fam, params = parse_model_spec(args.model)
    x, y = load_dataset(args.dataset, args.data_root, train=True)
    xt, yt = load_dataset(args.dataset, args.data_root, train=False)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(x.shape[0], generator=g)
    val, tr = perm[:5000], perm[5000:]
    if args.train_subset:
        tr = tr[:args.train_subset]
    train, valid, test = (x[tr], y[tr]), (x[val], y[val]), (xt, yt)
    torch.manual_seed(args.seed)
    model = fam.build_model(params, in_channels=x.shape[1], input_size=x.shape[2],
                            num_classes=int(y.max()) + 1).to(args.device)
    if args.checkpoint:
        model.load_state_dict(torch.load(args.checkpoint, map_location=args.device))
    else:
        say(f"no --checkpoint: training {args.model} for {args.train_epochs} epoch(s)")
        train_epochs(model, train, args.train_epochs, lr=0.05, device=args.device,
                     seed=args.seed, progress=say)
        say(f"test accuracy {accuracy(model, test, args.device):.4f}")
    convs = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    pruned, report = prune(model, train, valid, layers=convs[-args.layers:],
                           threshold=args.threshold, method=args.method,
                           retrain_epochs=args.retrain_epochs, test_data=test,
                           device=args.device, seed=args.seed, progress=say)
    print(report.table())
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        torch.save(pruned.state_dict(), out)
        rep = report.as_dict()
        rep["model"] = args.model
        out.with_suffix(out.suffix + ".json").write_text(json.dumps(rep, indent=1))
        say(f"wrote {out} and {out}.json")
    return 0
