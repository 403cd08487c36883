"""Epoch checkpoints: a trial killed mid-training resumes at its next epoch and ends
bit-identical to an uninterrupted run; the checkpoint is dropped once the record is stored."""

from __future__ import annotations

import os
import signal
import sys

import pytest
import torch

from shallowkern.sweep import TrialConfig, run_sweep
from shallowkern.sweep.store import checkpoint_path, load_results
from shallowkern.sweep.trial import build_model, load_data, run_trial
from shallowkern.train import get_recipe, make_splits, train_and_evaluate

OVER = {"epochs": 4, "lr_step": 2, "train_subset": 300, "val_size": 100, "batch_size": 50}
CFG = TrialConfig("lenet", d1=3, dataset="synthetic", recipe="quick", overrides=OVER, seed=1)


class _Killed(Exception):
    pass


def _setup():
    torch.manual_seed(CFG.seed)
    model = build_model(CFG)
    recipe = get_recipe(CFG.recipe, CFG.overrides)
    train, test = load_data(CFG.dataset, None)
    return model, recipe, make_splits(train, test, recipe)


def _train(ckpt=None, kill_after=None):
    model, recipe, splits = _setup()

    def progress(epoch, row):
        if epoch == kill_after:
            raise _Killed

    res = train_and_evaluate(model, splits, recipe, "cpu", seed=CFG.seed, progress=progress,
                             checkpoint=ckpt)
    return res, model


def _same(a, b):
    ra, ma = a
    rb, mb = b
    assert ra["history"] == rb["history"]
    for k in ("train_error", "val_error", "test_error", "best_epoch"):
        assert ra[k] == rb[k], k
    for (ka, va), (kb, vb) in zip(ma.state_dict().items(), mb.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka


@pytest.mark.parametrize("kill_after", [1, 3])
def test_killed_run_resumes_bit_identical(tmp_path, kill_after):
    torch.set_num_threads(1)
    straight = _train()
    ckpt = tmp_path / "t.pt"
    with pytest.raises(_Killed):
        _train(ckpt, kill_after=kill_after)
    assert ckpt.exists()
    resumed = _train(ckpt)
    _same(straight, resumed)
    assert straight[0]["resumed_at"] == [] and resumed[0]["resumed_at"] == [kill_after]
    assert resumed[0]["train_time"] >= 0


def test_foreign_or_corrupt_checkpoint_starts_afresh(tmp_path):
    torch.set_num_threads(1)
    straight = _train()
    ckpt = tmp_path / "t.pt"
    ckpt.write_bytes(b"torn \x00 file")
    with pytest.warns(RuntimeWarning, match="unreadable"):
        _same(straight, _train(ckpt))
    # a checkpoint of another run (different seed) is not resumed from
    model, recipe, splits = _setup()
    with pytest.raises(_Killed), pytest.warns(RuntimeWarning, match="recipe, seed or model"):
        train_and_evaluate(model, splits, recipe, "cpu", seed=CFG.seed + 1, checkpoint=ckpt,
                           progress=lambda e, r: (_ for _ in ()).throw(_Killed))
    with pytest.warns(RuntimeWarning, match="recipe, seed or model"):
        res = _train(ckpt)
    _same(straight, res)
    assert res[0]["resumed_at"] == []


def test_checkpoint_needs_device_pipeline(tmp_path):
    model, recipe, splits = _setup()
    with pytest.raises(ValueError, match="checkpoint needs pipeline='device'"):
        train_and_evaluate(model, splits, recipe, "cpu", seed=0, pipeline="host",
                           checkpoint=tmp_path / "c.pt")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork")
def test_sweep_resumes_a_sigkilled_trial_and_drops_its_checkpoint(tmp_path):
    """A driver SIGKILLed after epoch 2 of the trial leaves the checkpoint; the next sweep
    resumes from it, stores a record equal to an uninterrupted run's, and deletes it."""
    results = tmp_path / "r.jsonl"
    straight = run_trial(CFG)
    pid = os.fork()
    if pid == 0:  # child: a trial that dies by SIGKILL right after saving epoch 2
        code = 70
        try:
            import shallowkern.train as tr

            save = tr._save_checkpoint

            def save_then_die(path, state):
                save(path, state)
                if state["epoch"] == 2:
                    os.kill(os.getpid(), signal.SIGKILL)

            tr._save_checkpoint = save_then_die
            run_trial(CFG, results=str(results))
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    ckpt = checkpoint_path(results, CFG.trial_id)
    assert ckpt.exists() and not results.exists()
    summary = run_sweep([CFG], results, workers=0, progress=False)
    assert summary.ok, summary.describe()
    (rec,) = load_results(results).records
    assert rec["resumed_at"] == [2]
    assert rec["history"] == straight["history"]
    assert rec["test_error"] == straight["test_error"]
    assert not ckpt.exists()
