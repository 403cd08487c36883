"""shallowkern.profile: FLOPs against closed forms, effective FLOPs, uncounted ops, meta, I/O."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from shallowkern.models.shallow import GeneralizedLeNet, GeneralizedVGG16
from shallowkern.profile import (EXECUTED_FLOP_REGISTRY, ProfileResult, Roofline, profile,
                                 register_executed_flop_formula)
from shallowkern.profile import roofline as roofline_mod

# A fixed roofline keeps tests from measuring the (shared, noisy) CPU.
ROOF = Roofline(flops_per_s=1e11, bytes_per_s=1e10, name="test")
BATCH = 2


def lenet_macs(d1: int, d2: int) -> int:
    """Multiply-adds of GeneralizedLeNet per 32x32x3 image (Meir et al. 2023)."""
    return 58_800 * d1 + 2_500 * d1 * d2 + 3_000 * d2 + 10_920


def lenet_layer_macs(d1: int, d2: int) -> dict[str, int]:
    return {"features.0": 28 * 28 * d1 * 3 * 25, "features.1": 10 * 10 * d2 * d1 * 25,
            "classifier.0": 25 * d2 * 120, "classifier.2": 120 * 84, "classifier.4": 84 * 10}


def run(model, x, **kw):
    kw.setdefault("latency", False)
    kw.setdefault("roofline", ROOF)
    return profile(model, x, **kw)


@pytest.mark.parametrize("d1,d2", [(1, 1), (3, 5), (4, 11)])
def test_lenet_matches_closed_form(d1, d2):
    model = GeneralizedLeNet(d1, d2)
    r = run(model, torch.randn(BATCH, 3, 32, 32))
    assert r.totals.flops == 2 * BATCH * lenet_macs(d1, d2)
    assert r.totals.macs == BATCH * lenet_macs(d1, d2)
    assert r.row("").flops == r.totals.flops and r.totals.flops_backward == 0
    assert r.totals.params == r.row("").params == sum(p.numel() for p in model.parameters())
    for name, macs in lenet_layer_macs(d1, d2).items():
        row = r.row(name)
        assert row.macs == BATCH * macs and row.flops == 2 * BATCH * macs, name
        assert row.params == sum(p.numel() for p in model.get_submodule(name).parameters())
    assert r.row("features.0").flops_by_op == {"shallowkern.wide_conv2d": 2 * BATCH * 58_800 * d1}
    # the ReLUs do work without a formula; views (flatten, Linear's t) are not listed
    assert r.uncounted == {"aten.relu": 2}
    assert r.row("classifier.1").uncounted == {"aten.relu": 1}
    assert r.totals.effective_flops == r.totals.executed_flops == r.totals.flops
    assert r.totals.bytes > 0 and r.warnings == []


def test_rows_agree_with_layer_report_on_meta():
    with torch.device("meta"):
        model = GeneralizedVGG16(width=0.25, fc=(64,))
    r = run(model, torch.empty(BATCH, 3, 32, 32, device="meta"))
    report = model.layer_report()
    assert len(report) == 15
    for entry in report:
        assert r.row(entry["name"]).macs == BATCH * entry["macs"], entry["name"]
    assert r.totals.macs == BATCH * sum(e["macs"] for e in report)


def test_meta_device_huge_width():
    with torch.device("meta"):
        model = GeneralizedLeNet(d1=2048)  # d2 = 5734: conv2 alone would be 1.2 GB of fp32
    x = torch.empty(4, 3, 32, 32, device="meta")
    r = profile(model, x)
    assert r.totals.macs == 4 * lenet_macs(2048, model.d2)
    assert r.latency is None and any("latency skipped" in n for n in r.notes)
    assert r.roofline is None and r.device == "meta"
    rb = profile(model, x, backward=True)  # autograd on meta too
    assert rb.totals.flops_backward == 2 * rb.totals.flops_forward - 2 * 4 * 58_800 * 2048
    h100 = profile(model, x, device="NVIDIA H100 80GB HBM3", latency=False)
    assert h100.roofline.flops_per_s == 67e12 and "datasheet" in h100.roofline.source  # fp32
    assert h100.bound == "compute"
    assert h100.time_floor_s == pytest.approx(h100.totals.flops / 67e12)
    with torch.device("meta"):
        bf16 = GeneralizedLeNet(d1=2048).to(torch.bfloat16)
    r = profile(bf16, x.to(torch.bfloat16), device="NVIDIA H200", latency=False)
    assert r.roofline.flops_per_s == 788e12 and r.roofline.bytes_per_s == 4.3e12


def test_backward_flops_conv1_input_needs_no_grad():
    model = GeneralizedLeNet(4, 6)
    x = torch.randn(BATCH, 3, 32, 32)
    r = run(model, x, backward=True)
    fwd = {n: 2 * BATCH * m for n, m in lenet_layer_macs(4, 6).items()}
    for name, f in fwd.items():
        row = r.row(name)
        assert row.flops_forward == f, name
        # x needs no grad, so conv1 computes only its weight gradient (aten skips grad_input);
        # every other layer computes both: 2x its forward.
        assert row.flops_backward == (f if name == "features.0" else 2 * f), name
    total = sum(fwd.values())
    assert r.totals.flops_forward == total
    assert r.totals.flops_backward == 2 * total - fwd["features.0"]
    assert r.row("").flops_backward == r.totals.flops_backward  # all attributed to the model
    assert all(p.grad is None for p in model.parameters())  # profile leaves .grad alone
    assert "aten.threshold_backward" in r.uncounted  # ReLU's backward, listed

    r2 = run(model, x.clone().requires_grad_(), backward=True)
    assert r2.row("features.0").flops_backward == 2 * fwd["features.0"]
    assert r2.totals.flops_backward == 2 * total


def test_effective_flops_drop_by_zeroed_kernel_pairs():
    torch.manual_seed(0)
    model = GeneralizedLeNet(4, 6)
    x = torch.randn(BATCH, 3, 32, 32)
    with torch.no_grad():  # zero 5 of conv2's 6*4 = 24 (out, in) kernels
        for k, c in [(0, 0), (0, 3), (2, 1), (5, 2), (5, 3)]:
            model.features[1].weight[k, c] = 0
        model.features[1].weight[1, 1, 0, 0] = 0  # a single zero weight: the kernel still runs
    r = run(model, x)
    conv2 = r.row("features.1")
    assert conv2.kept_fraction == pytest.approx(19 / 24)
    assert conv2.effective_flops == conv2.flops * 19 // 24
    assert conv2.executed_flops == conv2.flops  # dense kernels run the zeros anyway
    saved = conv2.flops - conv2.effective_flops
    assert r.row("features").effective_flops == r.row("features").flops - saved
    assert r.totals.effective_flops == r.totals.flops - saved
    assert r.row("features.0").effective_flops == r.row("features.0").flops

    # a per-output mask passed in, and a weight_mask buffer from torch.nn.utils.prune
    mask = torch.tensor([True, False, True, True])
    prune.random_unstructured(model.classifier[2], "weight", amount=0.25)  # 2520 of 10080
    r = run(model, x, masks={"features.0": mask})
    assert r.row("features.0").effective_flops == r.row("features.0").flops * 3 // 4
    fc2 = r.row("classifier.2")
    assert fc2.effective_flops == fc2.flops * 3 // 4
    assert r.totals.effective_flops == r.totals.flops - sum(
        r.row(n).flops - r.row(n).effective_flops for n in ("features.0", "features.1",
                                                            "classifier.2"))


def test_uncounted_ops_listed_and_silent_zeros_flagged():
    class CumSum(nn.Module):
        def forward(self, x):
            return torch.cumsum(x, dim=1).t().contiguous().t()

    model = nn.Sequential(nn.Linear(8, 16), CumSum(), nn.LayerNorm(16))
    r = run(model, torch.randn(3, 8))
    assert r.uncounted["aten.cumsum"] == 1 and r.row("1").uncounted["aten.cumsum"] == 1
    assert "aten.clone" in r.uncounted  # .contiguous() copies: real work
    assert not {"aten.t", "aten.transpose", "aten.view", "aten.detach"} & set(r.uncounted)
    assert r.row("0").flops == 2 * 3 * 8 * 16
    # LayerNorm has parameters and computes, but no FLOP formula: flagged, never a silent 0
    assert r.row("2").flagged and r.row("2").flops == 0
    assert any(w.startswith("2 (LayerNorm)") and "native_layer_norm" in w for w in r.warnings)
    assert not r.row("1").flagged  # no parameters: listed as uncounted only
    assert "(!)" in r.table()


def test_executed_flops_from_a_registered_formula():
    addmm = torch.ops.aten.addmm
    try:
        @register_executed_flop_formula(addmm)
        def _half(inp, a, b, out_val=None, **kw):  # a pretend 2:4 sparse kernel
            return a.shape[0] * a.shape[1] * b.shape[1]

        r = run(nn.Sequential(nn.Linear(8, 4), nn.ReLU()), torch.randn(2, 8))
    finally:
        EXECUTED_FLOP_REGISTRY.pop(addmm, None)
    assert r.row("0").executed_flops == r.row("0").flops // 2 == 64
    assert r.totals.executed_flops == 64 and r.totals.effective_flops == 128


def test_table_renders():
    r = run(GeneralizedLeNet(2, 3), torch.randn(BATCH, 3, 32, 32))
    text = r.table()
    assert "2 FLOPs per multiply-add" in text and "MACs" in text and "Eff. FLOPs" in text
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("Module"))
    body = lines[header:header + len(r.rows) + 2]
    assert body[-1].startswith("Total")
    assert [line.split()[0] for line in body[1:-1]] == ["GeneralizedLeNet"] + [
        row.name for row in r.rows[1:]]
    macs_col = lines[header].index("MACs") + len("MACs")  # right-aligned under its header
    assert all(line[macs_col - 1] != " " for line in body[1:])
    assert "aten.relu x2" in text
    assert "features.1" not in r.table(depth=1)


def test_latency_cpu_and_json_round_trip():
    model = GeneralizedLeNet(2, 3)
    r = profile(model, torch.randn(BATCH, 3, 32, 32), warmup=1, repeats=3, roofline=ROOF,
                backward=True)
    assert r.latency is not None and r.latency.median_s > 0 and r.latency.backward
    assert r.latency.calls >= 1 and "blocked_autorange" in r.latency.method
    assert r.roofline_pct is not None and r.roofline_pct > 0
    assert r.time_floor_s == pytest.approx(max(r.totals.executed_flops / 1e11,
                                               r.totals.bytes / 1e10))
    s = r.to_json()
    assert json.loads(s) == r.to_dict()
    back = ProfileResult.from_json(s)
    assert back == r and back.table() == r.table()
    assert json.loads(s)["rows"][2]["macs"] == r.rows[2].macs


def test_measured_cpu_roofline_is_cached():
    a, note = roofline_mod.for_device("cpu", torch.float32)
    b, _ = roofline_mod.for_device(torch.device("cpu"), torch.float32)
    assert note is None and a is b
    assert a.flops_per_s > 1e8 and a.bytes_per_s > 1e8 and "measured now" in a.source


def test_bad_input():
    model = GeneralizedLeNet(1, 1)
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(TypeError, match="model must be"):
        profile(lambda t: t, x)
    for bad in ([1.0, 2.0], x.numpy(), {"x": x}, None):
        with pytest.raises(TypeError, match="example_input"):
            profile(model, bad)
    with pytest.raises(ValueError, match="warmup"):
        profile(model, x, warmup=-1)
    with pytest.raises(ValueError, match="repeats"):
        profile(model, x, repeats=0)
    with pytest.raises(TypeError, match="roofline"):
        profile(model, x, roofline=1e12)
    with pytest.raises(ValueError, match="flops_per_s"):
        Roofline(flops_per_s=-1.0, bytes_per_s=1e9)
    with pytest.raises(ValueError, match="one device"):
        profile(model, x.to("meta"))
    with pytest.raises(ValueError, match="move them first"):
        profile(model, x, device="meta")
    with pytest.raises(ValueError, match="no module 'conv9'"):
        profile(model, x, masks={"conv9": torch.ones(1, dtype=torch.bool)})
    with pytest.raises(ValueError, match="shape"):
        profile(model, x, masks={"features.0": torch.ones(2, 2, dtype=torch.bool)})
    with pytest.raises(ValueError, match="no conv/linear weight"):
        profile(model, x, masks={"classifier.1": torch.ones(1, dtype=torch.bool)})
    with pytest.raises(TypeError, match="must be a tensor"):
        profile(model, x, masks={"features.0": [True]})
    frozen = GeneralizedLeNet(1, 1).requires_grad_(False)
    with pytest.raises(ValueError, match="requires grad"):
        profile(frozen, x, backward=True)
