"""Interleaved re-check of ``scripts/repro_afcc.py``'s speed record (seed 0's AFCC masks).

The repro's ``speed`` takes the minimum of 7 calls per layer and of 10 whole-network forwards,
dense first, then AFCC. This re-check alternates the two ``rounds`` times (``n_f`` forwards and
``n_b`` forward+backwards per layer and turn; ``n_b`` whole-network forwards per turn) and keeps
medians and minima, for both thresholds' runs (results/afcc, results/afcc/threshold_0.6).
Dense = nn.Conv2d holding the masked weight (what the lab's code runs); AFCC = AFCCConv2d.

    /tmp/quiet.sh env OMP_NUM_THREADS=1 python results/afcc/speed_recheck.py 7 60 20 OUT.json
"""
import json, os, statistics as st, sys, time
from pathlib import Path
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
import torch
from shallowkern import AFCCConv2d
from shallowkern.afcc import connection_masks
from shallowkern.models.vgg11 import VGG11Star
from shallowkern.afcc.prune import prune
torch.set_num_threads(1)
rounds, n_f, n_b = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
out = {}
for d in ("results/afcc", "results/afcc/threshold_0.6"):
    r = json.load(open(ROOT / d / "records.json"))
    torch.manual_seed(0)
    base = VGG11Star(0.125, num_classes=10)
    base.load_state_dict(torch.load(ROOT / d / "base.pt")); base.eval()
    names = base.conv_names(); layers = names[-3:]
    sets = {n: torch.tensor(v) for n, v in r["labels/0"].items()}
    x = torch.randn(128, 3, 32, 32)
    feats = {}
    hs = [base.get_submodule(n).register_forward_hook(
        lambda m, i, o, n=n: feats.__setitem__(n, i[0].detach())) for n in layers]
    with torch.no_grad(): base(x)
    for h in hs: h.remove()
    for n in layers:
        conv = base.get_submodule(n)
        mask = connection_masks(sets[n], sets[names[names.index(n) - 1]])
        layer = AFCCConv2d.from_conv(conv, mask)
        dense = torch.nn.Conv2d(conv.in_channels, conv.out_channels, 3, padding=1)
        with torch.no_grad():
            dense.weight.copy_(layer.masked_weight()); dense.bias.copy_(layer.bias)
        inp = feats[n].clone().requires_grad_()
        t = {k: [] for k in ("dense_fwd", "afcc_fwd", "dense_fwdbwd", "afcc_fwdbwd")}
        for mod in (dense, layer):  # warm-up
            mod(inp.detach()); mod(inp).sum().backward()
        for _ in range(rounds):
            for tag, mod in (("dense", dense), ("afcc", layer)):
                for _ in range(n_f):
                    s = time.perf_counter(); mod(inp.detach()); t[f"{tag}_fwd"].append(time.perf_counter() - s)
                for _ in range(n_b):
                    s = time.perf_counter(); mod(inp).sum().backward(); t[f"{tag}_fwdbwd"].append(time.perf_counter() - s)
        row = {k: {"median_ms": st.median(v) * 1e3, "min_ms": min(v) * 1e3, "n": len(v)} for k, v in t.items()}
        row["backend"] = str(layer.explain(inp).backend); row["density"] = layer.density
        out[f"{d}:{n}"] = row
        print(d, n, row["backend"], " ".join(f"{k} {v['median_ms']:.3f}/{v['min_ms']:.3f}" for k, v in row.items() if isinstance(v, dict)), flush=True)
    tiny = (torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8), torch.arange(64) % 10)
    pruned, _ = prune(base, tiny, tiny, layers=layers, retrain_epochs=0, test_data=tiny,
                      label_sets=sets)
    pruned.eval(); t = {"dense": [], "afcc": []}
    with torch.no_grad():
        base(x); pruned(x)
        for _ in range(rounds):
            for tag, net in (("dense", base), ("afcc", pruned)):
                for _ in range(n_b):
                    s = time.perf_counter(); net(x); t[tag].append(time.perf_counter() - s)
    out[f"{d}:net_fwd"] = {k: {"median_ms": st.median(v) * 1e3, "min_ms": min(v) * 1e3, "n": len(v)} for k, v in t.items()}
    print(d, "net_fwd", {k: (round(v["median_ms"], 2), round(v["min_ms"], 2)) for k, v in out[f"{d}:net_fwd"].items()}, flush=True)
out["loadavg_1min"] = os.getloadavg()[0]; out["args"] = sys.argv[1:4]; out["threads"] = torch.get_num_threads()
out["measured_utc"] = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
json.dump(out, open(sys.argv[4], "w"), indent=1)
