"""ssr-report RUN_DIR_OR_SWEEP_DIR... [--out DIR] [--grid DIR...]: paper-shaped table + drift plots
from run files (``--grid``: choose each method's learning rate on these runs instead)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ssr.report.write import write_report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="ssr-report", description=__doc__)
    parser.add_argument("runs", nargs="+", type=Path, help="run directories or a multirun sweep directory")
    parser.add_argument("--out", type=Path, default=Path("report"), help="output directory")
    parser.add_argument(
        "--grid",
        nargs="+",
        type=Path,
        default=None,
        help="a one-seed learning-rate grid: the lr is chosen there; the runs must be at it",
    )
    args = parser.parse_args(argv)
    # the report's warnings (a run left out of a measure, no matplotlib) with their level and source
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    print(write_report(args.runs, args.out, grid=args.grid))


if __name__ == "__main__":
    main()
