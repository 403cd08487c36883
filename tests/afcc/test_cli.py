"""The prune command's function (shallowkern.afcc.cli) on synthetic data."""

import argparse
import json

import torch

import shallowkern.data
from shallowkern.afcc import cli


def _fake_load(name, root=None, train=True):
    g = torch.Generator().manual_seed(int(train))
    n = 5300 if train else 200
    y = torch.randint(0, 4, (n,), generator=g)
    x = torch.randint(0, 60, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    x[torch.arange(n), y % 3] += 150
    return x, y


def test_cmd_prune(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(shallowkern.data, "load_dataset", _fake_load)
    parser = argparse.ArgumentParser()
    cli.add_parser(parser.add_subparsers())
    out = tmp_path / "pruned.pt"
    args = parser.parse_args(["prune", "vgg11:0.0625", "--train-epochs", "1", "--train-subset",
                              "200", "--layers", "2", "--retrain-epochs", "0", "--out", str(out)])
    assert args.func(args) == 0
    assert "features.30" in capsys.readouterr().out
    rep = json.loads(out.with_suffix(".pt.json").read_text())
    assert rep["model"] == "vgg11:0.0625" and len(rep["layers"]) == 2
    state = torch.load(out)
    assert "features.30.mask" in state and "classifier.block_mask" in state
