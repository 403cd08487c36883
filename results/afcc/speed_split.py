"""Where the AFCC op's per-layer loss on the CIFAR-10 masks goes (seed 0, threshold 0.3).

Alternates, ``rounds`` times, ``n_f`` forwards and ``n_b`` forward+backwards of: an nn.Conv2d
holding the pre-masked weight ("premasked", what the lab's code runs), eager
``F.conv2d(x, w * mask, b)`` ("eager_mul": pays the weight multiply) and ``AFCCConv2d``
("afcc": multiply + mask check + dispatch), on features.24 and features.27; medians and minima.

    /tmp/quiet.sh env OMP_NUM_THREADS=1 python results/afcc/speed_split.py 7 60 20 OUT.json
"""
import json, os, statistics as st, sys, time
from pathlib import Path
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from shallowkern import AFCCConv2d  # noqa: E402
from shallowkern.afcc import connection_masks  # noqa: E402
from shallowkern.models.vgg11 import VGG11Star  # noqa: E402
torch.set_num_threads(1)
rounds, n_f, n_b = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
r = json.load(open(ROOT / "results/afcc/records.json"))
torch.manual_seed(0)
base = VGG11Star(0.125, num_classes=10)
base.load_state_dict(torch.load(ROOT / "results/afcc/base.pt")); base.eval()
names = base.conv_names()
sets = {n: torch.tensor(v) for n, v in r["labels/0"].items()}
out = {"args": sys.argv[1:4]}
for n in ("features.24", "features.27"):
    conv = base.get_submodule(n)
    layer = AFCCConv2d.from_conv(conv, connection_masks(sets[n], sets[names[names.index(n) - 1]]))
    pre = torch.nn.Conv2d(conv.in_channels, conv.out_channels, 3, padding=1)
    with torch.no_grad():
        pre.weight.copy_(layer.masked_weight()); pre.bias.copy_(layer.bias)
    m = layer.mask.to(layer.weight.dtype).view(*layer.mask.shape, 1, 1)
    inp = torch.randn(128, conv.in_channels, 4, 4).requires_grad_()
    prov = {"premasked": pre, "afcc": layer,
            "eager_mul": lambda x: F.conv2d(x, layer.weight * m, layer.bias, padding=1)}
    t = {f"{k}_{p}": [] for k in prov for p in ("fwd", "fwdbwd")}
    for f in prov.values():
        f(inp.detach()); f(inp).sum().backward()
    for _ in range(rounds):
        for k, f in prov.items():
            for _ in range(n_f):
                s = time.perf_counter(); f(inp.detach()); t[f"{k}_fwd"].append(time.perf_counter() - s)
            for _ in range(n_b):
                s = time.perf_counter(); f(inp).sum().backward()
                t[f"{k}_fwdbwd"].append(time.perf_counter() - s)
    out[n] = {k: {"median_ms": st.median(v) * 1e3, "min_ms": min(v) * 1e3, "n": len(v)}
              for k, v in t.items()}
    print(n, " ".join(f"{k} {v['median_ms']:.3f}/{v['min_ms']:.3f}" for k, v in out[n].items()),
          flush=True)
out["loadavg_1min"] = os.getloadavg()[0]; out["threads"] = torch.get_num_threads()
out["measured_utc"] = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
json.dump(out, open(sys.argv[4], "w"), indent=1)
