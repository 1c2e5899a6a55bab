"""Reports across runs (results table, learning curves, method comparison) and logit views.

Plotting uses matplotlib's Agg canvas; import the submodules (table needs no matplotlib).
"""

from kdlab.reports.table import NoRunsFoundError, Run, find_runs, markdown_report, summarize, write_csv

__all__ = ["NoRunsFoundError", "Run", "find_runs", "markdown_report", "summarize", "write_csv"]
