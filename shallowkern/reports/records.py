"""Reading a results file for reports, fits and plots, and querying its records.

Which trials count is decided in one place, ``shallowkern.sweep.store``: the records it calls
*done* are the ones the sweep skips, so ``report``, ``fit`` and ``plot`` never disagree with
``sweep`` about them. Of those, only the *usable* ones (not diverged, a finite error rate) are
ever averaged, fitted or plotted; diverged trials are counted and listed apart.
"""

from __future__ import annotations

import math
import os
import stat
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..models.registry import Family, get_family

__all__ = ["LoadedRecords", "ReportError", "family_of", "group_value", "impl_of",
           "load_records", "select", "series_label", "shape_label", "usable", "value", "x_of"]

METRICS = ("test_error", "val_error", "train_error")


class ReportError(ValueError):
    """A user-facing problem with the records or the options (one line, no traceback)."""


@dataclass
class LoadedRecords:
    """``records``: the done trials (the sweep's definition); ``diverged``: those among them
    that diverged; ``problems``: one line per skipped line of the file (file:line: why)."""

    path: Path
    records: list[dict[str, Any]]
    diverged: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _check_readable(path: Path) -> None:
    if not path.exists():
        raise ReportError(f"results file {path} does not exist (run `shallowkern sweep` first)")
    if path.is_dir():
        raise ReportError(f"results file {path} is a directory; give the .jsonl file")
    if not stat.S_ISREG(path.stat().st_mode):
        # /dev/null reads empty, /dev/full reads zeros forever: neither can hold records.
        raise ReportError(f"results file {path} is not a regular file, so it holds no records")
    if not os.access(path, os.R_OK):
        raise ReportError(f"results file {path} is not readable")


def load_records(path: str | os.PathLike[str]) -> LoadedRecords:
    """The done records of a JSONL results file (``store.load_results``), after checking that
    the path is a readable regular file; ReportError when it is not or holds no records."""
    p = Path(path)
    _check_readable(p)
    try:
        from ..sweep.store import load_results
    except ImportError:  # an older store: its reader, its warnings
        load_results = None
    if load_results is not None:
        res = load_results(p)
        records, diverged = list(res.records), list(res.diverged)
        problems = [str(x) for x in res.problems]
    else:
        from ..sweep.store import read_records

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RuntimeWarning)
            records = read_records(p)
        problems = [str(w.message) for w in caught]
        diverged = [r for r in records if r.get("diverged") is True]
    if not records:
        why = f" ({len(problems)} unusable line(s), first: {problems[0]})" if problems else ""
        raise ReportError(f"results file {p} holds no records{why}")
    return LoadedRecords(p, records, diverged, problems)


def usable(records: Sequence[dict[str, Any]], metric: str = "test_error"
           ) -> list[dict[str, Any]]:
    """The records a mean, fit or plot may use: not diverged, ``metric`` a finite rate in
    [0, 1] (``store.usable`` where the store has it)."""
    try:
        from ..sweep.store import usable as store_usable
    except ImportError:
        store_usable = None
    if store_usable is not None:
        return list(store_usable(records, metric))
    out = []
    for r in records:
        e = r.get(metric)
        if r.get("diverged") is True or isinstance(e, bool) or not isinstance(e, (int, float)):
            continue
        if math.isfinite(e) and 0 <= e <= 1:
            out.append(r)
    return out


# ----------------------------------------------------------------------------- fields


def value(rec: dict[str, Any], key: str) -> Any:
    """A field of a record, looking in its model description and config as well."""
    for where in (rec, rec.get("model") or {}, rec.get("config") or {}):
        if isinstance(where, dict) and where.get(key) is not None:
            return where[key]
    return None


def impl_of(rec: dict[str, Any]) -> str:
    """How the trial ran: "shallowkern" (also every record from before impl existed) or
    "plain"."""
    return (rec.get("config") or {}).get("impl") or "shallowkern"


def family_of(rec: dict[str, Any]) -> Family | None:
    """The registered family of a record, or None for a family this install does not know."""
    name = value(rec, "family")
    try:
        return get_family(name)
    except ValueError:
        return None


def group_value(rec: dict[str, Any]) -> Any:
    """The value of the family's fit group (LeNet's k) the trial *asked for* (its config), not
    the realised one (round(k*d1)/d1)."""
    fam = family_of(rec)
    if fam is None or fam.fit_group is None:
        return None
    v = (rec.get("config") or {}).get(fam.fit_group)
    return round(float(v), 6) if isinstance(v, (int, float)) and not isinstance(v, bool) else v


def shape_label(rec: dict[str, Any]) -> str:
    """The model part of a row: ``d1=16 d2=45``, ``width=0.5 bn`` (+ `` plain``)."""
    fam = family_of(rec)
    merged = {**(rec.get("config") or {}), **(rec.get("model") or {})}
    text = fam.describe(merged) if fam else "?"
    return text + (" plain" if impl_of(rec) == "plain" else "")


def series_label(rec: dict[str, Any], split: bool) -> str:
    """A record's curve in a plot: the family, its fit group when ``split`` (``lenet k=2.8``),
    its other series flags (``vgg16 bn``), `` (plain)`` for plain trials."""
    fam = family_of(rec)
    name = str(value(rec, "family") or "?")
    parts = [name]
    if fam is not None:
        for p in fam.series:
            v = group_value(rec) if p == fam.fit_group else value(rec, p)
            if p == fam.fit_group and not split:
                continue
            if v is True:  # a flag's short word where the family has one (vgg16's "bn")
                parts.append(min((w for w, (t, fv) in fam.flags.items() if t == p and fv is True),
                                 key=len, default=p))
            elif v not in (None, False):
                parts.append(f"{p}={v:g}" if isinstance(v, float) else f"{p}={v}")
    return " ".join(parts) + (" (plain)" if impl_of(rec) == "plain" else "")


def x_of(rec: dict[str, Any], x: str = "width") -> float:
    """The x of a fit: ``"width"`` is the family's width field (LeNet d1, VGG first-layer
    filters); any other name is read as it is (``"flops"``)."""
    if x == "width":
        fam = family_of(rec)
        v = value(rec, fam.x_key) if fam else None
    else:
        v = value(rec, x)
    if v is None or isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ReportError(f"record {rec.get('trial_id')} has no numeric {x!r}")
    return float(v)


def select(records: Sequence[dict[str, Any]], family: str, *, dataset: str | None = None,
           group: Any = None, impl: str = "shallowkern") -> tuple[list[dict[str, Any]], str]:
    """Records of one family, one dataset, one impl and (for a family with a fit group, e.g.
    LeNet's k) one group value, with a description such as ``lenet on cifar10, k=2.8``."""
    fam = get_family(family)
    recs = [r for r in records if value(r, "family") == fam.name and impl_of(r) == impl]
    if not recs:
        fams = sorted({str(value(r, "family")) for r in records})
        raise ReportError(f"no {fam.name!r} records with impl {impl!r} (the file has {fams}); "
                          "use --family / --impl")
    datasets = sorted({str(value(r, "dataset")) for r in recs})
    if dataset:
        recs = [r for r in recs if value(r, "dataset") == dataset]
    elif len(datasets) > 1:
        raise ReportError(f"records from several datasets {datasets}: choose one with --dataset")
    desc = f"{fam.name} on {dataset or datasets[0]}"
    if fam.fit_group is not None:
        values = sorted({v for v in map(group_value, recs) if v is not None})
        if group is not None:
            g = group
        elif len(values) == 1:
            g = values[0]
        elif fam.fit_group_default in values:
            g = fam.fit_group_default
        else:
            flag = "--k" if fam.fit_group == "k" else "--group"
            raise ReportError(f"records at several {fam.fit_group} {values}: choose one with "
                              f"{flag}")
        recs = [r for r in recs if group_value(r) is not None
                and abs(float(group_value(r)) - float(g)) < 1e-6]
        desc += f", {fam.fit_group}={g:g}"
    if not recs:
        raise ReportError(f"no records left after filtering ({desc})")
    return recs, desc


def errors(recs: Sequence[dict[str, Any]], metric: str) -> list[float]:
    """The ``metric`` of each record, which a power law needs strictly inside (0, 1)."""
    out = []
    for r in recs:
        e = r.get(metric)
        if e is None or isinstance(e, bool) or not isinstance(e, (int, float)) \
                or not math.isfinite(e):
            raise ReportError(f"record {r.get('trial_id')} has no finite {metric!r}")
        if e <= 0 or e >= 1:
            raise ReportError(f"record {r.get('trial_id')} has {metric}={e!r}; a power law "
                              "needs error rates strictly between 0 and 1")
        out.append(float(e))
    return out


def n_test(recs: Sequence[dict[str, Any]]) -> int:
    sizes = [int(r["n_test"]) for r in recs
             if isinstance(r.get("n_test"), int) and r["n_test"] > 0]
    return min(sizes) if sizes else 10000
