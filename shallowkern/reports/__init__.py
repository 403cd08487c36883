"""Reports of sweep results: reading and querying records (``records``), summary and speedup
tables with the one table renderer shared by the CLI and the profiler (``tables``), and
power-law fits of the records (``fit``). Plots are in ``shallowkern.plot``.

Every function here works on the records ``shallowkern.sweep.store`` calls *done* (the same
ones the sweep skips), and averages, fits or plots only the *usable* ones (not diverged, a
finite error rate).
"""

from .fit import compute_fit, describe_fit, write_json
from .records import LoadedRecords, ReportError, load_records, select, usable
from .tables import (format_diverged, format_speedups, format_table, render_table,
                     speedup_rows, summary_rows)

__all__ = ["LoadedRecords", "ReportError", "compute_fit", "describe_fit", "format_diverged",
           "format_speedups", "format_table", "load_records", "render_table", "select",
           "speedup_rows", "summary_rows", "usable", "write_json"]
