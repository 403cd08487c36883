"""The results file: append-only JSONL, plus an SQLite index and a CSV export built from it.

Why JSONL with one ``os.write`` per record: a record is appended by a single ``write(2)`` of the
complete line on a descriptor opened with ``O_APPEND`` and then ``fsync``-ed. On a local file
system the kernel positions and writes an ``O_APPEND`` write as one step, so concurrent workers
never interleave inside a line, and a crash leaves at worst one truncated last line — which
``read_records`` skips with a warning naming its line number, and which the next append
terminates first so that the new record starts on a line of its own. The JSONL file is the
source of truth; the SQLite index and CSV are derived and can be rebuilt at any time.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sqlite3
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["INDEX_COLUMNS", "append_record", "completed_ids", "export_csv", "flat_row", "index",
           "read_csv", "read_records"]

PathLike = str | os.PathLike[str]


def append_record(path: PathLike, record: dict[str, Any]) -> None:
    """Append ``record`` as one JSON line, atomically (one write of the whole line) and durably."""
    text = json.dumps(record, sort_keys=True, separators=(",", ":"), allow_nan=False)
    line = (text + "\n").encode()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size:
            # A crash mid-write can leave a last line without its newline; gluing this record
            # onto it would corrupt both. Start a fresh line instead (a stray empty line is
            # harmless to the reader).
            with open(path, "rb") as f:
                f.seek(size - 1)
                if f.read(1) != b"\n":
                    line = b"\n" + line
        written = os.write(fd, line)
        if written != len(line):  # only on a full disk or a signal; never silently truncate
            raise OSError(f"{path}: short write ({written} of {len(line)} bytes)")
        os.fsync(fd)
    finally:
        os.close(fd)


def read_records(path: PathLike, *, dedupe: bool = True) -> list[dict[str, Any]]:
    """All valid records of a JSONL results file, in file order.

    A line that is not a JSON object with a ``trial_id`` (truncated by a crash, hand-edited) is
    skipped with a ``RuntimeWarning`` naming the file and line number. With ``dedupe`` a trial id
    seen twice (two sweeps writing one file at once) keeps its first record. A missing file is a
    FileNotFoundError.
    """
    path = Path(path)
    records: list[dict[str, Any]] = []
    seen: set[str] = set()
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw)
                if not isinstance(rec, dict) or not isinstance(rec.get("trial_id"), str):
                    raise ValueError("not a record (no trial_id)")
            except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
                warnings.warn(f"{path}:{lineno}: skipping corrupted or truncated line ({exc})",
                              RuntimeWarning, stacklevel=2)
                continue
            if dedupe and rec["trial_id"] in seen:
                continue
            seen.add(rec["trial_id"])
            records.append(rec)
    return records


def completed_ids(path: PathLike) -> set[str]:
    """Trial ids already in ``path`` (empty if the file does not exist yet)."""
    if not Path(path).exists():
        return set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # read_records' warning is for reports
        return {r["trial_id"] for r in read_records(path)}


# Columns of the index and CSV: (name, SQLite type). Nested parts of a record (history,
# recipe, machine) stay in the JSON column of the index and are left out of the CSV.
INDEX_COLUMNS: tuple[tuple[str, str], ...] = (
    ("trial_id", "TEXT PRIMARY KEY"), ("family", "TEXT"), ("dataset", "TEXT"),
    ("recipe", "TEXT"), ("impl", "TEXT"), ("seed", "INTEGER"), ("d1", "INTEGER"), ("d2", "INTEGER"),
    ("k", "REAL"), ("width", "REAL"), ("train_subset", "INTEGER"), ("epochs", "INTEGER"),
    ("best_epoch", "INTEGER"), ("train_error", "REAL"), ("val_error", "REAL"),
    ("test_error", "REAL"), ("macs", "INTEGER"), ("flops", "INTEGER"), ("params", "INTEGER"),
    ("bytes", "INTEGER"), ("latency", "REAL"), ("latency_batch", "INTEGER"),
    ("wall_time", "REAL"), ("images_per_s", "REAL"), ("hostname", "TEXT"),
    ("device_name", "TEXT"), ("torch", "TEXT"), ("git_commit", "TEXT"),
    ("finished_at", "TEXT"),
)
_COLUMN_NAMES = tuple(name for name, _ in INDEX_COLUMNS)


def flat_row(rec: dict[str, Any]) -> dict[str, Any]:
    """The flat columns (INDEX_COLUMNS) of one record; missing values are None."""
    cfg, model, machine = rec.get("config", {}), rec.get("model", {}), rec.get("machine", {})
    row = {
        "trial_id": rec["trial_id"], "family": cfg.get("family", model.get("family")),
        "dataset": cfg.get("dataset"), "recipe": cfg.get("recipe"),
        "impl": cfg.get("impl") or "shallowkern",
        "seed": rec.get("seed", cfg.get("seed")), "d1": model.get("d1", cfg.get("d1")),
        "d2": model.get("d2", cfg.get("d2")), "k": model.get("k", cfg.get("k")),
        "width": model.get("width", cfg.get("width")),
        "train_subset": (rec.get("recipe") or {}).get("train_subset", cfg.get("train_subset")),
        "hostname": machine.get("hostname"), "device_name": machine.get("device_name"),
        "torch": machine.get("torch"),
    }
    for name in _COLUMN_NAMES:
        if name not in row:
            row[name] = rec.get(name)
    return row


def _results_path(results: PathLike) -> Path:
    path = Path(results)
    if not path.is_file():
        raise FileNotFoundError(f"results file {path} does not exist")
    return path


def index(results: PathLike, db: PathLike | None = None) -> Path:
    """(Re)build an SQLite index of ``results`` (default ``<results>.sqlite``); returns its path.

    Table ``trials`` holds the flat columns plus ``record`` (the full JSON). It is rebuilt from
    scratch each time, in a transaction, so it always mirrors the JSONL file.
    """
    results = _results_path(results)
    db = Path(db) if db is not None else results.with_suffix(".sqlite")
    records = read_records(results)
    rows = [flat_row(r) for r in records]
    con = sqlite3.connect(db)
    try:
        with con:
            con.execute("DROP TABLE IF EXISTS trials")
            cols = ", ".join(f"{n} {t}" for n, t in INDEX_COLUMNS)
            con.execute(f"CREATE TABLE trials ({cols}, record TEXT NOT NULL)")
            marks = ", ".join("?" * (len(_COLUMN_NAMES) + 1))
            con.executemany(
                f"INSERT INTO trials ({', '.join(_COLUMN_NAMES)}, record) VALUES ({marks})",
                [[row[n] for n in _COLUMN_NAMES] + [json.dumps(rec, sort_keys=True)]
                 for row, rec in zip(rows, records)],
            )
            con.execute("CREATE INDEX IF NOT EXISTS trials_family_d1 ON trials (family, d1, k)")
    finally:
        con.close()
    return db


def export_csv(results: PathLike, csv_path: PathLike | None = None) -> Path:
    """Write the flat columns of every record to CSV (default ``<results>.csv``); returns its path.

    Empty cells are None; floats are written with ``repr`` precision so a round trip is exact.
    """
    results = _results_path(results)
    out = Path(csv_path) if csv_path is not None else results.with_suffix(".csv")
    rows: Iterable[dict[str, Any]] = (flat_row(r) for r in read_records(results))
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=_COLUMN_NAMES)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return out


def read_csv(csv_path: PathLike) -> list[dict[str, Any]]:
    """Read an ``export_csv`` file back with the column types of INDEX_COLUMNS."""
    kinds = dict(INDEX_COLUMNS)
    out = []
    with open(csv_path, newline="") as f:
        for row in csv.DictReader(f):
            typed: dict[str, Any] = {}
            for k, v in row.items():
                if v == "":
                    typed[k] = None
                elif kinds[k].startswith("INTEGER"):
                    typed[k] = int(v)
                elif kinds[k].startswith("REAL"):
                    typed[k] = float(v)
                    if math.isnan(typed[k]):
                        typed[k] = None
                else:
                    typed[k] = v
            out.append(typed)
    return out
