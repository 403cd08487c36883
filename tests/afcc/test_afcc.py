"""AFCC functions on hand-made SFP matrices and masks with known answers."""

import math

import pytest
import torch

from shallowkern import afcc


def _sfp(blocks, nl=6, noise=(), diag_scale=None):
    """(L, L) matrix with 1.0 on each block x block, 0.1 elsewhere, plus single noise ones."""
    v = torch.full((nl, nl), 0.1, dtype=torch.float64)
    for bl in blocks:
        idx = torch.tensor(bl)
        v[idx.unsqueeze(1), idx.unsqueeze(0)] = 1.0
    for i, j in noise:
        v[i, j] = 0.8
    if diag_scale:
        for j, s in diag_scale.items():
            v[j, j] = s
    return v


def test_single_cluster_and_noise():
    v = torch.stack([_sfp([[0, 2]]), _sfp([[4]], noise=[(1, 3)])])
    fc = afcc.clusters(v, 0.3)
    assert fc.clusters[0] == [frozenset({0, 2})]
    assert fc.clusters[1] == [frozenset({4})]
    assert fc.noise.tolist() == [0, 1]
    assert fc.labels[0].nonzero().flatten().tolist() == [0, 2]
    assert fc.labels[1].nonzero().flatten().tolist() == [4]


def test_several_clusters_union():
    # two disjoint clusters {0,1} and {3,4,5}; the cross entries are below threshold
    v = _sfp([[0, 1], [3, 4, 5]], diag_scale={0: 0.9, 1: 0.9})[None]
    fc = afcc.clusters(v, 0.3)
    assert fc.clusters[0] == [frozenset({3, 4, 5}), frozenset({0, 1})]  # strongest seed first
    assert fc.labels[0].tolist() == [True, True, False, True, True, True]
    assert fc.noise.tolist() == [0]
    assert fc.summary()["multi_cluster_filters"] == 1


def test_partial_block_is_split_and_off_block_is_noise():
    # 0-1 and 1-2 confused but 0-2 not: greedy from the strongest seed 0 takes {0,1}; 2 alone.
    v = _sfp([[0, 1], [1, 2]], diag_scale={0: 1.0, 1: 0.95, 2: 0.9})[None]
    fc = afcc.clusters(v, 0.3)
    assert fc.clusters[0] == [frozenset({0, 1}), frozenset({2})]
    assert fc.noise.tolist() == [2]  # (1,2) and (2,1) lie outside both sub-blocks


def test_threshold_and_no_diagonal():
    v = _sfp([], noise=[(0, 1)])[None]  # only an off-diagonal one: no cluster, noise 1
    fc = afcc.clusters(v, 0.3)
    assert fc.clusters[0] == [] and fc.noise.tolist() == [1] and not fc.labels.any()
    with pytest.raises(ValueError, match="threshold"):
        afcc.clusters(v, 0.0)
    with pytest.raises(ValueError, match="sfp must be"):
        afcc.clusters(v[0], 0.3)


def test_single_filter_performance_known_answer():
    # 2 filters, 1 position, 3 classes. Filter 0 fires on label 0 images, filter 1 on label 2.
    h = torch.tensor([[[1.0], [0.0]], [[0.0], [0.0]], [[0.0], [2.0]]])  # (B=3, F=2, S=1)
    y = torch.tensor([0, 1, 2])
    w = torch.tensor([[1.0, 0.0], [0.5, 0.0], [0.0, 1.0]])  # (classes, F*S)
    v = afcc.single_filter_performance(h, y, w, normalize=False)
    assert v.shape == (2, 3, 3)
    assert v[0].tolist() == [[1.0, 0.5, 0.0], [0, 0, 0], [0, 0, 0]]
    assert v[1].tolist() == [[0, 0, 0], [0, 0, 0], [0.0, 0.0, 2.0]]
    vn = afcc.single_filter_performance(h, y, w)
    assert vn[1, 2, 2] == 1.0 and vn[0, 0, 1] == 0.5
    fc = afcc.clusters(vn, 0.3)
    assert fc.clusters == [[frozenset({0})], [frozenset({2})]] and fc.noise.tolist() == [1, 0]


def test_sfp_matches_loop_with_spatial_positions():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(20, 3, 2, 2, generator=g)
    y = torch.randint(0, 4, (20,), generator=g)
    w = torch.randn(4, 12, generator=g)
    v = afcc.single_filter_performance(h, y, w, normalize=False)
    hf = h.flatten(2).double()
    wf = w.double().view(4, 3, 4)
    for n in range(3):
        for l in range(4):
            for c in range(4):
                want = sum((wf[c, n] * hf[b, n]).sum() for b in range(20) if y[b] == l)
                assert math.isclose(v[n, l, c].item(), float(want), abs_tol=1e-9)


def test_sfp_bad_input():
    with pytest.raises(ValueError, match="weight must be"):
        afcc.single_filter_performance(torch.randn(4, 3, 2), torch.zeros(4, dtype=torch.long),
                                       torch.randn(5, 5))
    with pytest.raises(ValueError, match="labels must"):
        afcc.single_filter_performance(torch.randn(4, 3, 2), torch.zeros(3, dtype=torch.long),
                                       torch.randn(5, 6))


def test_connection_masks():
    out_l = torch.tensor([[1, 0, 0], [0, 1, 1], [0, 0, 0]], dtype=torch.bool)
    in_l = torch.tensor([[1, 1, 0], [0, 0, 1]], dtype=torch.bool)
    m = afcc.connection_masks(out_l, in_l)
    assert m.tolist() == [[True, False], [True, True], [False, False]]
    r = afcc.connection_masks(in_l)  # read-out (classes, filters)
    assert r.tolist() == [[True, False], [True, False], [False, True]]
    with pytest.raises(ValueError, match="labels"):
        afcc.connection_masks(out_l, torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="bool or 0/1"):
        afcc.connection_masks(torch.full((2, 3), 0.5))


def test_random_labels_balanced():
    g = torch.Generator().manual_seed(1)
    m = afcc.random_labels(1000, 100, 5, g)
    assert (m.sum(1) == 5).all()
    counts = m.sum(0)
    assert counts.max() - counts.min() <= 1 and counts.sum() == 5000


def test_random_masks_density_5_of_100():
    g = torch.Generator().manual_seed(2)
    sets, masks = afcc.random_masks([512, 512], 100, 5, g, readout=True)
    expected = 1 - math.comb(95, 5) / math.comb(100, 5)
    assert abs(expected - 0.2304) < 1e-3
    assert abs(masks[0].double().mean().item() - expected) < 0.01
    assert masks[1].shape == (100, 512) and masks[1].sum() == 5 * 512


def test_channel_permutation_block_diagonal():
    g = torch.Generator().manual_seed(3)
    lab = torch.zeros(40, 4, dtype=torch.bool)
    lab[torch.arange(40), torch.randint(0, 4, (40,), generator=g)] = True
    mask = afcc.connection_masks(lab, lab)
    p = afcc.channel_permutation(lab)
    assert sorted(p.tolist()) == list(range(40))
    pm = mask[p][:, p]
    # after ordering every kept pair lies in a diagonal block: rows with equal label are contiguous
    dom = lab[p].float().argmax(1)
    assert (dom[1:] >= dom[:-1]).all()
    assert torch.equal(pm, dom[:, None] == dom[None, :])
