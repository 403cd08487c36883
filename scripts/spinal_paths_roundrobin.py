"""Round-robin timing of spinal_linear's two C++ CPU paths against the eager chain.

    python scripts/spinal_paths_roundrobin.py [--train] [--only=NAME ...] THREADS SECONDS B,F,W ...

--only=native|vendor|eager times just those (e.g. one provider per process, so that no provider's
frees move glibc's dynamic mmap threshold for another: the B = 1 training rows depend on it).

native = row blocks, vendor = BLAS chain (both called as the registered op with that backend
string), eager = the SpinalNet scripts' torch.cat composition (benchmarks/test_bench_spinal_linear.py).
Each round times every variant once, so load drifts hit all of them alike; medians over rounds
(at least 3, then until SECONDS per case). fp32, 4 layers, 2 splits, ReLU, 10 outputs; inference
(no_grad), or with --train forward + gradients of x and every weight. Run it under /tmp/quiet.sh
on the shared machine. Used to set BLAS_CHAIN_MIN_MACS (shallowkern/ops/spinal_linear.py);
output: benchmarks/results/spinal/cpu-roundrobin-paths-*.txt.
"""

import statistics
import sys
import time

import torch
import torch.nn.functional as F

import shallowkern  # noqa: F401  (registers the ops)
from shallowkern.ops.spinal_linear import split_sizes

args = [a for a in sys.argv[1:] if not a.startswith("--")]
only = [a[7:] for a in sys.argv[1:] if a.startswith("--only=")]
train = "--train" in sys.argv
thr, budget = int(args[0]), float(args[1])
torch.set_num_threads(thr)
L, S, O = 4, 2, 10
for case in args[2:]:
    B, Fi, W = map(int, case.split(","))
    sizes = split_sizes(Fi, S)
    offs = [0, sizes[0], Fi]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, Fi, generator=g)
    wx = [torch.randn(W, sizes[i % S], generator=g) * 0.01 for i in range(L)]
    wh = [torch.randn(W, W, generator=g) * 0.01 for _ in range(L - 1)]
    b = [torch.randn(W, generator=g) for _ in range(L)]
    wo, bo = torch.randn(O, L * W, generator=g) * 0.01, torch.zeros(O)
    cat = [wx[0].clone()] + [torch.cat([wx[i], wh[i - 1]], 1) for i in range(1, L)]
    leaves, eleaves = [x, *wx, *wh, *b, wo, bo], [x, *cat, *b, wo, bo]
    for t in {id(t): t for t in leaves + eleaves}.values():
        t.requires_grad_(train)
    op = torch.ops.shallowkern.spinal_linear

    def eager():
        hs = []
        for i in range(L):
            xs = x[:, offs[i % S]:offs[i % S + 1]]
            inp = xs if i == 0 else torch.cat([xs, hs[-1]], 1)
            hs.append(F.relu(F.linear(inp, cat[i], b[i])))
        y = F.linear(torch.cat(hs, 1), wo, bo)
        return torch.autograd.grad(y.sum(), eleaves) if train else y

    def ours(path):
        def f():
            y = op(x, wx, wh, b, wo, bo, S, "relu", path)
            return torch.autograd.grad(y.sum(), leaves) if train else y
        return f

    fns = {"native": ours("native"), "vendor": ours("vendor"), "eager": eager}
    fns = {k: f for k, f in fns.items() if not only or k in only}
    with torch.set_grad_enabled(train):
        if not train:
            y0 = eager()
            for k, f in fns.items():
                assert (f() - y0).abs().max().item() < 1e-3, k
        for f in fns.values():
            f()
        ts = {k: [] for k in fns}
        t_end, rounds = time.perf_counter() + budget, 0
        while rounds < 3 or (time.perf_counter() < t_end and rounds < 2000):
            for k, f in fns.items():
                a = time.perf_counter()
                f()
                ts[k].append(time.perf_counter() - a)
            rounds += 1
    med = {k: statistics.median(v) * 1e6 for k, v in ts.items()}
    if only:
        print(f"{'fwdbwd ' if train else ''}thr={thr} {case:14s} rounds={rounds:4d} " +
              " ".join(f"{k}={v:10.1f}" for k, v in med.items()), flush=True)
        continue
    print(f"{'fwdbwd ' if train else ''}thr={thr} {case:14s} rounds={rounds:4d} "
          f"native={med['native']:10.1f} vendor={med['vendor']:10.1f} eager={med['eager']:10.1f}  "
          f"nat/eag={med['eager'] / med['native']:.2f}x ven/eag={med['eager'] / med['vendor']:.2f}x",
          flush=True)
