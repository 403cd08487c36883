"""The results file: append-only JSONL, validated on read, plus an SQLite index and a CSV export.

API for the sweep and for ``report`` / ``fit`` / ``plot`` (use these, never re-parse the file):

* ``load_results(path)`` -> ``Results``: ``.records`` are the trials that are *done* (first
  valid record of each trial id, file order); ``.ok`` are those that may be averaged (done and
  not diverged); ``.diverged`` are done but diverged (shown, counted, never averaged);
  ``.problems`` lists every skipped line (invalid record, corrupted JSON, later duplicate) as
  one line ``<file>:<line>: <why>`` (``Problem.kind`` "invalid" or "duplicate"; "superseded"
  marks no fault: a diverged record replaced by its retried trial). ``strict=True`` raises
  ``RecordError`` on the first invalid line instead.
* ``read_records(path)`` = ``load_results(path).records``, each problem emitted as one
  ``RuntimeWarning`` (what the CLI prints).
* ``completed(records)`` / ``completed_ids(path)``: the one definition of "done" that the
  sweep (which skips done trials) and every report share; ``diverged_ids(path)`` the done
  trials whose records are all diverged.
* ``usable(records, metric)``: the done, non-diverged records whose ``metric`` is a finite rate
  in [0, 1] -- the only ones a mean, a fit or a plot may use.
* ``validate_record(record)`` -> None, or the reason the record is invalid.
* ``append_record(path, record)`` -> True if written, False if the trial was already done in
  the file (checked under an exclusive ``flock`` of the file, so two processes never both
  store one trial).

Diverged trials. JSON has no NaN or infinity, and a results file must stay readable by any
strict JSON parser (``jq``, pandas, browsers). A non-finite float anywhere in a record is
written as ``null`` and listed in the record's ``"nonfinite"`` map, JSON-pointer -> ``"nan"``,
``"inf"`` or ``"-inf"`` (e.g. ``{"/history/3/train_loss": "nan"}``); ``load_results`` puts the
values back, so a record round-trips exactly. A record with a non-finite value in its history
or in a ``*_error`` / ``*loss`` field is marked ``"diverged": true`` (``run_trial`` also sets it
when a training loss went non-finite). A diverged trial is done: the sweep does not retry it
unless asked (``run_sweep(..., retry_diverged=True)``), and reports count it apart.

Validity. A record is a JSON object with a non-empty string ``trial_id`` and a ``test_error``
that is a finite number in [0, 1] (``train_error`` / ``val_error`` likewise, or null: an empty
validation split has no error); a diverged record may have null or non-finite errors.
Anything else -- null, negative, above 1, NaN, a string, an id-only object -- is not done: it
is skipped with its file and line number, never averaged, and the sweep runs that trial again
(the new, valid record is then the one kept).

Why JSONL with one ``os.write`` per record: a record is appended by a single ``write(2)`` of the
complete line on a descriptor opened with ``O_APPEND``, under ``flock``, and then ``fsync``-ed.
Concurrent writers never interleave inside a line, and a crash leaves at worst one truncated
last line -- skipped with a warning naming its line number, and terminated by the next append so
that the new record starts on a line of its own. The JSONL file is the source of truth; the
SQLite index and CSV are derived and can be rebuilt at any time.
"""

from __future__ import annotations

import csv
import fcntl
import json
import math
import os
import sqlite3
import threading
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["INDEX_COLUMNS", "Problem", "RecordError", "Results", "append_record",
           "checkpoint_path", "completed", "completed_ids", "decode_record", "diverged_ids", "encode_record", "export_csv",
           "flat_row", "index",
           "is_diverged", "load_results", "read_csv", "read_records", "usable",
           "validate_record"]

PathLike = str | os.PathLike[str]

_NONFINITE_TEXT = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
_ERROR_FIELDS = ("test_error", "train_error", "val_error")


class RecordError(ValueError):
    """An invalid record: refused by ``append_record``, or met by ``load_results(strict=True)``."""


# ------------------------------------------------------------------ non-finite values in JSON


def _pointer_escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def _pointer_parts(pointer: str) -> list[str]:
    if not pointer.startswith("/"):
        raise ValueError(f"not a JSON pointer: {pointer!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in pointer[1:].split("/")]


def _float_text(v: float) -> str:
    return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")


def _is_divergence(pointer: str) -> bool:
    """Whether a non-finite value at ``pointer`` means the training diverged."""
    parts = pointer[1:].split("/")
    leaf = parts[-1]
    return parts[0] == "history" or leaf.endswith(("_error", "loss"))


def encode_record(record: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``record`` that strict JSON can hold: non-finite floats become null and are
    listed in ``"nonfinite"``; ``"diverged"`` is set to True when one was a metric (see the
    module docstring). A record without non-finite values is returned unchanged (a copy)."""
    found: dict[str, str] = {}

    def walk(v: Any, ptr: str) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            found[ptr] = _float_text(v)
            return None
        if isinstance(v, dict):
            return {k: walk(x, f"{ptr}/{_pointer_escape(str(k))}") for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [walk(x, f"{ptr}/{i}") for i, x in enumerate(v)]
        return v

    out = walk({k: v for k, v in record.items() if k != "nonfinite"}, "")
    found.update(record.get("nonfinite") or {})  # already encoded once: keep what it listed
    if found:
        out["nonfinite"] = dict(sorted(found.items()))
        if any(_is_divergence(p) for p in found):
            out["diverged"] = True
    return out


def decode_record(record: dict[str, Any]) -> dict[str, Any]:
    """Inverse of ``encode_record``: the non-finite values listed in ``"nonfinite"`` put back
    (the map itself is kept, so encoding again is lossless). Raises ValueError on a malformed
    map."""
    nonfinite = record.get("nonfinite")
    if nonfinite is None:
        return record
    if not isinstance(nonfinite, dict):
        raise ValueError(  # noqa: TRY004 - a malformed file, not a programming error
            f"'nonfinite' must be an object, got {type(nonfinite).__name__}")
    out = json.loads(json.dumps(record))  # deep copy of plain JSON data
    for ptr, text in nonfinite.items():
        if text not in _NONFINITE_TEXT:
            raise ValueError(f"'nonfinite' value for {ptr!r} must be 'nan', 'inf' or '-inf', "
                             f"got {text!r}")
        parts = _pointer_parts(ptr)
        parent: Any = out
        try:
            for p in parts[:-1]:
                parent = parent[int(p)] if isinstance(parent, list) else parent[p]
            last = int(parts[-1]) if isinstance(parent, list) else parts[-1]
            if parent[last] is not None:
                raise ValueError(f"'nonfinite' lists {ptr!r}, which holds {parent[last]!r}, "
                                 "not null")
            parent[last] = _NONFINITE_TEXT[text]
        except (KeyError, IndexError, TypeError) as exc:
            raise ValueError(f"'nonfinite' lists {ptr!r}, which the record does not have "
                             f"({type(exc).__name__}: {exc})") from None
    return out


# ------------------------------------------------------------------------------ validation


def is_diverged(record: dict[str, Any]) -> bool:
    """True if the trial is marked diverged (its training loss or a metric went non-finite)."""
    return record.get("diverged") is True


def _rate_problem(name: str, v: Any, diverged: bool) -> str | None:
    if v is None:
        return None if diverged else f"{name} is null"
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return f"{name} is a {type(v).__name__} ({v!r:.40}), not a number"
    if not math.isfinite(v):
        return None if diverged else (f"{name} is {_float_text(v)} but the record is not "
                                      "marked diverged")
    if not 0 <= v <= 1:
        return f"{name} is {v!r}, outside [0, 1]"
    return None


def validate_record(record: Any) -> str | None:
    """None if ``record`` is a valid result record, else why not (one short phrase).

    The rules are in the module docstring; a record must be decoded (``decode_record``) first.
    """
    if not isinstance(record, dict):
        return f"not a record (a JSON {type(record).__name__}, expected an object)"
    tid = record.get("trial_id")
    if not isinstance(tid, str) or not tid:
        if tid is None:
            return "no trial_id"
        return f"trial_id must be a non-empty string, got {tid!r:.40}"
    div = record.get("diverged", False)
    if not isinstance(div, bool):
        return f"trial {tid}: diverged must be true or false, got {div!r:.40}"
    if "test_error" not in record:
        return f"trial {tid}: no test_error (an id without a result)"
    for name in _ERROR_FIELDS:
        # train/val errors may be null (no validation split); test_error is the result
        if name in record and (name == "test_error" or record[name] is not None):
            why = _rate_problem(name, record[name], div)
            if why:
                return f"trial {tid}: {why}"
    for name in ("config", "model"):
        if name in record and not isinstance(record[name], dict):
            return f"trial {tid}: {name} must be an object, got {type(record[name]).__name__}"
    return None


def completed(records: Iterable[dict[str, Any]]) -> set[str]:
    """The ids of the trials that are done: every valid record, diverged or not.

    The one definition shared by the sweep (which skips these) and report / fit / plot.
    ``records`` must come from ``load_results`` / ``read_records`` (already validated).
    """
    return {r["trial_id"] for r in records}


def usable(records: Iterable[dict[str, Any]], metric: str = "test_error") -> list[dict[str, Any]]:
    """The records that may be averaged, fitted or plotted on ``metric``: not diverged, with a
    finite ``metric`` in [0, 1]. The others are done but must be shown apart (e.g. counted as
    "diverged"), never averaged."""
    out = []
    for r in records:
        v = r.get(metric)
        if (not is_diverged(r) and isinstance(v, (int, float)) and not isinstance(v, bool)
                and math.isfinite(v) and 0 <= v <= 1):
            out.append(r)
    return out


# ----------------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class Problem:
    """One skipped line of a results file."""

    path: Path
    line: int
    message: str
    trial_id: str | None = None
    # "invalid" (not a valid record), "duplicate" (trial already done: ignored) or
    # "superseded" (a diverged record replaced by the trial's later, retried record)
    kind: str = "invalid"

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


@dataclass
class Results:
    """A validated view of a results file (see the module docstring)."""

    path: Path
    records: list[dict[str, Any]] = field(default_factory=list)  # done: first valid per trial
    problems: list[Problem] = field(default_factory=list)
    duplicates: list[dict[str, Any]] = field(default_factory=list)  # valid, but a trial again

    @property
    def ok(self) -> list[dict[str, Any]]:
        return [r for r in self.records if not is_diverged(r)]

    @property
    def diverged(self) -> list[dict[str, Any]]:
        return [r for r in self.records if is_diverged(r)]

    @property
    def done_ids(self) -> set[str]:
        return completed(self.records)

    def counts(self) -> dict[str, int]:
        """``{"done", "ok", "diverged", "invalid", "duplicate"}`` line counts, for reports."""
        return {"done": len(self.records), "ok": len(self.ok), "diverged": len(self.diverged),
                "invalid": sum(p.kind == "invalid" for p in self.problems),
                "duplicate": sum(p.kind == "duplicate" for p in self.problems)}


def _parse_line(raw: bytes) -> tuple[dict[str, Any] | None, str | None]:
    """(decoded valid record, None) or (None, why the line is skipped)."""
    try:
        rec = json.loads(raw)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return None, f"corrupted or truncated line ({exc})"
    if isinstance(rec, dict) and "nonfinite" in rec:
        try:
            rec = decode_record(rec)
        except ValueError as exc:
            return None, f"invalid record: {exc}"
    why = validate_record(rec)
    return (None, f"invalid record: {why}") if why else (rec, None)


def load_results(path: PathLike, *, strict: bool = False) -> Results:
    """Read and validate a JSONL results file (see the module docstring).

    Invalid lines are skipped and listed in ``Results.problems`` (or, with ``strict``, the
    first raises RecordError naming the file and line). Of several valid records of one trial
    the first is kept and the later ones are listed as duplicates -- except that a diverged
    record is superseded by a later non-diverged one (a trial retried with
    ``retry_diverged``). A missing file is a
    FileNotFoundError; a directory an IsADirectoryError.
    """
    path = Path(path)
    res = Results(path=path)
    first_line: dict[str, int] = {}
    slot: dict[str, int] = {}  # trial id -> index in res.records
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            rec, why = _parse_line(raw)
            if rec is None:
                if strict:
                    raise RecordError(f"{path}:{lineno}: {why}")
                res.problems.append(Problem(path, lineno, why))
                continue
            tid = rec["trial_id"]
            if tid not in slot:
                first_line[tid], slot[tid] = lineno, len(res.records)
                res.records.append(rec)
                continue
            kept = res.records[slot[tid]]
            if is_diverged(kept) and not is_diverged(rec):  # a retried diverged trial
                res.duplicates.append(kept)
                res.records[slot[tid]] = rec
                res.problems.append(Problem(
                    path, first_line[tid], f"diverged record of trial {tid} superseded by the "
                    f"retried trial at line {lineno}", tid, "superseded"))
                first_line[tid] = lineno
                continue
            res.duplicates.append(rec)
            res.problems.append(Problem(
                path, lineno, f"duplicate record of trial {tid} (first at line "
                f"{first_line[tid]}), ignored", tid, "duplicate"))
    return res


def read_records(path: PathLike, *, dedupe: bool = True,
                 strict: bool = False) -> list[dict[str, Any]]:
    """The done records of a results file (``load_results(path).records``), in file order.

    Every skipped line (invalid record, corrupted JSON, later duplicate of a trial) is one
    ``RuntimeWarning`` naming the file and line number; ``strict=True`` raises RecordError at
    the first invalid line instead. ``dedupe=False`` also returns the
    valid later duplicates, in file order (for audits). A missing file is a FileNotFoundError.
    """
    res = load_results(path, strict=strict)
    for p in res.problems:
        if p.kind != "superseded":  # a retried diverged trial is no fault of the file
            warnings.warn(str(p), RuntimeWarning, stacklevel=2)
    if dedupe:
        return res.records
    # file order of all valid records: re-read is simplest and only used by audits and tests
    out = []
    with open(path, "rb") as f:
        for raw in f:
            if raw.strip():
                rec, _ = _parse_line(raw)
                if rec is not None:
                    out.append(rec)
    return out


class _DoneCache:
    """Per process and results file: the done trial ids, read incrementally (only the bytes
    appended since the last look), so checking before every append stays O(new lines)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        # path -> (dev, ino, offset, {trial id: True if every valid record of it is diverged})
        self.state: dict[str, tuple[int, int, int, dict[str, bool]]] = {}

    def ids(self, path: Path, fd: int | None = None) -> dict[str, bool]:
        key = os.path.abspath(path)
        with self.lock:
            try:
                st = os.fstat(fd) if fd is not None else os.stat(path)
            except FileNotFoundError:
                self.state.pop(key, None)
                return {}
            dev, ino, offset, ids = self.state.get(key, (st.st_dev, st.st_ino, 0, {}))
            if (dev, ino) != (st.st_dev, st.st_ino) or st.st_size < offset:
                offset, ids = 0, {}  # replaced or truncated: start over
            ids = dict(ids)
            if st.st_size > offset:
                with open(path, "rb") as f:
                    f.seek(offset)
                    chunk = f.read(st.st_size - offset)
                end = chunk.rfind(b"\n") + 1  # complete lines only; a torn tail waits
                for raw in chunk[:end].split(b"\n"):
                    if raw.strip():
                        rec, _ = _parse_line(raw)
                        if rec is not None:
                            tid = rec["trial_id"]
                            ids[tid] = ids.get(tid, True) and is_diverged(rec)
                offset += end
            self.state[key] = (st.st_dev, st.st_ino, offset, ids)
            return dict(ids)


_DONE = _DoneCache()


def completed_ids(path: PathLike) -> set[str]:
    """Ids of the trials done in ``path`` (empty if the file does not exist yet); the same set
    as ``completed(read_records(path))``, read incrementally and without warnings."""
    return set(_DONE.ids(Path(path)))


def diverged_ids(path: PathLike) -> set[str]:
    """Ids of the done trials of ``path`` whose only valid records are diverged (the ones
    ``run_sweep(..., retry_diverged=True)`` runs again)."""
    return {tid for tid, div in _DONE.ids(Path(path)).items() if div}


def append_record(path: PathLike, record: dict[str, Any], *, validate: bool = True,
                  supersede_diverged: bool = False) -> bool:
    """Append ``record`` as one JSON line, atomically and durably, unless its trial is done.

    Non-finite values are encoded (``encode_record``). Under an exclusive ``flock`` of the
    file, the trial's id is looked up among the done records: if present, nothing is written
    and False is returned; otherwise the line is written with one ``write(2)`` and ``fsync``-ed
    and True is returned. With ``supersede_diverged``, a trial whose stored records are all
    diverged counts as not done (a retried diverged trial; the reader then keeps the new
    record; a retried trial that diverged again is not stored twice). An invalid record
    (``validate_record``) raises RecordError and is not written
    (``validate=False`` writes it anyway, without the done check: for tests of the readers).
    """
    rec = encode_record(record)
    if validate:
        why = validate_record(decode_record(rec))
        if why:
            raise RecordError(f"refusing to store an invalid record in {path}: {why}")
    text = json.dumps(rec, sort_keys=True, separators=(",", ":"), allow_nan=False)
    line = (text + "\n").encode()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # released by close, or by the kernel if we die
        if validate:
            done = _DONE.ids(path, fd)
            tid = rec["trial_id"]
            if tid in done and not (supersede_diverged and done[tid] and not is_diverged(rec)):
                return False  # done, or retried and diverged again: nothing new to store
        size = os.fstat(fd).st_size
        # A crash mid-write can leave a last line without its newline; gluing this record
        # onto it would corrupt both. Start a fresh line instead (a stray empty line is
        # harmless to the reader).
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = b"\n" + line
        written = os.write(fd, line)
        if written != len(line):  # only on a full disk or a signal; never silently truncate
            raise OSError(f"{path}: short write ({written} of {len(line)} bytes)")
        os.fsync(fd)
        # The trial's epoch checkpoint (run_trial's checkpoint_dir) is obsolete once its
        # record is durable.
        checkpoint_path(path, tid if validate else str(rec.get("trial_id"))).unlink(
            missing_ok=True)
        return True
    finally:
        os.close(fd)


def checkpoint_path(results: PathLike, trial_id: str) -> Path:
    """Where a sweep on ``results`` keeps the epoch checkpoint of trial ``trial_id`` (see
    ``shallowkern.train.train_and_evaluate``): ``<results>.ckpt/<trial_id>.pt``. Deleted by
    ``append_record`` once the trial's record is stored."""
    return Path(str(results) + ".ckpt") / f"{trial_id}.pt"


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
    ("finished_at", "TEXT"), ("diverged", "INTEGER"),
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
    row["diverged"] = int(is_diverged(rec))
    for name, kind in INDEX_COLUMNS:  # SQLite and CSV hold no NaN: a diverged value is empty
        if kind == "REAL" and isinstance(row[name], float) and not math.isfinite(row[name]):
            row[name] = None
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
                [[row[n] for n in _COLUMN_NAMES]
                 + [json.dumps(encode_record(rec), sort_keys=True, allow_nan=False)]
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
