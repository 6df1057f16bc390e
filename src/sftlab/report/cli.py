"""``sftlab report RUN_DIR [RUN_DIR ...] [--out FILE]``: (re)build report.html for one run or compare several."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "runs", nargs="+", metavar="RUN_DIR", help="run directories (or scorecard.json files, e.g. one per merge alpha)"
    )
    parser.add_argument(
        "--out",
        metavar="FILE",
        help="default: RUN_DIR/report.html for one run, report.html in the runs' common parent folder for several",
    )


def run(args: argparse.Namespace) -> int:
    from sftlab.console import say
    from sftlab.report.html import write_report

    out = write_report(args.runs, args.out)
    say(f"report of {len(args.runs)} run{'s' if len(args.runs) > 1 else ''} -> {out}")
    return 0
