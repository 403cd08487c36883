"""Resumable sweeps: trial configs with stable ids, the trial function, a JSONL result store with
an SQLite index and CSV export, a local multi-process scheduler, and submitit/Ray backends.

    from shallowkern.sweep import get_preset, run_sweep
    summary = run_sweep(get_preset("quick"), "quick.jsonl", workers=1)

See docs/sweeps.md.
"""

from .config import SCHEMA_VERSION, TrialConfig, canonical_json, trial_id
from .presets import (PRESETS, describe_preset, estimate, get_preset, lenet_grid,
                      register_preset, vgg_grid)
from .scheduler import SweepSummary, run_sweep, visible_gpus
from .store import append_record, completed_ids, export_csv, index, read_csv, read_records
from .trial import build_model, run_trial

__all__ = [
    "FAMILIES", "PRESETS", "SCHEMA_VERSION", "SweepSummary", "TrialConfig", "append_record",
    "build_model", "canonical_json", "completed_ids", "describe_preset", "estimate",
    "export_csv", "get_preset", "index", "lenet_grid", "read_csv", "read_records",
    "register_preset", "run_sweep", "run_trial", "trial_id", "vgg_grid", "visible_gpus",
]


def __getattr__(name: str):
    if name == "FAMILIES":  # the registered model families (shallowkern.models.registry)
        from ..models.registry import families

        return families()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
