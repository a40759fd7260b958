"""``crysray report`` (``jobs/report.py``): a sampling run as report.md, report.json and PNG
plots, stored in the run (a run on object storage is read from there and the plots uploaded).

Plots: energy above hull histogram, element frequency, space-group distribution (spglib via
pymatgen, on struct-valid crystals), funnel counts per stage.
"""

from __future__ import annotations

import argparse

from crysray.command.common import check_location


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, help="run directory or URL (e.g. s3://bucket/prefix)")
    p.add_argument("--spacegroup-limit", type=int, default=2000,
                   help="crystals analysed by spglib")  # fmt: skip


def run(args) -> int:
    from crysray.report import build_report, markdown

    check_location(args.run, "--run")
    print(markdown(build_report(args.run, args.spacegroup_limit)))
    return 0
