"""AFCCConv2d / AFCCLinear: masks enforced in forward, gradients and under optimizers."""

import pytest
import torch
from torch import nn

import shallowkern
from shallowkern import AFCCConv2d, AFCCLinear
from shallowkern.testing import assert_close


def _mask(k, c, seed=0):
    g = torch.Generator().manual_seed(seed)
    lab_o, lab_i = torch.randint(0, 3, (k,), generator=g), torch.randint(0, 3, (c,), generator=g)
    return lab_o[:, None] == lab_i[None, :]


def test_from_conv_matches_masked_dense():
    conv = nn.Conv2d(6, 8, 3, padding=1, dtype=torch.float64)
    m = _mask(8, 6)
    layer = AFCCConv2d.from_conv(conv, m)
    x = torch.randn(2, 6, 5, 5, dtype=torch.float64)
    ref = nn.functional.conv2d(x, conv.weight * m[:, :, None, None], conv.bias, padding=1)
    assert_close(layer(x), ref, torch.float64, reduction=54)
    assert (layer.weight[~m] == 0).all() and layer.density == m.float().mean().item()
    assert set(layer.state_dict()) == {"weight", "bias", "mask"}
    assert "density=" in repr(layer)
    assert layer.explain(x).backend in ("native", "vendor", "reference")


def test_padding_modes_and_plain_state_dict():
    conv = nn.Conv2d(4, 5, 3, padding=1, padding_mode="reflect", dtype=torch.float64)
    m = _mask(5, 4, 1)
    layer = AFCCConv2d.from_conv(conv, m)
    x = torch.randn(1, 4, 6, 6, dtype=torch.float64)
    ref = nn.Conv2d(4, 5, 3, padding=1, padding_mode="reflect", dtype=torch.float64)
    ref.load_state_dict(layer.state_dict(), strict=False)
    assert_close(layer(x), ref(x), torch.float64, reduction=36)
    # loading a dense nn.Conv2d state_dict keeps the mask and re-zeroes pruned weights
    layer.load_state_dict(conv.state_dict())
    assert (layer.weight[~m] == 0).all() and torch.equal(layer.mask, m)


@pytest.mark.parametrize("make_opt", [
    lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4),
    lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1),
    lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=0.1),
    lambda p: torch.optim.RMSprop(p, lr=0.01, momentum=0.5, weight_decay=0.1),
])
def test_pruned_weights_stay_zero_with_optimizers(make_opt):
    torch.manual_seed(0)
    m = _mask(8, 6, 2)
    net = nn.Sequential(AFCCConv2d(6, 8, 3, padding=1, mask=m), nn.ReLU(), nn.Flatten(),
                        AFCCLinear(8 * 16, 3, mask=torch.rand(3, 8) < 0.5))
    opt = make_opt(net.parameters())
    for _ in range(5):
        loss = net(torch.randn(4, 6, 4, 4)).square().mean()
        opt.zero_grad()
        loss.backward()
        assert (net[0].weight.grad[~m] == 0).all()
        opt.step()
    assert (net[0].weight[~m] == 0).all()
    assert (net[3].weight[~net[3].weight_mask] == 0).all()
    assert net[0].weight[m].ne(0).all()


class _Mixing(torch.optim.Optimizer):
    """An optimizer that mixes elements (like Muon's orthogonalisation): writes everywhere."""

    def __init__(self, params):
        super().__init__(params, {})

    @torch.no_grad()
    def step(self, closure=None):
        for g in self.param_groups:
            for p in g["params"]:
                p.add_(1.0)


def test_pruned_weights_stay_zero_with_a_mixing_optimizer():
    m = _mask(8, 6, 3)
    layer = AFCCConv2d(6, 8, 3, mask=m)
    lin = AFCCLinear(12, 2, mask=torch.tensor([[True, False, True], [False, True, False]]))
    _Mixing(list(layer.parameters()) + list(lin.parameters())).step()
    assert (layer.weight[~m] == 0).all() and (layer.weight[m] != 0).all()
    assert (lin.weight[~lin.weight_mask] == 0).all() and lin.weight_mask.sum() == 12


def test_afcc_linear_blocks():
    lin = nn.Linear(8, 3, dtype=torch.float64)
    bm = torch.tensor([[True, False], [False, True], [True, True]])
    a = AFCCLinear.from_linear(lin, bm)
    assert a.block_size == 4 and a.weight_mask.shape == (3, 8)
    x = torch.randn(5, 8, dtype=torch.float64)
    ref = x @ (lin.weight * bm.repeat_interleave(4, 1)).t() + lin.bias
    assert_close(a(x), ref, torch.float64, reduction=8)


def test_bad_masks():
    with pytest.raises(ValueError, match="mask shape"):
        AFCCConv2d(6, 8, 3, mask=torch.ones(6, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="bool or 0/1"):
        AFCCConv2d(6, 8, 3, mask=torch.full((8, 6), 0.5))
    with pytest.raises(ValueError, match="groups"):
        AFCCConv2d(6, 8, 3, groups=2)
    with pytest.raises(ValueError, match="in_blocks"):
        AFCCLinear(10, 3, mask=torch.ones(3, 3, dtype=torch.bool))
    layer = AFCCConv2d(6, 8, 3, mask=torch.ones(8, 6, dtype=torch.long))  # 0/1 ints accepted
    assert layer.mask.dtype == torch.bool


def test_profiler_effective_flops_reads_mask():
    from shallowkern.profile.effective import kept_fraction

    m = _mask(8, 6, 4)
    layer = AFCCConv2d(6, 8, 3, mask=m)
    frac, _ = kept_fraction(layer, "c", None)
    assert abs(frac - m.double().mean().item()) < 1e-9
    lin = AFCCLinear(12, 2, mask=torch.tensor([[True, False, True], [False, True, False]]))
    frac, _ = kept_fraction(lin, "l", None)
    assert abs(frac - 0.5) < 1e-9


def test_compile_module():
    layer = AFCCConv2d(6, 8, 3, padding=1, mask=_mask(8, 6, 5))
    x = torch.randn(2, 6, 5, 5)
    y = torch.compile(layer, fullgraph=True)(x)
    assert_close(y, layer(x), torch.float32, reduction=54)


def test_profile_reports_dense_effective_executed():
    lab = torch.arange(64) % 4  # 4 groups of 16 channels: variable blocks fit exactly
    m = lab[:, None] == lab[None, :]
    net = nn.Sequential(AFCCConv2d(64, 64, 3, padding=1, mask=m), nn.ReLU())
    x = torch.randn(2, 64, 6, 6)
    row = shallowkern.profile(net, x).row("0")
    dense = 2 * 2 * 36 * 64 * 64 * 9
    assert row.flops == dense
    assert row.effective_flops == dense // 4
    if shallowkern.ops.explain("afcc_conv2d", x, net[0].weight, m, None).backend == "native":
        assert row.executed_flops == dense // 4  # group-aligned blocks: no padding
    else:
        assert row.executed_flops == dense  # dense fallback
