"""Results table and plots across runs: python tools/report.py LOGDIR [LOGDIR ...] [--out DIR].

Finds every run directory (a folder holding metrics.json) under the LOGDIRs and writes, into
--out (default ./reports): results.md and results.csv (one row per dataset / teacher / student /
method / logit standardization / epochs, mean ± sample std over seeds; "—" where a setting has a
single run), learning curves (curves_<dataset>_<student>.png, or with --curves dataset one
curves_<dataset>.png with every run) and a method comparison (compare_<dataset>.png).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kdlab.cli import run_cli  # noqa: E402


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser("tools/report.py", description="results table (mean ± std over seeds) and plots")
    p.add_argument("logdirs", nargs="+", metavar="LOGDIR", help="folders searched recursively for run directories")
    p.add_argument("--out", default="reports", help="output folder (default: ./reports)")
    p.add_argument("--title", default="Results", help="title of results.md")
    p.add_argument("--include-incomplete", action="store_true",
                   help="also count runs stopped before SOLVER.EPOCHS (still running or interrupted)")
    p.add_argument("--no-plots", action="store_true", help="write the table only")
    p.add_argument("--curves", choices=("student", "dataset"), default="student",
                   help="learning curves per dataset and student (default), or per dataset with every run")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    from kdlab.reports.table import find_runs, markdown_report, markdown_table, summarize, write_csv

    logging.basicConfig(format="%(levelname)s %(message)s", level=logging.INFO)  # no torch import just to log
    rows = summarize(find_runs(args.logdirs, include_incomplete=args.include_incomplete))
    os.makedirs(args.out, exist_ok=True)
    figures = []
    if not args.no_plots:
        from kdlab.reports.plots import report_figures

        figures = report_figures(rows, args.out, curves=args.curves)
    with open(os.path.join(args.out, "results.md"), "w", encoding="utf-8") as f:
        f.write(markdown_report(rows, figures, title=args.title))
    write_csv(rows, os.path.join(args.out, "results.csv"))
    print(markdown_table(rows))
    print(f"\n{sum(r['n'] for r in rows)} runs, {len(rows)} rows -> {os.path.join(args.out, 'results.md')}, "
          f"results.csv, {len(figures)} figures")
    return 0


if __name__ == "__main__":
    run_cli(main, prog="report.py")
